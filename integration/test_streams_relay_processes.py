"""``evcore relay`` processes between Redis pub/sub (where Celery workers publish, kombu's
layout) and Redis Streams on a private append-only redis-server: two relays side by side
with one killed -9 and restarted, and one relay alone killed -9 and restarted while the
destination server is stopped and started again."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _net import wait_for
from _redis_support import PrivateRedis, with_db
from celery import Celery

from evcore import Dispatcher, Receiver
from evcore.state import State
from evcore.transport import EARLIEST, StreamOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import make_events, sendable

pytestmark = [pytest.mark.redis, pytest.mark.durable]

PARTITIONS = 4


class RelayProcess:
    """``evcore relay`` in a child process, its stderr in a file to watch."""

    def __init__(self, source: str, destination: str, exchange: str, log: Path) -> None:
        self.args = [
            sys.executable,
            "-c",
            "from evcore.cli import main; main()",
            "relay",
            source,
            destination,
            "--exchange",
            exchange,
            "--stats-interval",
            "0.1",
        ]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as err:
            self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=err)
        assert wait_for(lambda: "subscribed to the source" in self.output(), timeout=20)

    def output(self) -> str:
        """What this run of the process wrote to stderr."""
        return self.log.read_bytes()[self.offset :].decode(errors="replace")

    def counter(self, name: str) -> int:
        """The last value of a counter in the periodic lines."""
        counts = re.findall(rf"\b{name}=(\d+)", self.output())
        return int(counts[-1]) if counts else 0

    def forwarded(self) -> int:
        return self.counter("forwarded")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then the final counters it printed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=20)
        assert self.process.returncode == 0, self.output()
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    server.start()
    yield server
    server.stop()


def _streams_url(server: PrivateRedis) -> str:
    return server.url.replace("redis://", "redis+streams://", 1) + (
        f"?partitions={PARTITIONS}&prefix=relay:"
    )


def _workload(n_tasks: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    return sendable(make_events(n_tasks, seed=seed))


def _read_stream(url: str, exchange: str, expected: int) -> tuple[list[dict[str, Any]], Receiver]:
    seen: list[dict[str, Any]] = []
    state = State(max_tasks_in_memory=None)

    def handle(event: dict[str, Any]) -> None:
        seen.append(event)
        state.event(event)

    receiver = Receiver(
        url, handlers={"*": handle}, exchange=exchange, stream=StreamOptions(start=EARLIEST)
    )
    receiver.capture(limit=expected, timeout=15)
    receiver.capture(timeout=0.3)  # anything beyond what was expected shows up here
    receiver.close()
    assert state.event_count == len(seen)
    return seen, receiver


def _per_task(events: list[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for type_, fields in events:
        if "uuid" in fields:
            out.setdefault(fields["uuid"], []).append(type_)
    return out


def _events_of(seen: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(event["type"], event) for event in seen]


def test_two_relays_one_killed_and_restarted_nothing_lost_nothing_twice(
    redis_url: str, exchange_name: str, destination: PrivateRedis, tmp_path: Path
) -> None:
    """Celery's own EventDispatcher (batched task events) publishes; relay A is killed -9
    and restarted while relay B keeps running: the stream holds every event, and a reader
    applies each exactly once, in each task's order."""
    source = with_db(redis_url)
    dest = _streams_url(destination)
    relays = [
        RelayProcess(source, dest, exchange_name, tmp_path / f"relay-{name}.log")
        for name in "ab"
    ]
    app = Celery("evcore-relay", broker=source, set_as_current=False)
    app.conf.event_exchange = exchange_name
    events = _workload(240, seed=21)
    thirds = [events[: len(events) // 3], events[len(events) // 3 : 2 * len(events) // 3]]
    thirds.append(events[2 * len(events) // 3 :])
    try:
        for relay in relays:
            relay.start()
        with app.connection_for_write() as connection:
            worker = app.events.Dispatcher(
                connection, hostname="w1@relaytest", buffer_group={"task"}
            )
            for index, part in enumerate(thirds):
                for type_, fields in part:
                    worker.send(type_, **fields)
                worker.flush()
                if index == 0:
                    relays[0].kill()
                elif index == 1:
                    relays[0].start()
            worker.close()
        assert wait_for(lambda: relays[1].forwarded() == len(events), timeout=15)
        final = [relay.stop() for relay in relays]
    finally:
        for relay in relays:
            relay.close()
        app.close()
    assert final[1]["forwarded"] == len(events)
    assert final[1]["dropped"] == final[1]["unparseable"] == 0
    # Relay A's second life saw the last third (and maybe the end of the second).
    assert final[0]["forwarded"] >= len(thirds[2])

    seen, receiver = _read_stream(dest, exchange_name, len(events))
    assert len(seen) == len(events)
    assert receiver.stats.duplicates > 0
    assert _per_task(_events_of(seen)) == _per_task(events)


def test_a_lone_relay_killed_loses_only_the_pubsub_leg_and_rides_a_destination_restart(
    redis_url: str, exchange_name: str, destination: PrivateRedis, tmp_path: Path
) -> None:
    """One relay: what is published while it is dead is gone (pub/sub keeps nothing), what
    it had appended before is kept; with the destination server stopped, it buffers and
    appends after the restart; a reader gets exactly the events the relay accepted."""
    source = with_db(redis_url)
    dest = _streams_url(destination)
    relay = RelayProcess(source, dest, exchange_name, tmp_path / "relay.log")
    phases = [_workload(40, seed=seed) for seed in (1, 2, 3, 4)]
    dispatcher = Dispatcher(source, hostname="w1@lonerelay", exchange=exchange_name)

    def publish(events: list[tuple[str, dict[str, Any]]]) -> None:
        for type_, fields in events:
            dispatcher.send(type_, **fields)

    try:
        relay.start()
        publish(phases[0])
        assert wait_for(lambda: relay.forwarded() == len(phases[0]), timeout=15)
        relay.kill()
        publish(phases[1])  # nobody subscribed: lost on the pub/sub leg
        relay.start()
        publish(phases[2])
        assert wait_for(lambda: relay.forwarded() == len(phases[2]), timeout=15)
        destination.stop()
        publish(phases[3])  # accepted by the relay, buffered until the server is back
        assert wait_for(lambda: relay.counter("append_failures") > 0, timeout=15)
        time.sleep(0.3)
        destination.start()
        assert wait_for(lambda: relay.forwarded() == len(phases[2]) + len(phases[3]), 20)
        final = relay.stop()
    finally:
        relay.close()
        dispatcher.close()
    assert final["append_failures"] >= 1
    assert final["buffered"] == final["dropped"] == 0
    assert final["forwarded"] == final["received"] == len(phases[2]) + len(phases[3])

    kept = phases[0] + phases[2] + phases[3]
    seen, _ = _read_stream(dest, exchange_name, len(kept))
    assert len(seen) == len(kept)
    assert _per_task(_events_of(seen)) == _per_task(kept)
    lost = {fields["uuid"] for _, fields in phases[1] if "uuid" in fields}
    assert not lost & {event.get("uuid") for event in seen}
