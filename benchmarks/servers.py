"""Servers the transports section starts for itself: moto's SNS/SQS server and a three-node
Redis Cluster, each on free 127.0.0.1 ports, stopped when the section ends."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server (``moto[server]``); yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


@contextmanager
def redis_cluster() -> Iterator[str]:
    """Three redis-server primaries with cluster mode on; yields a ``redis+cluster://`` URL."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed for the Redis Cluster rows")
    with tempfile.TemporaryDirectory(prefix="evbench-cluster-") as folder, ExitStack() as stack:
        ports = [free_port() for _ in range(3)]
        for port in ports:
            process = subprocess.Popen(
                [
                    server,
                    *("--port", str(port), "--cluster-port", str(free_port())),
                    *("--bind", "127.0.0.1", "--cluster-enabled", "yes"),
                    *("--cluster-config-file", f"nodes-{port}.conf", "--dir", folder),
                    *("--save", "", "--appendonly", "no"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(_stop, process)
            _wait_listening(port, 10)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        for port in ports:
            deadline = time.monotonic() + 30
            while b"cluster_state:ok" not in subprocess.run(
                [cli, "-p", str(port), "cluster", "info"], capture_output=True, check=False
            ).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark's Redis Cluster did not become healthy")
                time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
