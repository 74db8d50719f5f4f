"""``evcore serve`` as a process: in a pseudo-terminal with ``--demo``, SIGTERM, the state
file, and hostile clients on a real socket (slow, oversized, malformed)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest
from click.testing import CliRunner

from evcore.cli import cli
from evcore.cli.serve import parse_retention, parse_size

EVCORE = os.path.join(os.path.dirname(sys.executable), "evcore")
TIMEOUT = 20
READY = re.compile(r"on http://127\.0\.0\.1:(\d+)/")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[pexpect.spawn, str, Path]]:
    """``evcore serve memory:// --demo`` on a free port, in a pty; stopped at the end."""
    state_file = tmp_path / "state.json"
    child = pexpect.spawn(
        EVCORE,
        ["serve", "memory://", "--demo", "--port", "0", "--state-file", str(state_file)],
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    try:
        child.expect(READY)
        yield child, f"http://127.0.0.1:{child.match.group(1)}", state_file
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_demo_serves_and_stops_cleanly_on_sigterm(
    served: tuple[pexpect.spawn, str, Path],
) -> None:
    child, base, state_file = served
    deadline = time.monotonic() + TIMEOUT
    tasks: dict[str, object] = {}
    while not tasks and time.monotonic() < deadline:
        tasks = httpx.get(f"{base}/api/tasks?limit=5", timeout=5).json()
        time.sleep(0.1)
    assert 0 < len(tasks) <= 5
    assert httpx.get(f"{base}/readyz", timeout=5).json()["ready"] is True
    workers = httpx.get(f"{base}/api/workers", timeout=5).json()
    assert any(name.startswith("demo-worker") for name in workers)
    assert "celery_task_received_total{" in httpx.get(f"{base}/metrics", timeout=5).text
    child.kill(signal.SIGTERM)
    child.expect("stopped after")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert state_file.exists() and '"evcore.state"' in state_file.read_text()


def test_live_events_stream_and_sigterm_ends_open_streams(
    served: tuple[pexpect.spawn, str, Path],
) -> None:
    child, base, _ = served
    seen: list[str] = []
    with httpx.stream("GET", f"{base}/api/events/stream?groups=worker", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
            if len(seen) == 3:
                break
    assert seen == ["worker"] * 3
    assert httpx.get(f"{base}/api/events/stream?groups=nope", timeout=5).status_code == 400
    # A stream left open does not hold up the shutdown.
    with httpx.stream("GET", f"{base}/api/events/stream", timeout=10) as response:
        child.kill(signal.SIGTERM)
        started = time.monotonic()
        for _ in response.iter_lines():
            pass
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert time.monotonic() - started < 8


def test_slow_and_hostile_clients_do_not_block_others(
    served: tuple[pexpect.spawn, str, Path],
) -> None:
    _, base, _ = served
    host, port = base.removeprefix("http://").split(":")
    # A client that sends half a request line and stalls...
    slow = socket.create_connection((host, int(port)))
    slow.sendall(b"GET /api/tasks HTTP/1.1\r\nHost: x\r\n")
    # ...one that sends an enormous header block...
    big = socket.create_connection((host, int(port)))
    big.sendall(b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 200_000 + b"\r\n\r\n")
    # ...and one that sends garbage.
    junk = socket.create_connection((host, int(port)))
    junk.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    try:
        started = time.monotonic()
        response = httpx.get(f"{base}/healthz", timeout=5)
        assert response.status_code == 200
        assert time.monotonic() - started < 5
        assert httpx.get(f"{base}/api/tasks?" + "x=1&" * 3000, timeout=5).status_code == 414
        assert (
            httpx.get(f"{base}/api/task/info/..%2F..%2Fetc%2Fpasswd", timeout=5).status_code == 404
        )
        assert httpx.get(f"{base}/api/tasks?limit=1", timeout=5).status_code == 200
        for sock in (big, junk):
            sock.settimeout(5)
            answer = sock.recv(200)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    finally:
        for sock in (slow, big, junk):
            sock.close()


def test_a_bad_url_or_option_is_a_one_line_error() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "nosuch://x"])
    assert result.exit_code == 1
    assert "no transport is installed for the scheme 'nosuch'" in result.output
    result = runner.invoke(cli, ["serve", "redis://127.0.0.1:1/0", "--demo"])
    assert result.exit_code == 2
    assert "--demo" in result.output
    result = runner.invoke(cli, ["serve", "memory://", "--basic-auth", "nocolon"])
    assert result.exit_code == 2
    assert "USER:PASSWORD" in result.output
    result = runner.invoke(cli, ["serve", "memory://", "--late-after", "3"])
    assert result.exit_code == 2


def test_option_parsers() -> None:
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1000") == 1000
    assert parse_retention(("success=60", "FAILURE=3600")) == {"SUCCESS": 60, "FAILURE": 3600}
    for bad in (("SUCCESS",), ("SUCCESS=0",), ("=5",), ("SUCCESS=soon",)):
        with pytest.raises(Exception, match="STATE=SECONDS"):
            parse_retention(bad)


def test_without_the_web_stack_the_error_names_the_extra() -> None:
    """With uvicorn not importable, ``evcore serve`` says which extra to install."""
    script = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from evcore.cli import main; sys.argv = ['evcore', 'serve', 'memory://']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "pip install 'evcore[serve]'" in result.stderr
    assert "Traceback" not in result.stderr
