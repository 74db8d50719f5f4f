"""Sections 1 and 2: dispatch throughput, and end to end through a broker.

Dispatch runs in this process against a live subscriber (a PSUBSCRIBE reader process on
Redis, a bound queue on RabbitMQ), so that messages really route; after each run the
subscriber says how many messages and events arrived. End to end runs a dispatcher
process and a Receiver + State process per repetition.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.common import Child, Row, Settings, Timer, alternate, log, pika_parameters
from benchmarks.roles import celery_app, events_in
from benchmarks.workload import make_events, sendable, tasks_for_events

Events = list[tuple[str, dict[str, Any]]]
#: (events sent, seconds) of one run.
Run = tuple[int, float]


def exchange_name() -> str:
    return f"evbench.{os.getpid()}.{uuid.uuid4().hex[:6]}"


# -- counting subscribers ------------------------------------------------------------------


class RedisCounter:
    """A subscriber process on the exchange's channels."""

    def __init__(self, url: str, exchange: str) -> None:
        db = (url.rsplit("/", 1)[-1] or "0") if url.count("/") >= 3 else "0"
        self.child = Child("redis-count", {"url": url, "pattern": f"/{db}.{exchange}/*"})
        self.child.expect(15)

    def take(self, expected_messages: int) -> tuple[int, int]:
        del expected_messages
        self.child.send({"cmd": "count", "settle": 0.3})
        answer = self.child.expect(60)
        return answer["messages"], answer["events"]

    def close(self) -> None:
        self.child.close()


class AMQPCounter:
    """A queue bound with ``#``, drained (untimed) after each run."""

    def __init__(self, url: str, exchange: str) -> None:
        import pika

        self.connection = pika.BlockingConnection(pika_parameters(url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        self.queue = f"{exchange}.count"
        self.channel.queue_declare(self.queue, exclusive=True, auto_delete=False)
        self.channel.queue_bind(self.queue, exchange, routing_key="#")
        self.exchange = exchange

    def take(self, expected_messages: int) -> tuple[int, int]:
        counts = [0, 0]

        def on_message(_channel: Any, method: Any, _properties: Any, body: bytes) -> None:
            events = events_in(method.routing_key, body)
            if events:
                counts[0] += 1
                counts[1] += events

        tag = self.channel.basic_consume(self.queue, on_message, auto_ack=True)
        deadline = time.monotonic() + 60
        quiet_since = time.monotonic()
        seen = 0
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.1)
            if counts[0] != seen:
                seen, quiet_since = counts[0], time.monotonic()
            elif time.monotonic() - quiet_since > (0.3 if seen >= expected_messages else 1.5):
                break
        self.channel.basic_cancel(tag)
        return counts[0], counts[1]

    def close(self) -> None:
        try:
            self.channel.exchange_delete(self.exchange)
        finally:
            self.connection.close()


# -- one dispatch run per system ---------------------------------------------------------


def with_fast_path(url: str) -> str:
    """The AMQP URL with the adapter's opt-in fast path (of consuming) asked for."""
    return url + ("&" if "?" in url else "?") + "fast_path=true"


def evcore_run(
    url: str,
    exchange: str,
    events: Events,
    seconds: float,
    batched: bool,
    background: bool,
    dispatchers: int = 1,
) -> tuple[int, float, int]:
    """evcore's dispatch run; with several ``dispatchers`` they share one transport (as a
    process with several hostnames would) and each event goes to its sender's."""
    from evcore import Dispatcher, connect

    transport = connect(url) if dispatchers > 1 else None
    senders = [
        Dispatcher(
            transport if transport is not None else url,
            hostname=f"w{index + 1}@evbench",
            exchange=exchange,
            buffer_group={"task"} if batched else None,
            buffer_limit=24,
            background=background,
        )
        for index in range(dispatchers)
    ]
    for dispatcher in senders:
        dispatcher.send("bench-warmup")
        dispatcher.flush()
    sends = [dispatcher.send for dispatcher in senders]
    timer = Timer(seconds)
    sent = 0
    start = time.perf_counter()
    for type_, fields in events:
        sends[sent % dispatchers](type_, **fields)
        sent += 1
        if timer.expired():
            break
    for dispatcher in senders:
        dispatcher.flush()
    elapsed = time.perf_counter() - start
    messages = sum(dispatcher.stats.messages_sent for dispatcher in senders) - dispatchers
    for dispatcher in senders:
        dispatcher.close()
    if transport is not None:
        transport.close()
    return sent, elapsed, messages


def celery_run(
    app: Any, events: Events, seconds: float, batched: bool, dispatchers: int = 1
) -> tuple[int, float, int]:
    with app.connection_for_write() as connection:
        senders = [
            app.events.Dispatcher(
                connection,
                hostname=f"w{index + 1}@evbench",
                buffer_group={"task"} if batched else None,
                buffer_limit=24,
            )
            for index in range(dispatchers)
        ]
        for dispatcher in senders:
            dispatcher.send("bench-warmup")
        sends = [dispatcher.send for dispatcher in senders]
        timer = Timer(seconds)
        sent = 0
        start = time.perf_counter()
        for type_, fields in events:
            sends[sent % dispatchers](type_, **fields)
            sent += 1
            if timer.expired():
                break
        for dispatcher in senders:
            dispatcher.flush()
        elapsed = time.perf_counter() - start
        for dispatcher in senders:
            dispatcher.close()
    # Celery keeps no count of messages: one per event, or one per batch of up to 24.
    messages = sent if not batched else -1
    return sent, elapsed, messages


def dispatch_section(settings: Settings) -> list[Row]:
    events = sendable(make_events(tasks_for_events(settings.dispatch_events)))
    events = events[: settings.dispatch_events]
    rows: list[Row] = []
    for broker, url in (("Redis", settings.redis_url), ("RabbitMQ", settings.amqp_url)):
        exchange = exchange_name()
        counter: RedisCounter | AMQPCounter = (
            RedisCounter(url, exchange) if broker == "Redis" else AMQPCounter(url, exchange)
        )
        app = celery_app(url, exchange)
        shapes = [(False, 1), (True, 1)]
        if broker == "RabbitMQ":
            shapes.append((True, SHARED_DISPATCHERS))
        try:
            for batched, dispatchers in shapes:
                rows.extend(
                    _dispatch_mode(
                        settings, broker, url, exchange, app, counter, events, batched, dispatchers
                    )
                )
        finally:
            counter.close()
    return rows


#: Dispatchers sharing one transport in the "several hostnames, one process" shape.
SHARED_DISPATCHERS = 4


def _dispatch_mode(
    settings: Settings,
    broker: str,
    url: str,
    exchange: str,
    app: Any,
    counter: RedisCounter | AMQPCounter,
    events: Events,
    batched: bool,
    dispatchers: int,
) -> list[Row]:
    mode = "batched (buffer_group={'task'}, limit 24)" if batched else "unbatched send()"
    if dispatchers > 1:
        mode += f", {dispatchers} dispatchers sharing one transport"
    arrived: dict[str, list[tuple[int, int, int]]] = {}
    seconds = settings.dispatch_seconds

    def contender(name: str, run: Callable[[], tuple[int, float, int]]) -> Callable[[], float]:
        def measured() -> float:
            sent, elapsed, messages = run()
            got_messages, got_events = counter.take(messages if messages > 0 else 1)
            arrived.setdefault(name, []).append((sent, got_events, got_messages))
            return sent / elapsed

        return measured

    def evcore(variant_url: str, background: bool) -> Callable[[], tuple[int, float, int]]:
        return lambda: evcore_run(
            variant_url, exchange, events, seconds, batched, background, dispatchers
        )

    contenders = [
        ("evcore background", contender("evcore background", evcore(url, True))),
        (
            "celery",
            contender("celery", lambda: celery_run(app, events, seconds, batched, dispatchers)),
        ),
        ("evcore inline", contender("evcore inline", evcore(url, False))),
    ]
    log(f"dispatch over {broker}, {mode}: {settings.reps} repetitions")
    results = alternate(settings.reps, contenders)
    section = "1. Dispatch throughput"
    rows = []
    for variant, _ in contenders:
        if variant == "celery":
            continue
        headline = variant == "evcore background"
        row = Row(
            section,
            f"{broker}, {mode}, evcore {_variant_label(variant)}",
            "events/s",
            results[variant],
            results["celery"],
            target=_dispatch_target(broker, batched) if headline else None,
        )
        for name in (variant, "celery"):
            sent = sum(item[0] for item in arrived[name])
            got = sum(item[1] for item in arrived[name])
            messages = sum(item[2] for item in arrived[name])
            row.notes.append(
                f"{name.split()[0]}: {got}/{sent} events arrived in {messages} messages"
            )
        rows.append(row)
    return rows


def _variant_label(variant: str) -> str:
    return "background=True" if variant == "evcore background" else "inline (background=False)"


def _dispatch_target(broker: str, batched: bool) -> str:
    return f"dispatch-{broker.lower()}-{'batched' if batched else 'unbatched'}"


# -- end to end ----------------------------------------------------------------------------


def e2e_run(settings: Settings, url: str, system: str, batched: bool, seed: int) -> dict[str, Any]:
    """One dispatcher process -> broker -> one Receiver + State process."""
    from evcore import Dispatcher

    exchange = exchange_name()
    common = {"url": url, "exchange": exchange, "system": system}
    receiver = Child("e2e-receive", {**common, "idle": 3.0, "seconds": settings.e2e_seconds + 30})
    dispatcher = Child(
        "e2e-dispatch",
        {
            **common,
            "events": settings.e2e_events,
            "seconds": settings.e2e_seconds,
            "seed": seed,
            "batched": batched,
            "background": True,
        },
    )
    try:
        # Ping through the broker until the receiver sees a ping: then it is subscribed.
        with Dispatcher(url, hostname="ping@evbench", exchange=exchange) as pinger:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pinger.send("bench-ping")
                if receiver.poll_line(0.05) is not None:
                    break
            else:
                raise RuntimeError("the receiver never saw a ping")
        dispatcher.expect(60)
        dispatcher.send({"cmd": "go"})
        sent = dispatcher.expect(settings.e2e_seconds + 60)
        receiver.send({"expected": sent["sent"]})
        got = receiver.expect(settings.e2e_seconds + 60)
    finally:
        dispatcher.close()
        receiver.close()
        _drop_exchange(url, exchange)
    seconds = max(got["last"] - sent["start"], 1e-9)
    return {
        "sent": sent["sent"],
        "received": got["count"],
        "rate": got["count"] / seconds,
        "send_rate": sent["sent"] / max(sent["end"] - sent["start"], 1e-9),
        "lost_seen": got["lost_seen"],
    }


def _drop_exchange(url: str, exchange: str) -> None:
    if not url.startswith(("amqp", "pyamqp")):
        return
    import pika

    connection = pika.BlockingConnection(pika_parameters(url.partition("?")[0]))
    try:
        connection.channel().exchange_delete(exchange)
    finally:
        connection.close()


def e2e_section(settings: Settings) -> list[Row]:
    rows = []
    reps = max(1, min(settings.reps, 3))
    for broker, url in (("Redis", settings.redis_url), ("RabbitMQ", settings.amqp_url)):
        # (label, system, url): on RabbitMQ evcore also runs on the adapter's fast path.
        contenders = [("evcore", "evcore", url), ("celery", "celery", url)]
        if broker == "RabbitMQ":
            contenders.append(("evcore fast path", "evcore", with_fast_path(url)))
        for batched in (False, True):
            mode = "batched" if batched else "unbatched"
            log(f"end to end over {broker}, {mode}: {reps} repetitions")
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in contenders}
            for rep in range(reps):
                order = contenders if rep % 2 == 0 else contenders[::-1]
                for label, system, system_url in order:
                    runs[label].append(e2e_run(settings, system_url, system, batched, seed=rep))
            for label, _, _ in contenders:
                if label == "celery":
                    continue
                row = Row(
                    "2. End to end (dispatcher process -> broker -> Receiver + State process)",
                    f"{broker}, {mode}" + (", evcore fast_path=true" if label != "evcore" else ""),
                    "events/s",
                    [run["rate"] for run in runs[label]],
                    [run["rate"] for run in runs["celery"]],
                    target=f"e2e-{broker.lower()}" if not batched and label == "evcore" else None,
                )
                for name in (label, "celery"):
                    sent = sum(run["sent"] for run in runs[name])
                    received = sum(run["received"] for run in runs[name])
                    note = f"{name}: {received}/{sent} events processed, {sent - received} lost"
                    if name != "celery":
                        seen = sum(run["lost_seen"] or 0 for run in runs[name])
                        note += f" (Receiver.stats.lost_events: {seen})"
                    rows_rate = [run["send_rate"] for run in runs[name]]
                    note += f"; its sender alone: median {statistics.median(rows_rate):,.0f} ev/s"
                    row.notes.append(note)
                rows.append(row)
    return rows
