"""Interoperability with the real Celery 5.7 over RabbitMQ, both ways."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from _amqp_support import delete_exchanges, probe
from _net import wait_for
from celery import Celery
from celery.events.state import State as CeleryState

from evcore import Dispatcher, Receiver
from evcore_amqp import AMQPTransport

pytestmark = pytest.mark.amqp

TASK_ID, FAILED_ID, REVOKED_ID = (str(uuid.uuid4()) for _ in range(3))

#: Every standard event type, in the order a worker and a client send them.
WORKER_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("worker-online", {"freq": 2.0, "sw_ident": "py-celery", "sw_ver": "5.7.0",
                       "sw_sys": "Linux"}),
    ("worker-heartbeat", {"freq": 2.0, "active": 1, "processed": 0,
                          "loadavg": [0.1, 0.2, 0.3]}),
]
CLIENT_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("task-sent", {"uuid": TASK_ID, "name": "app.add", "args": "(2, 2)", "kwargs": "{}",
                   "retries": 0, "eta": None, "expires": None, "queue": "celery",
                   "exchange": "", "routing_key": "celery", "root_id": TASK_ID,
                   "parent_id": None}),
]
TASK_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("task-received", {"uuid": TASK_ID, "name": "app.add", "args": "(2, 2)", "kwargs": "{}",
                       "root_id": TASK_ID, "parent_id": None, "retries": 0, "eta": None,
                       "expires": None}),
    ("task-started", {"uuid": TASK_ID}),
    ("task-succeeded", {"uuid": TASK_ID, "result": "4", "runtime": 0.01}),
    ("task-received", {"uuid": FAILED_ID, "name": "app.fail", "args": "()", "kwargs": "{}",
                       "root_id": FAILED_ID, "parent_id": None, "retries": 0, "eta": None,
                       "expires": None}),
    ("task-started", {"uuid": FAILED_ID}),
    ("task-retried", {"uuid": FAILED_ID, "exception": "Retry()", "traceback": "tb"}),
    ("task-failed", {"uuid": FAILED_ID, "exception": "ValueError('x')", "traceback": "tb"}),
    ("task-rejected", {"uuid": FAILED_ID, "requeue": False}),
    ("task-revoked", {"uuid": REVOKED_ID, "terminated": False, "signum": None,
                      "expired": True}),
]
TAIL_EVENTS: list[tuple[str, dict[str, Any]]] = [("worker-offline", {})]
ALL_EVENTS = WORKER_EVENTS + CLIENT_EVENTS + TASK_EVENTS + TAIL_EVENTS


@pytest.fixture
def app(amqp_url: str, exchange_name: str) -> Iterator[Celery]:
    app = Celery("evcore-interop", broker=amqp_url, set_as_current=False)
    app.conf.event_exchange = exchange_name
    app.conf.broker_connection_retry_on_startup = False
    yield app
    app.close()
    delete_exchanges(amqp_url, {exchange_name})


def test_celery_dispatcher_to_evcore_receiver(
    app: Celery, amqp_url: str, exchange_name: str
) -> None:
    """Celery's EventDispatcher (task events batched as ``task.multi``) -> evcore Receiver."""
    seen: list[dict[str, Any]] = []
    with Receiver(AMQPTransport.from_url(amqp_url), handlers={"*": seen.append},
                  exchange=exchange_name) as receiver, app.connection_for_write() as conn:
        worker = app.events.Dispatcher(conn, hostname="w1@interop", buffer_group={"task"})
        client = app.events.Dispatcher(conn, hostname="gen1@interop")
        for type_, fields in WORKER_EVENTS:
            worker.send(type_, **fields)
        for type_, fields in CLIENT_EVENTS:
            client.send(type_, **fields)
        for type_, fields in TASK_EVENTS:
            worker.send(type_, **fields)
        worker.flush()
        for type_, fields in TAIL_EVENTS:
            worker.send(type_, **fields)
        worker.close()
        client.close()

        handled = receiver.capture(limit=len(ALL_EVENTS), timeout=20.0)
        receiver.transport.close()

    assert handled == len(ALL_EVENTS)
    assert [e["type"] for e in seen] == [t for t, _ in ALL_EVENTS]
    for event, (_, fields) in zip(seen, ALL_EVENTS, strict=True):
        for key, value in fields.items():
            assert event[key] == value, (event["type"], key)
    hostnames = {e["type"]: e["hostname"] for e in seen}
    assert hostnames["task-sent"] == "gen1@interop"
    assert hostnames["task-succeeded"] == "w1@interop"
    assert receiver.stats.events == len(ALL_EVENTS)
    # the nine task events arrived as batches, not one message each
    assert receiver.stats.messages < len(ALL_EVENTS)


def _celery_queue_ready(amqp_url: str, name: str) -> bool:
    connection = probe(amqp_url)
    try:
        connection.channel().queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 405  # exclusive to Celery's connection: it exists
    finally:
        if connection.is_open:
            connection.close()
    return True


class CeleryConsumer:
    """Celery's EventReceiver feeding Celery's State, in a thread of its own."""

    def __init__(self, app: Celery, expected: int) -> None:
        self.state = CeleryState()
        self.events: list[dict[str, Any]] = []
        self.expected = expected
        self.node_id = str(uuid.uuid4())
        self.error: BaseException | None = None
        self._connection = app.connection_for_read()
        self.receiver = app.events.Receiver(
            self._connection, handlers={"*": self._on_event}, node_id=self.node_id
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_event(self, event: dict[str, Any]) -> None:
        self.state.event(event)
        self.events.append(event)
        if len(self.events) >= self.expected:
            self.receiver.should_stop = True

    def _run(self) -> None:
        try:
            self.receiver.capture(limit=None, timeout=30, wakeup=False)
        except BaseException as exc:  # reported by the test, in its own thread
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._connection.release()


def test_evcore_dispatcher_to_celery_receiver_and_state(
    app: Celery, amqp_url: str, exchange_name: str
) -> None:
    """evcore's Dispatcher (task events batched) -> Celery's EventReceiver, and Celery's State
    agrees with evcore's State (when available) and with what was sent."""
    consumer = CeleryConsumer(app, expected=len(ALL_EVENTS))
    assert wait_for(
        lambda: _celery_queue_ready(amqp_url, f"celeryev.{consumer.node_id}"), 15.0, 0.1
    ), "Celery's receiver never declared its queue"

    transport = AMQPTransport.from_url(amqp_url)
    worker = Dispatcher(transport, hostname="w1@interop", buffer_group={"task"},
                        exchange=exchange_name)
    client = Dispatcher(transport, hostname="gen1@interop", exchange=exchange_name)
    for type_, fields in WORKER_EVENTS:
        worker.send(type_, **fields)
    for type_, fields in CLIENT_EVENTS:
        client.send(type_, **fields)
    for type_, fields in TASK_EVENTS:
        worker.send(type_, **fields)
    worker.flush()
    for type_, fields in TAIL_EVENTS:
        worker.send(type_, **fields)
    sent_messages = transport.stats.published
    worker.close()
    client.close()
    transport.close()

    consumer.join(40)
    assert consumer.error is None, f"Celery's receiver failed: {consumer.error!r}"
    assert [e["type"] for e in consumer.events] == [t for t, _ in ALL_EVENTS]
    assert sent_messages < len(ALL_EVENTS)  # the task events went as task.multi batches

    state = consumer.state
    assert state.event_count == len(ALL_EVENTS)
    assert len(state.tasks) == 3
    assert state.task_count == 2  # Celery counts task-received events
    done, failed, revoked = state.tasks[TASK_ID], state.tasks[FAILED_ID], state.tasks[REVOKED_ID]
    assert (done.state, done.name, done.result, done.args) == ("SUCCESS", "app.add", "4", "(2, 2)")
    assert done.worker is not None and done.worker.hostname == "w1@interop"
    assert done.client == "gen1@interop"
    assert (failed.state, failed.exception) == ("FAILURE", "ValueError('x')")
    assert revoked.state == "REVOKED"
    worker_state = state.workers["w1@interop"]
    assert worker_state.freq == 2.0
    assert worker_state.sw_ident == "py-celery"
    assert not worker_state.alive  # worker-offline came last

    _agree_with_evcore_state(consumer.events, state)


def _agree_with_evcore_state(events: list[dict[str, Any]], celery_state: CeleryState) -> None:
    """Feed evcore's State the same events, when it exists yet, and compare the results."""
    try:
        from evcore import State as EvcoreState  # type: ignore[attr-defined]
    except ImportError:
        return  # evcore.State is not written yet; Celery's State was checked above
    ours = EvcoreState()
    for event in events:
        ours.event(dict(event))
    for task_id, theirs in celery_state.tasks.items():
        task = ours.tasks[task_id]
        for field in ("state", "name", "result", "exception", "args", "retries"):
            assert getattr(task, field) == getattr(theirs, field), (task_id, field)
    for hostname, theirs in celery_state.workers.items():
        worker = ours.workers[hostname]
        assert (worker.freq, worker.alive) == (theirs.freq, theirs.alive), hostname


def test_celery_receiver_sees_evcore_gossip_style_headers(
    app: Celery, amqp_url: str, exchange_name: str
) -> None:
    """Celery's gossip needs the ``hostname`` header and a numeric clock on every message:
    check both on what Celery's consumer receives from evcore."""
    connection = app.connection_for_read()
    received: list[Any] = []
    node_id = str(uuid.uuid4())
    receiver = app.events.Receiver(connection, handlers={}, node_id=node_id)

    def on_message(body: Any, message: Any) -> None:
        received.append((body, message.headers, message.properties, message.delivery_info))

    queue = receiver.queue
    with connection.Consumer([queue], callbacks=[on_message], no_ack=True):
        with Dispatcher(AMQPTransport.from_url(amqp_url), hostname="w9@interop",
                        exchange=exchange_name) as dispatcher:
            dispatcher.send("worker-heartbeat", freq=2.0)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.5)
    connection.release()
    assert received, "Celery's consumer got nothing"
    body, headers, properties, delivery_info = received[0]
    assert headers["hostname"] == "w9@interop"
    assert isinstance(body["clock"], int) and body["clock"] > 0
    assert properties["content_type"] == "application/json"
    assert properties["content_encoding"] == "utf-8"
    assert properties["delivery_mode"] == 1
    assert properties["priority"] == 0
    assert delivery_info["exchange"] == exchange_name
    assert delivery_info["routing_key"] == "worker.heartbeat"
