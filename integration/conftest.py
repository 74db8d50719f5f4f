"""Real brokers for the integration suite.

Each broker comes from a testcontainers container when a Docker engine answers, otherwise
from ``EVCORE_REDIS_URL`` / ``EVCORE_AMQP_URL`` / ``EVCORE_NATS_URL`` (defaulting to the local
services). Outside CI an unreachable broker skips its tests with the reason; with ``CI=true``
it fails them, so a broken broker can never pass CI as a row of skips.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest

#: A project of its own (its own rootdir and conftest), run by tests/test_pytest_plugin.py.
collect_ignore = ["sample_project"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def docker_answers() -> bool:
    """Whether a Docker engine is reachable (the client alone is not enough)."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:
        return False
    return True


def reachable(url: str, default_port: int) -> str | None:
    """None if a TCP connection to the URL's host and port succeeds, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc})"


def unavailable(what: str, reason: str) -> None:
    message = f"{what} broker not available: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a broker test must not skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def _containers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def redis_url(_containers: ExitStack) -> str:
    """URL of a real Redis: a container when Docker answers, else EVCORE_REDIS_URL."""
    if docker_answers():
        from testcontainers.redis import RedisContainer

        container = _containers.enter_context(RedisContainer("redis:7-alpine"))
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        return f"redis://{host}:{port}/0"
    url = os.environ.get("EVCORE_REDIS_URL", DEFAULT_REDIS_URL)
    problem = reachable(url, 6379)
    if problem:
        unavailable("Redis", problem)
    return url


@pytest.fixture(scope="session")
def amqp_url(_containers: ExitStack) -> str:
    """URL of a real RabbitMQ: a container when Docker answers, else EVCORE_AMQP_URL."""
    if docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        container = _containers.enter_context(RabbitMqContainer("rabbitmq:3-alpine"))
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        # Tests that manage the broker (close connections, delete queues) reach it here.
        os.environ["EVCORE_RABBITMQCTL"] = (
            f"docker exec {container.get_wrapped_container().id} rabbitmqctl"
        )
        return f"amqp://guest:guest@{host}:{port}//"
    url = os.environ.get("EVCORE_AMQP_URL", DEFAULT_AMQP_URL)
    problem = reachable(url, 5672)
    if problem:
        unavailable("RabbitMQ", problem)
    return url


@pytest.fixture(scope="session")
def nats_url(_containers: ExitStack) -> str:
    """URL of a real NATS server with JetStream: a container when Docker answers, else
    EVCORE_NATS_URL."""
    if docker_answers():
        from testcontainers.community.nats import NatsContainer

        container = _containers.enter_context(NatsContainer("nats:2-alpine", jetstream=True))
        return str(container.nats_uri())
    url = os.environ.get("EVCORE_NATS_URL", DEFAULT_NATS_URL)
    problem = reachable(url, 4222)
    if problem:
        unavailable("NATS", problem)
    return url


@pytest.fixture(scope="session")
def postgres_url(_containers: ExitStack) -> str:
    """URL (libpq) of a real PostgreSQL: a container when Docker answers, else
    EVCORE_POSTGRES_URL."""
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = _containers.enter_context(
            PostgresContainer(
                "postgres:16-alpine", username="postgres", password="test", dbname="test"
            )
        )
        host, port = container.get_container_host_ip(), container.get_exposed_port(5432)
        return f"postgresql://postgres:test@{host}:{port}/test"
    url = os.environ.get("EVCORE_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    problem = reachable(url, 5432)
    if problem:
        unavailable("PostgreSQL", problem)
    return url


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """An SNS/SQS endpoint of the module's own: moto's server on a free 127.0.0.1 port,
    stopped when the module's tests are done (a fresh server per module keeps what one
    module leaves behind from slowing the next)."""
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    try:
        server = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    except OSError as exc:
        unavailable("SQS (moto server)", f"cannot start {command}: {exc}")
    deadline = time.monotonic() + 30
    while reachable(f"http://127.0.0.1:{port}", port) and server.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problem = reachable(f"http://127.0.0.1:{port}", port)
    if problem:
        server.kill()
        errors = server.communicate(timeout=10)[1][-2000:]
        unavailable("SQS (moto server)", f"{problem}; is moto[server] installed? {errors}")
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)


@pytest.fixture(scope="session")
def redis_cluster_binaries() -> None:
    """redis-server (Redis 7, for sharded pub/sub) and redis-cli, to start private clusters."""
    import shutil
    import subprocess

    server = shutil.which("redis-server")
    if server is None or shutil.which("redis-cli") is None:
        unavailable("Redis Cluster", "redis-server and redis-cli are needed on PATH")
        return
    version = subprocess.run(
        [server, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    major = version.partition(" v=")[2].split(".")[0]
    if not major.isdigit() or int(major) < 7:
        unavailable("Redis Cluster", f"sharded pub/sub needs Redis 7 or newer: {version.strip()}")


@pytest.fixture
def exchange_name() -> str:
    """An exchange name of this test's own, so parallel runs never see each other."""
    return f"evtest.{uuid.uuid4().hex[:12]}"
