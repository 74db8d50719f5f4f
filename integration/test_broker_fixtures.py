"""The broker fixtures' rule: outside CI an unreachable broker skips, with CI=true it fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import docker_answers

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "redis": ("EVCORE_REDIS_URL", "redis://127.0.0.1:{port}/0", "test_redis_live.py"),
    "amqp": ("EVCORE_AMQP_URL", "amqp://guest:guest@127.0.0.1:{port}//", "test_amqp_wire.py"),
    "nats": ("EVCORE_NATS_URL", "nats://127.0.0.1:{port}", "test_nats_conformance.py"),
    "postgres": (
        "EVCORE_POSTGRES_URL",
        "postgresql://postgres@127.0.0.1:{port}/test",
        "test_pgnotify_faults.py",
    ),
}
#: Each case runs in the tox environment of its broker (its client library is installed there).
BROKERS = [pytest.param(name, marks=getattr(pytest.mark, name)) for name in sorted(CASES)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_one_test(broker: str, ci: str) -> subprocess.CompletedProcess[str]:
    variable, template, module = CASES[broker]
    env = {**os.environ, variable: template.format(port=closed_port()), "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(ROOT / "integration" / module)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(autouse=True)
def _only_without_docker() -> None:
    if docker_answers():
        pytest.skip("a Docker engine answers: the fixtures use containers, not the URLs")


@pytest.mark.parametrize("broker", BROKERS)
def test_unreachable_broker_fails_in_ci(broker: str) -> None:
    result = run_one_test(broker, ci="true")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "must not skip" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


@pytest.mark.parametrize("broker", BROKERS)
def test_unreachable_broker_skips_with_the_reason_outside_ci(broker: str) -> None:
    result = run_one_test(broker, ci="")
    assert result.returncode == 0, result.stdout[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert "skipped" in last
    assert "passed" not in last
    assert "broker not available" in result.stdout  # the reason, from the -ra summary
    assert "is unreachable" in result.stdout
