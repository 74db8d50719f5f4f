"""Interoperability with the real thing: Celery 5.7 and kombu 5.7 over a real Redis.

- Celery's EventDispatcher -> evcore Receiver (every standard event type, ``task.multi``);
- evcore Dispatcher -> Celery's EventReceiver, and Celery's State over what it received;
- the captured Celery messages in ``tests/data/wire-samples/redis.jsonl`` replayed as-is.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _net import wait_for
from _redis_support import admin, with_db
from celery import Celery
from celery.events.state import State as CeleryState
from celery.utils.time import utcoffset

from evcore import Dispatcher, Receiver

pytestmark = pytest.mark.redis

#: Real Celery 5.7 messages kept in the repository (tests/data/wire-samples/README.md).
WIRE_SAMPLES = Path(__file__).resolve().parents[1] / "tests/data/wire-samples/redis.jsonl"

T_OK, T_FAIL, T_RETRY, T_REVOKED = (str(uuid.uuid4()) for _ in range(4))
TRACEBACK = (
    'Traceback (most recent call last):\n  File "/srv/app/tasks.py", line 3\nValueError: x\n'
)
WORKER = {
    "freq": 2.0,
    "active": 0,
    "processed": 0,
    "loadavg": [0.12, 0.08, 0.01],
    "sw_ident": "py-celery",
    "sw_ver": "5.7.0",
    "sw_sys": "Linux",
}
BUSY = {**WORKER, "active": 1, "processed": 3}
SENT = {
    "uuid": T_OK,
    "root_id": T_OK,
    "parent_id": None,
    "name": "proj.add",
    "args": "(2, 2)",
    "kwargs": "{'é': '✓'}",
    "retries": 0,
    "eta": None,
    "expires": None,
    "queue": "celery",
    "exchange": "",
    "routing_key": "celery",
}


def received(task: str, retries: int = 0) -> dict[str, Any]:
    return {
        "uuid": task,
        "name": "proj.add",
        "args": "(2, 2)",
        "kwargs": "{}",
        "root_id": task,
        "parent_id": None,
        "retries": retries,
        "eta": None,
        "expires": None,
    }


#: (sender, type, fields), in publishing order. "worker" sends task events in batches
#: (buffer_group task), flushed at each "flush"; "client" sends each event on its own.
SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    ("worker", "worker-online", WORKER),
    ("client", "task-sent", SENT),
    ("worker", "task-received", received(T_OK)),
    ("worker", "task-started", {"uuid": T_OK}),
    ("client", "task-progress", {"uuid": T_OK, "current": 1, "total": 2}),
    ("worker", "task-succeeded", {"uuid": T_OK, "result": "4", "runtime": 0.0125}),
    ("worker", "flush", {}),
    ("worker", "task-received", received(T_FAIL)),
    ("worker", "task-started", {"uuid": T_FAIL}),
    (
        "worker",
        "task-failed",
        {"uuid": T_FAIL, "exception": "ValueError('x')", "traceback": TRACEBACK},
    ),
    ("worker", "task-rejected", {"uuid": T_FAIL, "requeue": False}),
    ("worker", "flush", {}),
    ("worker", "task-received", received(T_RETRY)),
    ("worker", "task-retried", {"uuid": T_RETRY, "exception": "Retry()", "traceback": TRACEBACK}),
    ("worker", "task-received", received(T_RETRY, retries=1)),
    ("worker", "flush", {}),
    (
        "worker",
        "task-revoked",
        {"uuid": T_REVOKED, "terminated": True, "signum": 15, "expired": False},
    ),
    ("worker", "flush", {}),
    ("worker", "worker-heartbeat", BUSY),
    ("client", "custom-phase", {"phase": "done"}),
    ("worker", "worker-offline", BUSY),
]


def expected_order() -> list[tuple[str, dict[str, Any]]]:
    """The events in the order a subscriber sees them: a batch when it is flushed."""
    out: list[tuple[str, dict[str, Any]]] = []
    pending: list[tuple[str, dict[str, Any]]] = []
    for sender, type_, fields in SCRIPT:
        if type_ == "flush":
            out.extend(pending)
            pending.clear()
        elif sender == "worker" and type_.startswith("task-"):
            pending.append((type_, fields))
        else:
            out.append((type_, fields))
    return out + pending


STANDARD_TYPES = {
    "worker-online",
    "worker-heartbeat",
    "worker-offline",
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-rejected",
    "task-revoked",
    "task-retried",
}


def test_script_covers_every_standard_event_type() -> None:
    assert {type_ for _, type_, _ in SCRIPT} >= STANDARD_TYPES


@pytest.fixture
def url(redis_url: str) -> str:
    return with_db(redis_url)


@pytest.fixture
def celery_app(url: str, exchange_name: str) -> Iterator[Celery]:
    app = Celery("evcore-interop", broker=url, set_as_current=False)
    app.conf.event_exchange = exchange_name
    app.conf.broker_connection_retry_on_startup = False
    yield app
    app.close()


@pytest.fixture
def channels(url: str, exchange_name: str) -> Iterator[list[str]]:
    """Channel names of the messages published on the test's exchange, as Redis saw them."""
    client = admin(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"/9.{exchange_name}/*")
    seen: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "pmessage":
                seen.append(message["channel"].decode())

    assert wait_for(lambda: bool(pubsub.subscribed), 5)
    thread = threading.Thread(target=listen)
    thread.start()
    yield seen
    stop.set()
    thread.join(5)
    pubsub.close()
    client.close()


def without_receive_side(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in {"local_received", "clock", "timestamp"}}


# -- Celery -> evcore ---------------------------------------------------------------------


def test_celery_dispatcher_to_evcore_receiver(
    celery_app: Celery, url: str, exchange_name: str, channels: list[str]
) -> None:
    receiver = Receiver(url, exchange=exchange_name)
    with celery_app.connection_for_write() as connection:
        worker = celery_app.events.Dispatcher(
            connection, hostname="w1@celerytest", buffer_group={"task"}
        )
        client = celery_app.events.Dispatcher(connection, hostname="gen42@celerytest")
        for sender, type_, fields in SCRIPT:
            dispatcher = worker if sender == "worker" else client
            if type_ == "flush":
                dispatcher.flush()
            else:
                dispatcher.send(type_, **copy.deepcopy(fields))
        worker.flush()
        worker.close()
        client.close()
    expected = expected_order()
    events = list(receiver.itercapture(limit=len(expected), timeout=20))
    receiver.close()

    assert [e["type"] for e in events] == [type_ for type_, _ in expected]
    offset = utcoffset()
    for event, (type_, fields) in zip(events, expected, strict=True):
        sender = (
            "gen42@celerytest"
            if type_ in {"task-sent", "task-progress", "custom-phase"}
            else "w1@celerytest"
        )
        assert without_receive_side(event) == {
            "hostname": sender,
            "utcoffset": offset,
            "pid": os.getpid(),
            **fields,
            "type": type_,
        }
        assert list(event) == [
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            *fields,
            "timestamp",
            "type",
            "local_received",
        ]
        assert isinstance(event["clock"], int)
        assert isinstance(event["timestamp"], float)
    assert receiver.stats.rejected == {}
    assert receiver.stats.messages < receiver.stats.events  # batches were un-batched
    assert wait_for(lambda: len(channels) == receiver.stats.messages, 5)
    assert f"/9.{exchange_name}/task.multi" in channels
    assert f"/9.{exchange_name}/worker.online" in channels
    assert f"/9.{exchange_name}/task.sent" in channels


# -- evcore -> Celery ---------------------------------------------------------------------


class CeleryMonitor:
    """Celery's EventReceiver consuming in a thread, feeding Celery's State."""

    def __init__(self, app: Celery) -> None:
        self.state = CeleryState()
        self.events: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self._on_event})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["type"] != "evtest-probe":
            self.events.append(copy.deepcopy(event))
            self.state.event(event)
        else:
            self.events.append({"type": "evtest-probe"})

    def _run(self) -> None:
        try:
            self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()


@pytest.fixture
def monitor(celery_app: Celery) -> Iterator[CeleryMonitor]:
    monitor = CeleryMonitor(celery_app)
    yield monitor
    monitor.stop()


def wait_until_celery_listens(monitor: CeleryMonitor, dispatcher: Dispatcher) -> None:
    """Publish probes until Celery's receiver has subscribed and sees one."""

    def probe_seen() -> bool:
        dispatcher.publish("evtest-probe", {})
        return wait_for(lambda: bool(monitor.events), timeout=0.2)

    assert wait_for(probe_seen, timeout=15, step=0), "Celery's receiver never subscribed"
    wait_for(lambda: False, timeout=0.3)  # let probes still in flight arrive
    monitor.events.clear()


def test_evcore_dispatcher_to_celery_receiver_and_state(
    monitor: CeleryMonitor,
    url: str,
    exchange_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Dispatcher(url, hostname="w1@evcore", exchange=exchange_name, buffer_group=["task"])
    client = Dispatcher(url, hostname="gen42@evcore", exchange=exchange_name, enabled=False)
    wait_until_celery_listens(monitor, client)
    caplog.set_level(logging.WARNING)

    sent: list[dict[str, Any]] = []
    batched: list[dict[str, Any]] = []
    for sender, type_, fields in SCRIPT:
        if type_ == "flush":
            worker.flush()
            sent.extend(batched)
            batched.clear()
        elif sender == "worker":
            event = worker.send(type_, **copy.deepcopy(fields))
            assert event is not None
            (batched if type_.startswith("task-") else sent).append(copy.deepcopy(event))
        else:
            event = client.publish(type_, copy.deepcopy(fields))
            assert event is not None
            sent.append(copy.deepcopy(event))
    worker.flush()
    sent.extend(batched)
    worker.close()
    client.close()

    assert wait_for(lambda: len(monitor.events) >= len(sent), 20), (
        f"Celery received {len(monitor.events)} of {len(sent)} events"
    )
    assert monitor.errors == []
    problems = [r for r in caplog.records if r.name.startswith(("kombu", "celery"))]
    assert problems == [], "Celery or kombu complained about evcore's messages"
    assert [e["type"] for e in monitor.events] == [e["type"] for e in sent]
    for got, event in zip(monitor.events, sent, strict=True):
        assert without_receive_side(got) == without_receive_side(event)
        assert isinstance(got["clock"], int)

    # Celery's State over the wire agrees with Celery's State fed the sent events directly.
    direct = CeleryState()
    for event in sent:
        direct.event({**copy.deepcopy(event), "local_received": event["timestamp"]})
    assert summary(monitor.state) == summary(direct)
    tasks = monitor.state.tasks
    assert (tasks[T_OK].state, tasks[T_OK].result, tasks[T_OK].name) == ("SUCCESS", "4", "proj.add")
    assert tasks[T_FAIL].state == "FAILURE"  # REJECTED ranks below FAILURE
    assert tasks[T_RETRY].state == "RECEIVED" and tasks[T_RETRY].retries == 1
    assert tasks[T_REVOKED].state == "REVOKED"
    assert monitor.state.workers["w1@evcore"].processed == 3
    compare_with_evcore_state(sent, monitor.state)


def summary(state: CeleryState) -> dict[str, Any]:
    tasks = {
        task_id: (
            task.state,
            task.name,
            task.result,
            task.exception,
            task.retries,
            task.worker and task.worker.hostname,
        )
        for task_id, task in state.tasks.items()
    }
    workers = {
        name: (w.freq, w.active, w.processed, w.sw_ident, w.sw_ver, len(w.heartbeats))
        for name, w in state.workers.items()
    }
    return {"tasks": tasks, "workers": workers, "event_count": state.event_count}


def compare_with_evcore_state(sent: list[dict[str, Any]], celery_state: CeleryState) -> None:
    """When evcore's State exists, it reaches the same task states as Celery's."""
    try:
        from evcore import State  # type: ignore[attr-defined]
    except ImportError:
        return
    state = State()
    for event in sent:
        state.event({**copy.deepcopy(event), "local_received": event["timestamp"]})
    for task_id, task in celery_state.tasks.items():
        assert state.tasks[task_id].state == task.state


# -- captured Celery messages -----------------------------------------------------------


def wire_samples() -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in WIRE_SAMPLES.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["channel"].startswith("/5.celeryev/")]


def test_wire_samples_replayed_decode_to_the_expected_events(redis_url: str) -> None:
    # The samples name the exchange celeryev; a key prefix of this test's own keeps
    # parallel runs apart without touching the payloads.
    keyprefix = f"evtest-{uuid.uuid4().hex[:8]}:"
    url = f"{with_db(redis_url)}?global_keyprefix={keyprefix}"
    samples = wire_samples()
    expected: list[dict[str, Any]] = []
    for line in samples:
        decoded = line["decoded"]
        expected.extend(decoded if isinstance(decoded, list) else [decoded])

    receiver = Receiver(url)
    client = admin(with_db(redis_url))
    for line in samples:
        channel = keyprefix + "/9." + line["channel"].removeprefix("/5.")
        assert client.publish(channel, line["payload"].encode("utf-8")) == 1
    client.close()
    events = list(receiver.itercapture(limit=len(expected), timeout=20))
    receiver.close()

    assert len(samples) == 39
    assert receiver.stats.rejected == {}
    assert len(events) == len(expected)
    for got, want in zip(events, expected, strict=True):
        assert got.pop("local_received") > 0
        if want["type"] == "task-sent":  # the receiver's clock replaces a client's
            assert isinstance(got.pop("clock"), int)
            assert got == {k: v for k, v in want.items() if k != "clock"}
        else:
            assert got == want


def test_wire_sample_payloads_match_what_evcore_publishes(url: str, exchange_name: str) -> None:
    """evcore's envelope has the samples' shape: the same keys, in the same order."""
    sample = json.loads(wire_samples()[0]["payload"])
    client = admin(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"/9.{exchange_name}/*")
    assert wait_for(lambda: bool(pubsub.subscribed), 5)
    with Dispatcher(url, hostname="w1@evcore", exchange=exchange_name) as dispatcher:
        dispatcher.send("worker-online", **WORKER)
    raw: list[dict[str, Any]] = []
    assert wait_for(lambda: bool(append_pmessage(pubsub, raw)) or bool(raw), 5)
    pubsub.close()
    client.close()
    ours = json.loads(raw[0]["data"])
    assert list(ours) == list(sample)
    assert list(ours["properties"]) == list(sample["properties"])
    assert list(ours["properties"]["delivery_info"]) == list(sample["properties"]["delivery_info"])
    assert {k: v for k, v in ours.items() if k not in {"body", "properties", "headers"}} == {
        k: v for k, v in sample.items() if k not in {"body", "properties", "headers"}
    }


def append_pmessage(pubsub: redis.client.PubSub, into: list[dict[str, Any]]) -> None:
    message = pubsub.get_message(timeout=0.1)
    if message is not None and message["type"] == "pmessage":
        into.append(message)
