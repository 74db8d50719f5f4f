"""Section 7: NATS core pub/sub and JetStream, evcore only (Celery has no NATS transport).

Dispatch runs in this process, each repetition alternating the background writer and
inline publishing; what arrived is counted by a subscriber process on NATS core and read from
the stream's own count on JetStream (where every append is confirmed by the server before
``flush()`` returns). End to end reuses section 2's dispatcher and Receiver + State processes;
on JetStream the Receiver reads the partitions as a lone member from the latest position.
Streams get a prefix of this run's own and are deleted at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.common import Child, Row, Settings, alternate, log
from benchmarks.dispatch import e2e_run, evcore_run, exchange_name
from benchmarks.durable import populate, run_members
from benchmarks.workload import make_events, sendable, tasks_for_events

SECTION = "7. NATS (evcore only: Celery has no NATS transport)"
PARTITIONS = 16


def nats_url() -> str:
    return os.environ.get("EVCORE_NATS_URL", "nats://127.0.0.1:4222")


def _admin(coroutine_of: Callable[[Any], Any]) -> Any:
    import nats

    async def run() -> Any:
        client = await nats.connect(nats_url(), allow_reconnect=False, max_reconnect_attempts=1)
        try:
            return await coroutine_of(client.jetstream())
        finally:
            await client.close()

    return asyncio.run(run())


def stream_messages(prefix: str) -> int:
    """Messages held now by the streams whose names start with ``prefix``."""

    async def count(js: Any) -> int:
        infos = await js.streams_info()
        return sum(i.state.messages for i in infos if i.config.name.startswith(prefix))

    return int(_admin(count))


def delete_streams(prefix: str) -> None:
    async def delete(js: Any) -> None:
        for info in await js.streams_info():
            if info.config.name.startswith((prefix, f"KV_{prefix}")):
                await js.delete_stream(info.config.name)

    _admin(delete)


class NatsCounter:
    """A subscriber process on the exchange's subjects (``#``)."""

    def __init__(self, url: str, exchange: str) -> None:
        self.child = Child("nats-count", {"url": url, "exchange": exchange})
        self.child.expect(15)

    def take(self) -> tuple[int, int]:
        self.child.send({"cmd": "count", "settle": 0.3})
        answer = self.child.expect(60)
        return answer["messages"], answer["events"]

    def close(self) -> None:
        self.child.close()


def nats_section(settings: Settings) -> list[Row]:
    prefix = f"evbench{os.getpid()}x{uuid.uuid4().hex[:4]}"
    stream_url = nats_url().replace("nats://", "jetstream://", 1)
    stream_url += f"?partitions={PARTITIONS}&stream_prefix={prefix}"
    events = sendable(make_events(tasks_for_events(settings.dispatch_events)))
    events = events[: settings.dispatch_events]
    rows: list[Row] = []
    try:
        for batched in (False, True):
            rows.append(_dispatch_core(settings, events, batched))
            rows.append(_dispatch_stream(settings, stream_url, prefix, events, batched))
        for batched in (False, True):
            for label, url in (("NATS core", nats_url()), ("JetStream", stream_url)):
                rows.append(_end_to_end(settings, label, url, batched))
        rows.extend(_replay_and_group(settings, stream_url))
    finally:
        delete_streams(prefix)
    return rows


def _mode(batched: bool) -> str:
    return "batched (buffer_group={'task'}, limit 24)" if batched else "unbatched send()"


def _dispatch_core(settings: Settings, events: Any, batched: bool) -> Row:
    url, exchange = nats_url(), exchange_name()
    counter = NatsCounter(url, exchange)
    arrived: dict[str, list[tuple[int, int, int]]] = {}

    def contender(name: str, background: bool) -> Callable[[], float]:
        def measured() -> float:
            sent, elapsed, _ = evcore_run(
                url, exchange, events, settings.dispatch_seconds, batched, background
            )
            messages, got = counter.take()
            arrived.setdefault(name, []).append((sent, got, messages))
            return sent / elapsed

        return measured

    log(f"dispatch over NATS core, {_mode(batched)}: {settings.reps} repetitions")
    try:
        results = alternate(
            settings.reps,
            [("background", contender("background", True)), ("inline", contender("inline", False))],
        )
    finally:
        counter.close()
    return _dispatch_row("NATS core", batched, results, arrived, "events arrived")


def _dispatch_stream(
    settings: Settings, url: str, prefix: str, events: Any, batched: bool
) -> Row:
    arrived: dict[str, list[tuple[int, int, int]]] = {}

    def contender(name: str, background: bool) -> Callable[[], float]:
        def measured() -> float:
            exchange = exchange_name()
            before = stream_messages(prefix)
            sent, elapsed, messages = evcore_run(
                url, exchange, events, settings.dispatch_seconds, batched, background
            )
            # The warm-up event went to every partition.
            stored = stream_messages(prefix) - before - PARTITIONS
            arrived.setdefault(name, []).append((sent, stored, messages))
            return sent / elapsed

        return measured

    log(f"dispatch over JetStream, {_mode(batched)}: {settings.reps} repetitions")
    results = alternate(
        settings.reps,
        [("background", contender("background", True)), ("inline", contender("inline", False))],
    )
    return _dispatch_row(
        "JetStream", batched, results, arrived, "messages stored (worker events x16)"
    )


def _dispatch_row(
    broker: str,
    batched: bool,
    results: dict[str, list[float]],
    arrived: dict[str, list[tuple[int, int, int]]],
    what: str,
) -> Row:
    row = Row(
        "1. Dispatch throughput",
        f"{broker}, {_mode(batched)}, evcore background=True",
        "events/s",
        results["background"],
        notes=[f"inline (background=False): {_spread(results['inline'])} events/s"],
    )
    for name in ("background", "inline"):
        sent = sum(item[0] for item in arrived[name])
        got = sum(item[1] for item in arrived[name])
        messages = sum(item[2] for item in arrived[name])
        row.notes.append(f"{name}: {got} {what} for {sent} events sent ({messages} messages)")
    row.section = SECTION
    return row


def _end_to_end(settings: Settings, label: str, url: str, batched: bool) -> Row:
    reps = max(1, min(settings.reps, 3))
    mode = "batched" if batched else "unbatched"
    log(f"end to end over {label}, {mode}: {reps} repetitions")
    runs = [e2e_run(settings, url, "evcore", batched, seed=rep) for rep in range(reps)]
    sent = sum(run["sent"] for run in runs)
    received = sum(run["received"] for run in runs)
    seen = sum(run["lost_seen"] or 0 for run in runs)
    sender = statistics.median(run["send_rate"] for run in runs)
    return Row(
        SECTION,
        f"end to end, {label}, {mode} (dispatcher process -> Receiver + State process)",
        "events/s",
        [run["rate"] for run in runs],
        notes=[
            f"{received}/{sent} events processed, {sent - received} lost "
            f"(Receiver.stats.lost_events: {seen}); its sender alone: median {sender:,.0f} ev/s"
        ],
    )


def _replay_and_group(settings: Settings, url: str) -> list[Row]:
    """Section 6's replay and group-ingest runs on JetStream: a lone monitor process building
    its State from the earliest retained event, then one and two member processes of a
    group reading the same stream (alternated)."""
    events = 20_000 if settings.quick else 50_000
    reps = max(1, min(settings.reps, 3))
    log(f"JetStream: appending {events} events (batched) for the replay and group runs")
    append_rate = populate(url, events, batched=True)
    replay: list[float] = []
    sizes: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(reps):
        (solo,) = run_members(url, 1, None, idle=1.0)
        replay.append(solo["count"] / max(solo["last"] - solo["go"], 1e-9))
        for size in (1, 2) if rep % 2 == 0 else (2, 1):
            reports = run_members(url, size, f"g{rep}-{size}", idle=1.5)
            end = max(report["last"] for report in reports)
            sizes[size].append(events / max(end - reports[0]["go"], 1e-9))
    ratio = statistics.median(sizes[2]) / statistics.median(sizes[1])
    return [
        Row(
            SECTION,
            f"JetStream replay: a new monitor builds its State from {events:,} retained events",
            "events/s",
            replay,
            notes=[f"appended (batched) at {append_rate:,.0f} ev/s"],
        ),
        Row(SECTION, "JetStream group ingest, 1 member", "events/s", sizes[1]),
        Row(
            SECTION,
            "JetStream group ingest, 2 members (two processes, one group)",
            "events/s",
            sizes[2],
            notes=[f"2 members / 1 member: {ratio:.2f}x"],
        ),
    ]


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f}"
