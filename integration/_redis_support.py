"""Helpers shared by the Redis integration tests: databases, client names, private servers."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from _net import TcpProxy, free_port, wait_for

#: The database these tests use, so that channel prefixes never meet other suites'.
TEST_DB = 9


def with_db(url: str, db: int = TEST_DB) -> str:
    """``url`` with its path replaced by ``/<db>``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def streams_url(redis_url: str, prefix: str, **query: Any) -> str:
    """A ``redis+streams://`` URL on the test database whose keys start with ``prefix``."""
    base = with_db(redis_url).replace("redis://", "redis+streams://", 1)
    options = "&".join(f"{key}={value}" for key, value in {"prefix": prefix, **query}.items())
    return f"{base}?{options}"


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete the test database's keys that start with ``prefix``."""
    client = admin(with_db(redis_url))
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


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


class FreezableProxy(TcpProxy):
    """The shared proxy (``_net.TcpProxy``, freeze it with ``frozen.set()``), with the
    Redis URL that goes through it."""

    def url(self, db: int = TEST_DB) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"
