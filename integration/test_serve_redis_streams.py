"""``evcore serve`` on Redis Streams: killed with SIGKILL and started again on its state
file, it resumes after the saved positions, so every event is applied exactly once.

Events are published the way Celery publishes them, without evcore's sequence headers:
only the positions in the state file can keep the service from applying one twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _redis_support import delete_prefix, streams_url

from evcore.checkpoint import load_checkpoint
from evcore.registry import connect
from evcore.transport import Exchange, OutgoingMessage, Transport, partition_for

pytestmark = [pytest.mark.redis, pytest.mark.durable]

EVCORE = os.path.join(os.path.dirname(sys.executable), "evcore")
PARTITIONS = 4
READY = re.compile(rb"on http://127\.0\.0\.1:(\d+)/")


@pytest.fixture
def stream_url(redis_url: str) -> Iterator[str]:
    prefix = f"evtest-serve-{uuid.uuid4().hex[:10]}:"
    yield streams_url(redis_url, prefix, partitions=PARTITIONS)
    delete_prefix(redis_url, prefix)


def publish(transport: Transport, first: int, count: int) -> None:
    """``count`` task lifecycles, four events each, as Celery sends them."""
    messages = []
    now = time.time()
    for number in range(first, first + count):
        task_id = f"t{number}"
        steps: list[tuple[str, dict[str, Any]]] = [
            ("task-received", {"name": "proj.add", "args": "(1, 2)"}),
            ("task-started", {}),
            ("task-succeeded", {"result": "3", "runtime": 0.1}),
        ]
        for offset, (type_, fields) in enumerate(steps):
            body = {
                "type": type_,
                "uuid": task_id,
                "hostname": "w1@serve",
                "timestamp": now + offset,
                "clock": number * 10 + offset,
                **fields,
            }
            messages.append(
                OutgoingMessage(
                    type_.replace("-", "."),
                    json.dumps(body).encode(),
                    {"hostname": "w1@serve"},
                    partition=partition_for(task_id, PARTITIONS),
                )
            )
    transport.publish(Exchange("celeryev", "topic"), messages)


def serve(url: str, state_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The service on a free port; its log goes to a file beside the state file (a pipe
    nobody reads could fill and stall it)."""
    log = state_file.with_suffix(f".{uuid.uuid4().hex[:6]}.log")
    command = [EVCORE, "serve", url, "--port", "0", "--state-file", str(state_file)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--save-interval", "1", "--max-tasks", "0"], stderr=sink
        )
    found: list[re.Match[bytes]] = []

    def ready() -> bool:
        assert process.poll() is None, log.read_bytes()
        found.extend(filter(None, [READY.search(log.read_bytes())]))
        return bool(found)

    wait_for(ready)
    return process, f"http://127.0.0.1:{int(found[0].group(1))}"


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def status(base: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/api/evcore", timeout=5).json())


def test_serve_killed_and_restarted_applies_every_event_once(
    stream_url: str, tmp_path: Path
) -> None:
    state_file = tmp_path / "serve-state.json"
    transport = connect(stream_url)
    try:
        publish(transport, 0, 40)
        process, base = serve(stream_url, state_file)
        try:
            assert status(base)["durable"] is True
            wait_for(lambda: status(base)["events"] == 120)
            # A save taken after every event was applied (the service saves every second).
            wait_for(
                lambda: state_file.exists()
                and json.loads(state_file.read_text())["state"]["counters"]["event_count"]
                == 120
            )
            publish(transport, 40, 20)  # some of these may be applied, but not saved
            process.kill()  # SIGKILL: no save on the way out
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()

        publish(transport, 60, 20)
        process, base = serve(stream_url, state_file)
        try:
            wait_for(lambda: status(base)["tasks"] == 80)
            wait_for(lambda: status(base)["events"] >= 240)
            time.sleep(1.0)  # anything applied twice would show up by now
            assert status(base)["events"] == 240
            tasks = httpx.get(f"{base}/api/tasks?limit=1000", timeout=5).json()
            assert len(tasks) == 80
            assert {task["state"] for task in tasks.values()} == {"SUCCESS"}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        transport.close()

    saved = load_checkpoint(state_file)
    assert saved is not None
    assert saved.state["counters"]["event_count"] == 240
    assert sorted(saved.positions) == list(range(PARTITIONS))
