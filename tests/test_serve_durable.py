"""evcore serve on a durable stream: the state file carries the stream positions of exactly
the events its State reflects, so a restarted service resumes with nothing applied twice.

The events are published as Celery publishes them, without evcore's sequence headers, so
only the positions (not the sequence lanes) can keep an event from being applied twice.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _serve_support import lifecycle

from evcore import receiver as receiver_module
from evcore.registry import connect
from evcore.serve.monitor import Monitor, MonitorOptions
from evcore.state.liveness import OFFLINE, liveness
from evcore.transport import (
    EVERY_PARTITION,
    LATEST,
    Exchange,
    OutgoingMessage,
    Transport,
    partition_for,
)

PARTITIONS = 3
EXCHANGE = Exchange("celeryev", "topic")


def stream_url() -> str:
    return f"memory+stream://{uuid.uuid4().hex}?partitions={PARTITIONS}"


def publish(transport: Transport, first: int, count: int) -> None:
    """``count`` task lifecycles (four events each), Celery-style: no sequence headers."""
    messages = []
    for number in range(first, first + count):
        uuid_ = f"t{number}"
        for item in lifecycle(uuid_, at=1000.0 + number):
            body = {k: v for k, v in item.items() if k != "local_received"}
            messages.append(
                OutgoingMessage(
                    item["type"].replace("-", "."),
                    json.dumps(body).encode(),
                    {"hostname": item["hostname"]},
                    partition=partition_for(uuid_, PARTITIONS),
                )
            )
    transport.publish(EXCHANGE, messages)


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def all_succeeded(monitor: Monitor, count: int) -> bool:
    tasks = monitor.state.tasks
    return len(tasks) == count and all(task.state == "SUCCESS" for task in tasks.values())


def options(path: Path, **extra: Any) -> MonitorOptions:
    return MonitorOptions(state_file=path, max_tasks=None, **extra)


def serve_until_done(url: str, path: Path, tasks: int) -> Monitor:
    """Run a service on ``path`` until it holds ``tasks`` finished tasks, then stop it."""

    async def run() -> Monitor:
        monitor = Monitor(url, options(path))
        await monitor.start()
        await wait_until(lambda: all_succeeded(monitor, tasks))
        await monitor.stop()
        return monitor

    return asyncio.run(run())


def test_a_restarted_service_resumes_after_the_saved_positions(tmp_path: Path) -> None:
    url, path = stream_url(), tmp_path / "state.json"
    transport = connect(url)
    publish(transport, 0, 20)

    first = serve_until_done(url, path, 20)
    assert first.durable and first.state.event_count == 80
    saved = json.loads(path.read_text())
    assert saved["format"] == "evcore.checkpoint"
    assert sorted(saved["positions"]) == ["0", "1", "2"]

    publish(transport, 20, 10)
    second = serve_until_done(url, path, 30)
    # Had it read from the start again, the first 80 events would count twice.
    assert second.state.event_count == 120
    assert second.positions != first.positions
    assert second.status()["saved_positions"] == {
        str(p): pos for p, pos in sorted(second.positions.items())
    }
    transport.close()


def test_a_copy_saved_mid_stream_replays_to_the_same_state(tmp_path: Path) -> None:
    """Saves taken while events keep arriving land at marks: the file of any of them,
    resumed, reaches exactly the State of the service that kept running (as after kill -9).
    """
    url, path = stream_url(), tmp_path / "state.json"
    transport = connect(url)
    total = 300
    copies: list[Path] = []

    def keep_publishing() -> None:
        for first in range(0, total, 10):
            publish(transport, first, 10)
            time.sleep(0.1)

    async def run_and_copy() -> Monitor:
        monitor = Monitor(url, options(path))
        await monitor.start()
        publisher = threading.Thread(target=keep_publishing)
        publisher.start()
        saves = 0
        while publisher.is_alive():
            await monitor.save_now()  # now if at a mark, else at the next one
            if monitor.saves > saves:
                saves = monitor.saves
                copy = tmp_path / f"copy-{len(copies)}.json"
                shutil.copy(path, copy)
                copies.append(copy)
            await asyncio.sleep(0.05)
        publisher.join()
        await wait_until(lambda: all_succeeded(monitor, total))
        await monitor.stop()
        return monitor

    reference = asyncio.run(run_and_copy())
    assert reference.state.event_count == total * 4
    partial = [json.loads(copy.read_text())["state"]["counters"]["event_count"] for copy in copies]
    assert any(0 < count < total * 4 for count in partial), partial

    for copy in copies:
        resumed = serve_until_done(url, copy, total)
        assert resumed.state.event_count == total * 4
        assert {u: t.state for u, t in resumed.state.tasks.items()} == {
            u: t.state for u, t in reference.state.tasks.items()
        }
    transport.close()


def test_without_positions_the_start_option_decides(tmp_path: Path) -> None:
    url = stream_url()
    transport = connect(url)
    publish(transport, 0, 5)  # history

    async def run(start: Any, path: Path) -> Monitor:
        monitor = Monitor(url, options(path, stream_start=start))
        await monitor.start()
        await asyncio.sleep(0.3)
        publish(transport, 100, 2)
        await wait_until(lambda: "t101" in monitor.state.tasks)
        await monitor.stop()
        return monitor

    from_history = asyncio.run(run("earliest", tmp_path / "a.json"))
    assert "t0" in from_history.state.tasks
    live_only = asyncio.run(run(LATEST, tmp_path / "b.json"))
    assert "t0" not in live_only.state.tasks and len(live_only.state.tasks) == 2
    transport.close()


def test_a_pub_sub_service_saves_without_positions(tmp_path: Path, bus_url: str) -> None:
    path = tmp_path / "state.json"

    async def run() -> Monitor:
        monitor = Monitor(bus_url, options(path))
        await monitor.start()
        await monitor.stop()
        return monitor

    monitor = asyncio.run(run())
    assert not monitor.durable
    saved = json.loads(path.read_text())
    assert saved["positions"] == {} and saved["state"]["format"] == "evcore.state"


def test_a_worker_silent_before_a_restart_is_not_revived_by_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History read after a restart keeps its own times: the replayed heartbeats of a
    worker that stopped beating before it are old, so the worker shows offline at once."""
    monkeypatch.setattr(receiver_module, "REPLAY_AGE", 0.2)
    url = stream_url()
    transport = connect(url)
    heartbeat = {"type": "worker-heartbeat", "hostname": "gone@x", "freq": 0.1, "clock": 1}
    transport.publish(
        EXCHANGE,
        [
            OutgoingMessage(
                "worker.heartbeat",
                json.dumps({**heartbeat, "timestamp": time.time()}).encode(),
                {"hostname": "gone@x"},
                partition=EVERY_PARTITION,
            )
        ],
    )
    time.sleep(0.5)

    async def run() -> str:
        monitor = Monitor(url, options(tmp_path / "state.json"))
        await monitor.start()
        await wait_until(lambda: "gone@x" in monitor.state.workers)
        status = liveness(monitor.state.workers["gone@x"], monitor.options.liveness).status
        await monitor.stop()
        return status

    assert asyncio.run(run()) == OFFLINE
    transport.close()
