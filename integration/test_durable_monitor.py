"""Resumable monitors on Redis Streams: kill -9 at random moments and restart, and a group
of member processes, each compared field by field with one State built from the stream."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _net import wait_for
from _redis_support import delete_prefix, streams_url

from evcore import Dispatcher, Receiver
from evcore.checkpoint import load_checkpoint
from evcore.state import State
from evcore.state.merge import merge_snapshots
from evcore.state.snapshot import snapshot
from evcore.transport import EARLIEST, StreamOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import make_events, sendable

pytestmark = [pytest.mark.redis, pytest.mark.durable]

EVCORE = [sys.executable, "-c", "from evcore.cli import main; main()"]


@pytest.fixture
def stream_url(redis_url: str) -> Iterator[str]:
    prefix = f"evtest-{uuid.uuid4().hex[:10]}:"
    yield streams_url(redis_url, prefix, partitions=4)
    delete_prefix(redis_url, prefix)


def _publish(url: str, events: list[tuple[str, dict[str, Any]]], pace: float = 0.0) -> None:
    with Dispatcher(url, hostname="w1@monitor") as dispatcher:
        for index, (type_, fields) in enumerate(events):
            dispatcher.send(type_, **fields)
            if pace and index % 50 == 0:
                time.sleep(pace)


def _whole_stream(url: str, count: int) -> State:
    state = State(max_tasks_in_memory=None)
    receiver = Receiver(url, handlers={"*": state.event}, stream=StreamOptions(start=EARLIEST))
    assert receiver.capture(limit=count, timeout=20) == count
    receiver.close()
    return state


def _comparable(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    def clean(record: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in record.items() if k not in ("local_received", "heartbeats")}
        kept["heartbeats"] = len(record.get("heartbeats", ()))
        return kept

    return (
        {task["uuid"]: clean(task) for task in data["tasks"]},
        {worker["hostname"]: clean(worker) for worker in data["workers"]},
    )


def _monitor(url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*EVCORE, "monitor", url, "--max-tasks", "100000", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def test_a_monitor_killed_at_random_moments_resumes_with_nothing_lost_or_doubled(
    stream_url: str, tmp_path: Path
) -> None:
    events = sendable(make_events(900, seed=3))
    publisher = threading.Thread(target=_publish, args=(stream_url, events, 0.01))
    publisher.start()
    checkpoint = tmp_path / "monitor.json"
    rnd = random.Random(14)
    kills = 0
    try:
        while publisher.is_alive() or kills < 3:
            process = _monitor(stream_url, "--checkpoint", str(checkpoint), "--interval", "0.1")
            time.sleep(rnd.uniform(0.6, 1.4))
            process.kill()  # SIGKILL: no chance to checkpoint on the way out
            process.wait(timeout=10)
            kills += 1
    finally:
        publisher.join()
    final = _monitor(stream_url, "--checkpoint", str(checkpoint), "--idle-exit", "1.0")
    out, _ = final.communicate(timeout=60)
    assert final.returncode == 0
    stats = json.loads(out.decode().splitlines()[-1])
    assert stats["lost"] == 0

    saved = load_checkpoint(checkpoint)
    assert saved is not None
    whole = _whole_stream(stream_url, len(events))
    # Nothing applied twice: as many events applied as the whole stream holds, and the
    # same tasks and workers, field by field.
    assert saved.state["counters"]["event_count"] == whole.event_count == len(events)
    assert _comparable(dict(saved.state)) == _comparable(snapshot(whole))
    assert kills >= 3


def test_a_group_of_member_processes_holds_the_state_of_one(
    stream_url: str, tmp_path: Path
) -> None:
    events = sendable(make_events(600, seed=4))
    _publish(stream_url, events)
    checkpoint = tmp_path / "member.json"
    group = _monitor(
        stream_url,
        "--group",
        "g",
        "--members",
        "2",
        "--lease",
        "1",
        "--checkpoint",
        str(checkpoint),
        "--interval",
        "0.2",
    )
    whole = _comparable(snapshot(_whole_stream(stream_url, len(events))))

    def union() -> tuple[dict[str, Any], dict[str, Any]] | None:
        saved = [load_checkpoint(f"{checkpoint}.{i}") for i in range(2)]
        if None in saved:
            return None
        return _comparable(merge_snapshots(s.state for s in saved if s is not None))

    def settled() -> bool:
        # Each member checkpointed positions of its own partitions only, all covered.
        saved = [load_checkpoint(f"{checkpoint}.{i}") for i in range(2)]
        held = [frozenset(s.positions) if s is not None else frozenset() for s in saved]
        split = all(held) and not held[0] & held[1] and held[0] | held[1] == set(range(4))
        return split and union() == whole

    try:
        assert wait_for(settled, timeout=30), "the members never split the work and caught up"
    finally:
        group.send_signal(signal.SIGTERM)
        out, _ = group.communicate(timeout=30)
    assert group.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    owned = [frozenset(line["partitions"]) for line in lines]
    assert len(owned) == 2 and owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == frozenset(range(4))
    # The checkpoints written on the way out still add up to the whole stream.
    assert union() == whole
