"""Sections 3 and 4: State and the receive path without a broker; memory per task.

Rates here are events per CPU second of this process (``time.process_time``), so other
load on the machine matters less; each repetition starts from a fresh State.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from benchmarks.common import Child, Row, Settings, alternate, log
from benchmarks.workload import make_events

# -- State.event ---------------------------------------------------------------------------


def decoded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as a receiver hands them to State: with ``local_received``."""
    return [{**event, "local_received": event["timestamp"] + 0.002} for event in events]


def state_rate(factory: Callable[[], Any], events: list[dict[str, Any]]) -> float:
    copies = [dict(event) for event in events]  # Celery's State adds to the dicts it gets
    state = factory()
    handle = state.event
    gc.collect()
    start = time.process_time()
    for event in copies:
        handle(event)
    return len(copies) / (time.process_time() - start)


def state_section(settings: Settings) -> list[Row]:
    from celery.events.state import State as CeleryState

    from evcore.state import State

    tasks = settings.state_tasks
    rows = []
    section = "3. State and the receive path, in process"
    for label, events, limit in (
        (f"State.event, {tasks} tasks all retained", decoded(make_events(tasks)), tasks * 2),
        (
            f"State.event, steady state: {2 * tasks} tasks, max_tasks_in_memory={tasks // 2}",
            decoded(make_events(2 * tasks, seed=8)),
            tasks // 2,
        ),
    ):
        log(f"{label}: {len(events)} events, {settings.reps} repetitions")
        results = alternate(
            settings.reps,
            [
                (
                    "evcore",
                    lambda e=events, n=limit: state_rate(lambda: State(max_tasks_in_memory=n), e),
                ),
                (
                    "celery",
                    lambda e=events, n=limit: state_rate(
                        lambda: CeleryState(max_tasks_in_memory=n), e
                    ),
                ),
            ],
        )
        rows.append(
            Row(
                section,
                label,
                "events/s (CPU)",
                results["evcore"],
                results["celery"],
                target="state" if "all retained" in label else None,
            )
        )
    rows.append(receive_path_row(settings))
    return rows


# -- decode + receive + State --------------------------------------------------------------


def redis_payloads(events: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Each event as kombu's Redis envelope, as a Celery worker publishes it unbatched."""
    from evcore.transport import OutgoingMessage
    from evcore_adapter_helpers.envelope import pack

    payloads = []
    for event in events:
        key = event["type"].replace("-", ".")
        body = json.dumps(event).encode()
        message = OutgoingMessage(
            key, body, {"hostname": event["hostname"]}, "application/json", "utf-8", 1
        )
        payloads.append((key, pack("celeryev", message)))
    return payloads


class _ReplaySubscription:
    """Hands out pre-recorded Redis payloads, decoding them as the Redis subscription does."""

    def __init__(self, payloads: Sequence[tuple[str, bytes]], chunk: int = 64) -> None:
        self._chunks: Iterator[Sequence[tuple[str, bytes]]] = iter(
            [payloads[i : i + chunk] for i in range(0, len(payloads), chunk)]
        )

    def receive(self, timeout: float | None = None) -> list[Any]:
        from evcore_adapter_helpers.envelope import unpack

        chunk = next(self._chunks, ())
        return [unpack(payload, key) for key, payload in chunk]

    def close(self) -> None:
        pass


class _ReplayTransport:
    """A broker-less transport: what it 'receives' is a recorded stream."""

    driver_type = "redis"

    def __init__(self, payloads: Sequence[tuple[str, bytes]]) -> None:
        from evcore.transport import FANOUT, Capabilities

        self.capabilities = Capabilities(
            broadcast=True,
            exact_routing=False,
            exchange_types=frozenset({FANOUT}),
            queue_options=frozenset(),
            persistent=False,
        )
        self._payloads = payloads

    def publish(self, exchange: Any, messages: Any) -> None:
        raise NotImplementedError

    def subscribe(self, exchange: Any, binding_key: str, queue: Any) -> _ReplaySubscription:
        return _ReplaySubscription(self._payloads)

    def close(self) -> None:
        pass


def evcore_receive_rate(payloads: Sequence[tuple[str, bytes]]) -> float:
    from evcore import Receiver
    from evcore.state import State

    state = State(max_tasks_in_memory=len(payloads))
    receiver = Receiver(_ReplayTransport(payloads), handlers={"*": state.event})
    gc.collect()
    start = time.process_time()
    handled = receiver.capture(limit=len(payloads), timeout=60)
    elapsed = time.process_time() - start
    assert handled == len(payloads), (handled, len(payloads))
    return handled / elapsed


def celery_receive_rate(payloads: Sequence[tuple[str, bytes]]) -> float:
    """kombu's Redis delivery path minus the socket: envelope JSON, ``Message``, the
    consumer's accept/decode, then Celery's ``EventReceiver`` and ``State``."""
    from functools import partial

    from celery import Celery
    from kombu import Connection, Consumer
    from kombu.utils.json import loads

    app = Celery("evbench", set_as_current=False)
    state = app.events.State(max_tasks_in_memory=len(payloads))
    connection = Connection("memory://")
    channel = connection.channel()
    receiver = app.events.Receiver(channel, handlers={"*": state.event})
    consumer = receiver.get_consumers(partial(Consumer, channel), channel)[0]
    deliver = consumer._receive_callback
    make_message = channel.Message
    gc.collect()
    start = time.process_time()
    for _key, payload in payloads:
        deliver(make_message(loads(payload), channel=channel))
    elapsed = time.process_time() - start
    count = len(state.tasks)
    connection.release()
    assert count, "Celery's State saw no task"
    return len(payloads) / elapsed


def receive_path_row(settings: Settings) -> Row:
    tasks = settings.state_tasks

    def fresh() -> list[tuple[str, bytes]]:
        # Made just before each run, so timestamps are current when received.
        return redis_payloads(make_events(tasks))

    log(f"decode + receive + State: {tasks} tasks' Redis payloads, {settings.reps} repetitions")
    results = alternate(
        settings.reps,
        [
            ("evcore", lambda: evcore_receive_rate(fresh())),
            ("celery", lambda: celery_receive_rate(fresh())),
        ],
    )
    return Row(
        "3. State and the receive path, in process",
        "decode + receive + State (Redis envelopes, no socket)",
        "events/s (CPU)",
        results["evcore"],
        results["celery"],
        target="receive",
    )


# -- memory --------------------------------------------------------------------------------


def memory_section(settings: Settings) -> list[Row]:
    rows = []
    for tasks in settings.memory_tasks:
        for how in ("tracemalloc", "RSS"):
            log(f"memory per retained task, {tasks} tasks, {how}")
            values: dict[str, float] = {}
            for system in ("evcore", "celery"):
                child = Child("memory", {"system": system, "tasks": tasks, "how": how.lower()})
                try:
                    values[system] = child.expect(600)["per_task"]
                finally:
                    child.close()
            rows.append(
                Row(
                    "4. Memory retained per task in State",
                    f"{tasks:,} tasks, {how}",
                    "bytes/task",
                    [values["evcore"]],
                    [values["celery"]],
                    lower_is_better=True,
                    target="memory" if how == "tracemalloc" else None,
                )
            )
    return rows


# -- json ----------------------------------------------------------------------------------


def json_rows(settings: Settings) -> list[Row]:
    import orjson

    events = make_events(settings.state_tasks)
    bodies = [json.dumps(event).encode() for event in events]

    def rate(function: Callable[[Any], Any], items: Sequence[Any]) -> float:
        start = time.process_time()
        for item in items:
            function(item)
        return len(items) / (time.process_time() - start)

    rows = []
    for label, function, items in (
        ("json.dumps of the events", json.dumps, events),
        ("json.loads of the events", json.loads, bodies),
        ("orjson.dumps of the events", orjson.dumps, events),
        ("orjson.loads of the events", orjson.loads, bodies),
    ):
        values = [rate(function, items) for _ in range(settings.reps)]
        rows.append(Row("5. Raw limits on this machine", label, "events/s (CPU)", values))
    return rows
