"""Network helpers shared by the integration tests: polling and a TCP proxy of their own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, step: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Pair:
    """One proxied connection: the client's socket, the broker's, and its stall switch."""

    __slots__ = ("client", "stalled", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.stalled = threading.Event()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a broker, owned by one test, to fake failures.

    - ``cut()`` closes every proxied connection on both sides and refuses new ones until
      ``restore()``;
    - ``drop_clients()`` closes only the client sides and keeps the broker sides open (a
      failure the client notices before the broker does); ``release()`` closes those too;
    - ``stall()`` makes the connections open now accept bytes and forward nothing (a
      partition: both ends see a silent peer), while new connections work;
    - setting ``frozen`` stops forwarding on every connection, new ones included, until it
      is cleared.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop notices close()
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._held: list[socket.socket] = []
        self._accepting = True
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                accepting = self._accepting and not self._stopped
            if not accepting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: _Pair) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            if pair.stalled.is_set() or self.frozen.is_set():
                continue  # swallowed: the peer never hears of it
            try:
                sink.sendall(data)
            except OSError:
                break
        if pair.stalled.is_set():
            return  # a stalled connection stays open, silent
        with self._lock:
            held = set(self._held)
        for sock in (source, sink):
            if sock not in held:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _take_pairs(self) -> list[_Pair]:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        return pairs

    def cut(self) -> None:
        """Drop every proxied connection, both sides, and refuse new ones until restore()."""
        with self._lock:
            self._accepting = False
        for pair in self._take_pairs():
            _close(pair.client)
            _close(pair.upstream)
        self.release()

    def drop_clients(self) -> None:
        """Close the client sides only; the broker keeps its connections until release()."""
        pairs = self._take_pairs()
        with self._lock:
            self._held.extend(pair.upstream for pair in pairs)
        for pair in pairs:
            _close(pair.client)

    def release(self) -> None:
        """Close the broker sides kept by drop_clients()."""
        with self._lock:
            held, self._held = self._held, []
        for upstream in held:
            _close(upstream)

    def stall(self) -> None:
        """Stop forwarding on every connection open now; keep them open."""
        with self._lock:
            for pair in self._pairs:
                pair.stalled.set()

    def restore(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._accepting = True

    def close(self) -> None:
        self._stopped = True
        self._thread.join(5)
        self.cut()
        self._listener.close()
