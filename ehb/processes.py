"""Child processes of the embedded stack: loopback ports, start-up waits, stops.

Every server the project starts (Tansu, SeaweedFS, PostgreSQL) runs as a child that dies with
its parent (``PR_SET_PDEATHSIG``), so a crashed ``ehb demo`` leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ehb.exceptions import ServiceUnavailable

__all__ = ["child_setup", "free_port", "stop_process", "wait_for_port"]

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_setup(uid: int | None = None, gid: int | None = None) -> Callable[[], None]:
    """preexec_fn: drop privileges (if asked), then die with the parent.

    The death signal must be set after setuid: changing credentials clears it.
    """

    def setup() -> None:
        os.setsid()
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                f"{what} exited with code {proc.returncode} while starting; see {log}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} did not listen on port {port} within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
