"""Helpers shared by the Redis integration tests: databases, client names, private servers."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

#: The database these tests use, so that channel prefixes never meet other suites'.
TEST_DB = 9


def with_db(url: str, db: int = TEST_DB) -> str:
    """``url`` with its path replaced by ``/<db>``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def client_name() -> str:
    """A connection name of this test's own, to find (and kill) only its connections."""
    return f"evcore-{uuid.uuid4().hex[:12]}"


def admin(url: str) -> redis.Redis:
    """A plain redis-py client for the test's own inspection and fault injection."""
    return redis.Redis.from_url(url, socket_timeout=5, protocol=2)


def clients_named(client: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [entry for entry in client.client_list() if entry.get("name") == name]


def kill_clients(client: redis.Redis, name: str) -> int:
    """CLIENT KILL every connection named ``name`` (by id); how many were killed."""
    killed = 0
    for entry in clients_named(client, name):
        killed += int(client.execute_command("CLIENT", "KILL", "ID", entry["id"]))
    return killed


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.args = args
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/{TEST_DB}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = admin(self.url)
        try:
            if not wait_for(lambda: _answers(client), timeout=10):
                raise RuntimeError(f"redis-server on port {self.port} did not come up")
        finally:
            client.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    """Whether the server is up (an authentication refusal counts as up)."""
    try:
        return bool(client.ping())
    except (redis.AuthenticationError, redis.ResponseError):
        return True
    except redis.RedisError:
        return False


@contextmanager
def private_redis(*args: str) -> Iterator[PrivateRedis]:
    """A private redis-server, with extra command-line ``args``, for the ``with`` block."""
    server = PrivateRedis(*args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FreezableProxy:
    """A TCP proxy to a Redis that can stop forwarding without closing anything, so the
    client sees a silent, half-open connection (a partition, a dead host)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = TEST_DB) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.frozen.is_set():
                try:
                    sink.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
