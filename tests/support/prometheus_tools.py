"""Prometheus' own binaries for the tests: ``promtool`` (rule checks and rule unit tests) and
``prometheus`` (a real server scraping a short run).

Both come from Debian's ``prometheus`` package. When they are missing and the package manager
is usable (root, apt-get present), the session installs it once; otherwise the tests that need
them are skipped with a message saying so, never failed for a missing tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

__all__ = ["prometheus_bin", "promtool_bin"]

_INSTALL_HINT = "apt-get install prometheus (Debian) or put promtool/prometheus on PATH"


def _apt_install() -> str | None:
    """Install Debian's prometheus package; returns None on success, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = [
        "apt-get",
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "prometheus",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # package lists missing or stale: update once, retry
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
            capture_output=True,
            env=env,
            timeout=600,
        )
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        return f"apt-get install prometheus failed: {result.stderr.strip()[-300:]}"
    return None


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    why = _apt_install()
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} not found and could not be installed ({why}); {_INSTALL_HINT}")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")
