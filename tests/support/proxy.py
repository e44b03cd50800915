"""A TCP proxy in front of the broker that a test can cut: "the broker is unreachable from the
producers" without touching the broker (Tansu keeps topics in memory: it must not restart).

Kafka clients connect to the address the broker *advertises* in its metadata, not to the
bootstrap address, so a plain proxy would only see the first connection. This one rewrites the
advertised port in every response it forwards (the host string followed by the big-endian
port, same length, so frames keep their sizes): clients that bootstrap through the proxy keep
using it, every other client talks to the broker directly.

    proxy = KafkaProxy("127.0.0.1", 9092).start()
    settings = settings.model_copy(update={"kafka_bootstrap": proxy.bootstrap})
    proxy.cut()       # every connection closed, new ones refused (reset at once)
    proxy.restore()
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

__all__ = ["KafkaProxy"]


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class KafkaProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self._advertised = upstream_host.encode() + struct.pack(">i", upstream_port)
        self._rewritten = upstream_host.encode() + struct.pack(">i", self.port)
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.connections = 0
        self.refused = 0

    @classmethod
    def for_bootstrap(cls, bootstrap: str) -> KafkaProxy:
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        return cls(host, int(port))

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> KafkaProxy:
        threading.Thread(target=self._accept_loop, name="kafka-proxy", daemon=True).start()
        return self

    # -- faults -------------------------------------------------------------------------------
    def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        self._cut.set()
        self._close_all()

    def restore(self) -> None:
        self._cut.clear()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    # -- forwarding -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )  # RST, not a polite close
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
            self.connections += 1
            self._spawn(self._pipe_requests, client, upstream)
            self._spawn(self._pipe_responses, upstream, client)

    def _spawn(
        self,
        target: Callable[[socket.socket, socket.socket], None],
        src: socket.socket,
        dst: socket.socket,
    ) -> None:
        threading.Thread(
            target=target, args=(src, dst), daemon=True, name="kafka-proxy-pipe"
        ).start()

    def _pipe_requests(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src, dst)

    def _pipe_responses(self, src: socket.socket, dst: socket.socket) -> None:
        """Responses frame by frame (4-byte size + body), advertised port rewritten."""
        try:
            while True:
                size = _recv_exactly(src, 4)
                if size is None:
                    break
                body = _recv_exactly(src, struct.unpack(">i", size)[0])
                if body is None:
                    break
                if self._advertised in body:
                    body = body.replace(self._advertised, self._rewritten)
                dst.sendall(size + body)
        except OSError:
            pass
        finally:
            self._drop(src, dst)

    def _drop(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self._lock:
                self._sockets.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
