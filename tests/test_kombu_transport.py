"""The kombu bridge transport, on kombu's in-memory and SQLAlchemy transports (no broker)."""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from kombu.transport import virtual

import evcore
from evcore import Dispatcher, Receiver
from evcore.errors import (
    ChannelError,
    ConfigurationError,
    ConnectionLost,
    EventsDisabled,
    InvalidURL,
    MissingDependency,
    UnsupportedOperation,
)
from evcore.routing import binding_matches
from evcore.testing import TransportConformance
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    Subscription,
)
from evcore_kombu import KombuTransport
from evcore_kombu.support import inspect_transport

MEMORY_URL = "kombu+memory://"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _name(prefix: str = "evkombu") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def _queue() -> QueueOptions:
    return QueueOptions(_name("evkombu.q"))


def _collect(subscription: Subscription, count: int, timeout: float = 5.0) -> list[IncomingMessage]:
    """Receive until ``count`` messages arrived or ``timeout`` passed."""
    got: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(subscription.receive(timeout=0.5))
    return got


@pytest.fixture
def transport() -> Iterator[KombuTransport]:
    opened = KombuTransport.from_url(MEMORY_URL)
    yield opened
    opened.close()


@pytest.fixture
def topic() -> Exchange:
    return Exchange(_name(), TOPIC)


class TestKombuMemoryConformance(TransportConformance):
    """The shared transport contract, through kombu's memory transport."""

    transport_url = MEMORY_URL
    invalid_urls = ("kombu://memory", "kombu+", "kombu+nosuchbroker://x", "kombu+redis://h:x/0")
    unreachable_url = f"kombu+redis://127.0.0.1:{_free_port()}/0"


# -- URLs, registry, options ------------------------------------------------------------


def test_registry_serves_kombu_plus_any_kombu_scheme() -> None:
    opened = evcore.connect("kombu+memory://")
    try:
        assert isinstance(opened, KombuTransport)
        assert opened.driver_type == "memory"
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("kombu://", "kombu+<kombu url>"),
        ("kombu+", "does not wrap a kombu URL"),
        ("redis://127.0.0.1/0", "not a kombu bridge URL"),
        ("kombu+nosuchbroker://x", "nosuchbroker"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, needle: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        KombuTransport.from_url(url)
    assert needle in str(caught.value)


def test_unknown_options_are_refused_and_connection_options_pass_through() -> None:
    with pytest.raises(ConfigurationError, match="polling_intervall"):
        KombuTransport.from_url(MEMORY_URL, polling_intervall=1)
    opened = KombuTransport.from_url(MEMORY_URL, transport_options={"polling_interval": 0.01})
    try:
        assert opened._template.transport_options == {"polling_interval": 0.01}
    finally:
        opened.close()


def test_missing_kombu_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kombu", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[kombu\]'"):
        KombuTransport.from_url(MEMORY_URL)


def test_missing_broker_library_is_missing_dependency() -> None:
    # kombu's zookeeper transport needs kazoo, which the test environment lacks.
    with pytest.raises(MissingDependency, match=r"kazoo.*pip install 'evcore\[kombu\]'"):
        KombuTransport.from_url("kombu+zookeeper://127.0.0.1:1/")


def test_importing_the_package_does_not_import_kombu() -> None:
    code = "import sys, evcore_kombu; print('kombu' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


# -- what kombu reports ------------------------------------------------------------------


def test_driver_type_and_capabilities_come_from_kombu() -> None:
    memory = KombuTransport.from_url(MEMORY_URL)
    # No I/O happens before publish/subscribe, so an unreachable Redis is fine here.
    redis = KombuTransport.from_url(f"kombu+redis://127.0.0.1:{_free_port()}/3")
    try:
        assert memory.driver_type == "memory"
        assert redis.driver_type == "redis"
        for opened in (memory, redis):
            assert opened.capabilities.broadcast
            assert not opened.capabilities.exact_routing
            assert opened.capabilities.exchange_types == {TOPIC, FANOUT, DIRECT}
    finally:
        memory.close()
        redis.close()


def test_amqp_routes_on_the_broker() -> None:
    capabilities = inspect_transport(kombu.Connection("amqp://").get_transport_cls()).capabilities
    assert capabilities.broadcast
    assert capabilities.exact_routing
    assert capabilities.persistent
    assert {"exclusive", "message_ttl", "expires", "max_length"} <= capabilities.queue_options


PER_PROCESS = "memory of the process"


@pytest.mark.parametrize(
    ("kombu_url", "driver_type", "because"),
    [
        ("zookeeper://", "zookeeper", PER_PROCESS),
        ("consul://", "consul", PER_PROCESS),
        ("sqla+sqlite://", "sql", PER_PROCESS),
        ("etcd://", "etcd", "implements only direct exchanges"),
    ],
)
def test_real_kombu_transports_that_cannot_broadcast(
    kombu_url: str, driver_type: str, because: str
) -> None:
    support = inspect_transport(kombu.Connection(kombu_url).get_transport_cls())
    assert support.driver_type == driver_type
    assert not support.capabilities.broadcast
    reason = support.refusal(TOPIC)
    assert reason is not None
    assert because in reason


class _SQSLike(virtual.Transport):
    """Shaped like kombu's SQS transport (which needs boto3): direct exchanges only."""

    driver_type = "sqs"
    implements = virtual.Transport.implements.extend(exchange_type=frozenset({"direct"}))


class _NoFanoutChannel(virtual.Channel):
    supports_fanout = False


class _GCPubSubWithoutFanout(virtual.Transport):
    """A driver the core gives a fanout exchange, whose channels cannot fan out."""

    driver_type = "gcpubsub"
    Channel = _NoFanoutChannel
    implements = virtual.Transport.implements.extend(
        exchange_type=frozenset({"direct", "topic", "fanout"})
    )


def _wrapping(transport_cls: type) -> KombuTransport:
    return KombuTransport(connection=kombu.Connection(transport=transport_cls))


@pytest.mark.parametrize(
    ("transport_cls", "exchange_type", "because"),
    [
        (_SQSLike, TOPIC, "implements only direct exchanges"),
        (_GCPubSubWithoutFanout, FANOUT, "do not support fanout"),
    ],
)
def test_brokers_without_broadcast_are_refused_up_front(
    transport_cls: type, exchange_type: str, because: str
) -> None:
    opened = _wrapping(transport_cls)
    exchange = Exchange(_name(), exchange_type)
    try:
        assert not opened.capabilities.broadcast
        with pytest.raises(UnsupportedOperation, match=because) as caught:
            opened.subscribe(exchange, "#", _queue())
        assert repr(opened.driver_type) in str(caught.value)
        with pytest.raises(UnsupportedOperation, match=because):
            opened.publish(exchange, [OutgoingMessage("task.sent", b"{}")])
        # The core's Receiver refuses too, instead of waiting forever.
        with pytest.raises(EventsDisabled, match="cannot broadcast"):
            Receiver(opened)
    finally:
        opened.close()


# -- publishing and consuming ------------------------------------------------------------


def test_round_trip_keeps_bytes_and_properties(transport: KombuTransport, topic: Exchange) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    sent = OutgoingMessage(
        routing_key="task.succeeded",
        body=b"\x00\xff not json \xfe",
        headers={"hostname": "w1@host", "n": 3},
        content_type="application/octet-stream",
        content_encoding="binary",
        delivery_mode=2,
        priority=5,
    )
    transport.publish(topic, [sent])
    [got] = _collect(subscription, 1)
    assert got == IncomingMessage(
        body=sent.body,
        routing_key="task.succeeded",
        exchange=topic.name,
        content_type="application/octet-stream",
        content_encoding="binary",
        headers={"hostname": "w1@host", "n": 3},
    )


_unpickled: list[str] = []


def _record_unpickling(marker: str) -> str:
    _unpickled.append(marker)
    return marker


class _Trap:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_unpickling, ("unpickled!",))


def test_bodies_are_never_deserialised_nor_unpickled(
    transport: KombuTransport, topic: Exchange
) -> None:
    payload = pickle.dumps(_Trap())
    subscription = transport.subscribe(topic, "#", _queue())
    transport.publish(
        topic,
        [
            OutgoingMessage("task.sent", payload, content_type="application/x-python-serialize"),
            OutgoingMessage("task.sent", b'{"type": "task-sent"}'),
        ],
    )
    got = _collect(subscription, 2)
    assert [m.body for m in got] == [payload, b'{"type": "task-sent"}']
    assert got[0].content_type == "application/x-python-serialize"
    assert _unpickled == []


def test_kombu_consumers_read_what_the_bridge_publishes(
    transport: KombuTransport, topic: Exchange
) -> None:
    """The body goes out as given: a plain kombu consumer decodes the original JSON, so
    kombu did not serialise it a second time."""
    with kombu.Connection("memory://localhost") as connection:
        received: list[Any] = []
        queue = kombu.Queue(
            _name("evkombu.plain"),
            kombu.Exchange(topic.name, type=TOPIC),
            routing_key="#",
            auto_delete=True,
        )
        with kombu.Consumer(
            connection, [queue], accept=["json"], callbacks=[lambda body, m: received.append(body)]
        ):
            transport.publish(
                topic, [OutgoingMessage("worker.online", b'{"type": "worker-online", "n": 1}')]
            )
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
    assert received == [{"type": "worker-online", "n": 1}]


def test_receive_returns_everything_that_arrived(
    transport: KombuTransport, topic: Exchange
) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    transport.publish(topic, [OutgoingMessage("task.sent", b"%d" % i) for i in range(5)])
    got = subscription.receive(timeout=5)
    assert [m.body for m in got] == [b"0", b"1", b"2", b"3", b"4"]


def test_batches_keep_their_order(transport: KombuTransport, topic: Exchange) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    bodies = [b"m%03d" % i for i in range(120)]
    transport.publish(topic, [OutgoingMessage("task.multi", body) for body in bodies])
    assert [m.body for m in _collect(subscription, len(bodies))] == bodies


def test_receive_times_out_empty(transport: KombuTransport, topic: Exchange) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    assert subscription.receive(timeout=0) == []
    assert subscription.receive(timeout=0.05) == []


def test_binding_keys_deliver_what_amqp_would(transport: KombuTransport, topic: Exchange) -> None:
    """``*`` is routed by kombu; ``#`` patterns are widened so nothing AMQP would deliver is
    missed (kombu's own ``worker.#`` misses a bare ``worker``); the core filters the rest."""
    keys = ["task.succeeded", "task.multi", "worker.heartbeat", "worker", "custom.phase.one"]
    bindings = ["task.*", "worker.#", "#", "custom.#"]
    subscriptions = {key: transport.subscribe(topic, key, _queue()) for key in bindings}
    transport.publish(topic, [OutgoingMessage(key, key.encode()) for key in keys])
    for binding, subscription in subscriptions.items():
        expected = [key for key in keys if binding_matches(binding, key)]
        got = [m.routing_key for m in _collect(subscription, len(expected), timeout=2)]
        assert [key for key in got if binding_matches(binding, key)] == expected, binding
    task_only = subscriptions["task.*"].receive(timeout=0.2)
    assert task_only == []


def test_fanout_reaches_every_subscription(transport: KombuTransport) -> None:
    exchange = Exchange(_name(), FANOUT)
    first = transport.subscribe(exchange, "#", _queue())
    second = transport.subscribe(exchange, "worker.#", _queue())
    transport.publish(exchange, [OutgoingMessage("task.sent", b"a"), OutgoingMessage("x", b"b")])
    assert [m.body for m in _collect(first, 2)] == [b"a", b"b"]
    assert [m.body for m in _collect(second, 2)] == [b"a", b"b"]


def test_redeclaring_with_another_type_names_both_types(transport: KombuTransport) -> None:
    name = _name()
    transport.publish(Exchange(name, TOPIC), [OutgoingMessage("a", b"1")])
    with pytest.raises(ChannelError) as caught:
        transport.subscribe(Exchange(name, FANOUT), "#", _queue())
    assert all(word in str(caught.value) for word in (name, "'topic'", "'fanout'"))
    # Still usable afterwards.
    transport.publish(Exchange(name, TOPIC), [OutgoingMessage("a", b"2")])


def test_a_connection_of_your_own_is_left_open() -> None:
    connection = kombu.Connection("memory://localhost")
    opened = KombuTransport(connection=connection)
    exchange = Exchange(_name(), TOPIC)
    subscription = opened.subscribe(exchange, "#", _queue())
    opened.publish(exchange, [OutgoingMessage("task.sent", b"mine")])
    assert [m.body for m in _collect(subscription, 1)] == [b"mine"]
    opened.close()
    with connection.SimpleQueue(_name("evkombu.simple")) as queue:
        queue.put({"still": "open"})
        assert queue.get(timeout=5).payload == {"still": "open"}
    connection.release()


def test_only_kombu_connections_are_accepted() -> None:
    with pytest.raises(ConfigurationError, match=r"kombu\.Connection"):
        KombuTransport(connection="memory://")


# -- failures ----------------------------------------------------------------------------


class _Broken:
    """Stands in for ``Connection.drain_events`` and raises what it is given."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, timeout: float | None = None) -> None:
        self.calls += 1
        raise self.error


def test_connection_errors_while_receiving_are_connection_lost(
    transport: KombuTransport, topic: Exchange
) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    connection = subscription._connection
    connection_error = connection.connection_errors[0]
    connection.drain_events = _Broken(connection_error("broker went away"))
    with pytest.raises(ConnectionLost, match="broker went away"):
        subscription.receive(timeout=1)
    # A lost subscription stays lost; the Receiver closes it and subscribes again.
    with pytest.raises(ConnectionLost):
        subscription.receive(timeout=1)
    subscription.close()
    assert subscription.receive(timeout=0) == []


def test_channel_errors_while_receiving_are_channel_errors(
    transport: KombuTransport, topic: Exchange
) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    connection = subscription._connection
    connection.drain_events = _Broken(connection.channel_errors[0]("NOT_FOUND - no queue"))
    with pytest.raises(ChannelError, match="NOT_FOUND"):
        subscription.receive(timeout=1)


def test_a_timeout_from_kombu_is_an_empty_result(
    transport: KombuTransport, topic: Exchange
) -> None:
    subscription = transport.subscribe(topic, "#", _queue())
    broken = _Broken(TimeoutError())
    subscription._connection.drain_events = broken
    assert subscription.receive(timeout=0.3) == []
    assert broken.calls >= 1


def test_unreachable_broker_is_connection_lost_every_time() -> None:
    opened = KombuTransport.from_url(f"kombu+redis://127.0.0.1:{_free_port()}/0")
    exchange = Exchange(_name(), FANOUT)
    try:
        with pytest.raises(ConnectionLost):
            opened.publish(exchange, [OutgoingMessage("task.sent", b"x")])
        with pytest.raises(ConnectionLost):
            opened.subscribe(exchange, "#", _queue())
        # Each call tries again (a fresh connection), and fails the same way.
        with pytest.raises(ConnectionLost):
            opened.publish(exchange, [OutgoingMessage("task.sent", b"x")])
    finally:
        opened.close()


# -- through the core: Dispatcher and Receiver --------------------------------------------


def test_dispatcher_to_receiver_over_kombu_memory() -> None:
    exchange = _name("evkombu.ev")
    seen: list[dict[str, Any]] = []
    with (
        Receiver(MEMORY_URL, handlers={"*": seen.append}, exchange=exchange) as receiver,
        Dispatcher(MEMORY_URL, hostname="w1@kombu", exchange=exchange) as dispatcher,
    ):
        assert dispatcher.exchange.type == TOPIC
        dispatcher.send("worker-online", freq=2.0)
        dispatcher.send("task-succeeded", uuid="abc", result="42", runtime=0.5)
        assert receiver.capture(limit=2, timeout=5) == 2
    assert [(e["type"], e["hostname"]) for e in seen] == [
        ("worker-online", "w1@kombu"),
        ("task-succeeded", "w1@kombu"),
    ]
    assert seen[1]["result"] == "42"


def test_batched_events_arrive_one_by_one() -> None:
    exchange = _name("evkombu.ev")
    seen: list[dict[str, Any]] = []
    with (
        Receiver(MEMORY_URL, handlers={"*": seen.append}, exchange=exchange) as receiver,
        Dispatcher(
            MEMORY_URL,
            hostname="w1@kombu",
            exchange=exchange,
            buffer_group=["task"],
            buffer_limit=3,
        ) as dispatcher,
    ):
        for index in range(3):
            dispatcher.send("task-received", uuid=f"t{index}")
        assert receiver.capture(limit=3, timeout=5) == 3
    assert [e["uuid"] for e in seen] == ["t0", "t1", "t2"]


def test_receiver_binding_key_gets_amqp_semantics() -> None:
    exchange = _name("evkombu.ev")
    seen: list[str] = []
    with (
        Receiver(
            MEMORY_URL,
            handlers={"*": lambda event: seen.append(event["type"])},
            routing_key="worker.#",
            exchange=exchange,
        ) as receiver,
        Dispatcher(MEMORY_URL, hostname="w1@kombu", exchange=exchange) as dispatcher,
    ):
        dispatcher.send("task-sent", uuid="x")
        dispatcher.send("worker-heartbeat", freq=2.0)
        dispatcher.send("worker", note="bare routing key")
        dispatcher.send("worker-offline")
        assert receiver.capture(limit=3, timeout=5) == 3
    assert seen == ["worker-heartbeat", "worker", "worker-offline"]


# -- the SQL rule, on kombu's real SQLAlchemy transport -----------------------------------


def _message_rows(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT COUNT(*) FROM kombu_message").fetchone()[0])


def _queue_names(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return sorted(row[0] for row in db.execute("SELECT name FROM kombu_queue"))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    """A kombu SQL database holding one ordinary (non-event) message, so that counting
    rows is shown to work before the tests count the ones events would add."""
    database = tmp_path / "kombu.db"
    with (
        kombu.Connection(f"sqla+sqlite:///{database}") as connection,
        connection.SimpleQueue("work") as queue,
    ):
        queue.put({"job": 1})
    assert _message_rows(database) == 1
    return database


def test_sql_dispatcher_is_disabled_says_so_once_and_writes_nothing(
    sqlite_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"kombu+sqla+sqlite:///{sqlite_db}"
    with caplog.at_level(logging.WARNING):
        dispatcher = Dispatcher(url, hostname="w1@sql")
        assert dispatcher.transport.driver_type == "sql"
        sent = [dispatcher.send("worker-online"), dispatcher.send("task-sent", uuid="a")]
        dispatcher.publish("task-sent", {"uuid": "b"})
        dispatcher.flush()
        dispatcher.close()
    assert sent == [None, None]
    assert not dispatcher.enabled
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "'sql'" in warnings[0].getMessage()
    assert _message_rows(sqlite_db) == 1
    assert _queue_names(sqlite_db) == ["work"]


def test_sql_receiver_refuses_with_events_disabled(sqlite_db: Path) -> None:
    with pytest.raises(EventsDisabled, match="'sql'"):
        Receiver(f"kombu+sqla+sqlite:///{sqlite_db}")
    assert _queue_names(sqlite_db) == ["work"]


def test_sql_transport_itself_refuses_to_subscribe(sqlite_db: Path) -> None:
    opened = KombuTransport.from_url(f"kombu+sqla+sqlite:///{sqlite_db}")
    try:
        assert not opened.capabilities.broadcast
        with pytest.raises(UnsupportedOperation, match="'sql' transport"):
            opened.subscribe(Exchange("celeryev", TOPIC), "#", _queue())
    finally:
        opened.close()
    assert _queue_names(sqlite_db) == ["work"]
