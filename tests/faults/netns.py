"""A network namespace joined to the host by a veth pair, for the network-partition scenario.

A process started with :attr:`Veth.prefix` (``ip netns exec NS ...``) reaches the host only
through the pair: the host side has ``10.231.X.1/30``, the namespace side ``10.231.X.2/30``.
:meth:`Veth.cut` takes the host side down (the namespace loses its only route: a network
partition, every packet dropped, no connection reset), :meth:`Veth.heal` brings it back.
Needs root and ``ip`` (iproute2); ``tc netem`` is not needed. :func:`veth_namespace` deletes
the namespace (and with it the pair) on exit, and namespaces left by a process that died.
:class:`Forward` relays a service of the host (PostgreSQL) to the host side's address, so that
the namespace reaches it through the pair like the broker (and loses it in the partition).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Forward", "NetnsUnavailable", "Veth", "veth_namespace"]

#: where the pairs' /30 subnets come from
_POOL = ipaddress.IPv4Network("10.231.0.0/16")
_PREFIX = "ehbpart"
_counter = itertools.count()


class NetnsUnavailable(RuntimeError):
    """No namespace can be made here (not root, no ``ip``, no permission)."""


def _ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)
    except subprocess.CalledProcessError as exc:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {exc.stderr.strip()}") from exc
    return done.stdout


@dataclass(frozen=True)
class Veth:
    ns: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str

    @property
    def prefix(self) -> list[str]:
        """The argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def delete(self) -> None:
        """The namespace and the pair (deleting one end deletes both)."""
        with contextlib.suppress(NetnsUnavailable):
            _ip("link", "delete", self.host_if)
        with contextlib.suppress(NetnsUnavailable):
            _ip("netns", "delete", self.ns)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale() -> None:
    """Namespaces (and their pairs) of test processes that are gone."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == _PREFIX and parts[1].isdigit():
            if not _alive(int(parts[1])):
                with contextlib.suppress(NetnsUnavailable):
                    _ip("netns", "delete", name)


def _free_subnet(start: int) -> ipaddress.IPv4Network:
    used: list[ipaddress.IPv4Network] = []
    for line in _ip("-o", "-4", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    subnets = list(_POOL.subnets(new_prefix=30))
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if candidate.network_address.packed[2:] == b"\0\0":
            continue  # keep clear of 10.231.0.0
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NetnsUnavailable(f"no free /30 in {_POOL}")


@contextlib.contextmanager
def veth_namespace() -> Iterator[Veth]:
    """A fresh namespace with its veth pair, its loopback up; deleted on exit.
    :class:`NetnsUnavailable` when it cannot be made."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2 (`ip`) is not installed")
    _remove_stale()
    pid, n = os.getpid(), next(_counter)
    subnet = _free_subnet(pid * 16 + n)
    host_addr, ns_addr = (str(a) for a in list(subnet.hosts())[:2])
    veth = Veth(
        ns=f"{_PREFIX}-{pid}-{n}",
        host_if=f"ehb{pid % 10**7}h{n % 100}",
        ns_if=f"ehb{pid % 10**7}n{n % 100}",
        host_addr=host_addr,
        ns_addr=ns_addr,
    )
    try:
        _ip("netns", "add", veth.ns)
        _ip("link", "add", veth.host_if, "type", "veth", "peer", "name", veth.ns_if)
        _ip("link", "set", veth.ns_if, "netns", veth.ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", veth.host_if)
        _ip("link", "set", veth.host_if, "up")
        inside = ["-n", veth.ns]
        _ip(*inside, "addr", "add", f"{ns_addr}/30", "dev", veth.ns_if)
        _ip(*inside, "link", "set", veth.ns_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield veth
    finally:
        veth.delete()


class Forward:
    """A TCP relay from ``listen_host``:(a free port) to ``target``, in daemon threads of this
    process; :meth:`close` stops accepting (open relays end with their connections)."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server((listen_host, 0))
        self.host, self.port = self._server.getsockname()[:2]
        threading.Thread(target=self._accept, name="forward", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, 10)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._server.close()
