"""``evcore top`` in a pseudo-terminal through a Redis outage: a private redis-server is
stopped and started again; the view says the connection is lost, then recovers by itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pexpect
import pytest

pytestmark = pytest.mark.redis

EVCORE = os.path.join(os.path.dirname(sys.executable), "evcore")
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, on 127.0.0.1, that can be stopped and restarted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed", pytrace=False)
    server = PrivateRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_top_says_when_the_broker_is_gone_and_recovers(private_redis: PrivateRedis) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    child = pexpect.spawn(
        EVCORE,
        ["top", f"redis://127.0.0.1:{private_redis.port}/0"],
        dimensions=(30, 120),
        env={**env, "TERM": "xterm-256color"},
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect("● connected")
        child.expect("reconnects 0")
        private_redis.stop()
        child.expect("connection lost")
        child.expect("retrying")
        private_redis.start()
        child.expect("● connected")
        child.expect("reconnects 1")
        child.send("q")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)
