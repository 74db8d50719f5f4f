"""The transport conformance suite: what evcore's core relies on from every adapter.

Subclass :class:`TransportConformance` in a test module of your own, under a name pytest
collects (``Test...``), and tell it how to reach your transport::

    from evcore.testing import TransportConformance

    class TestMyTransport(TransportConformance):
        transport_url = "mybus:///tmp/bus"

A URL that comes from a fixture is set by an autouse fixture of the subclass; a transport
that needs more than a URL overrides :meth:`TransportConformance.make_transport`. Every
check opens its own transports and uses exchange and queue names of its own, so the checks
are independent and may run in any order. Checks for a capability the transport does not
declare are skipped, with the reason; the basics never are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any, cast

import pytest

from evcore.errors import ChannelError, ConnectionLost, InvalidURL, TransportError
from evcore.registry import load_factory, scheme_of
from evcore.routing import binding_matches, rule_for
from evcore.testing.durable import DurableConformance
from evcore.testing.harness import (
    bodies,
    body_seen,
    collect,
    count_reached,
    finish_bounded,
    routes,
    run_bounded,
    start_bounded,
    unique_name,
)
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    Subscription,
    Transport,
    TransportFactory,
)

__all__ = ["TransportConformance"]

_QUEUE_OPTION_NAMES = frozenset(QueueOptions.__dataclass_fields__) - {"name"}


def _message(routing_key: str, body: bytes, **properties: Any) -> OutgoingMessage:
    return OutgoingMessage(routing_key=routing_key, body=body, **properties)


def _exchange(kind: str, name: str | None = None) -> Exchange:
    # Transient and auto-deleted, so that a real broker forgets the suite's exchanges.
    return Exchange(name or unique_name(), kind, durable=False, auto_delete=True)


def _numbered(prefix: str, count: int, routing_key: str = "task.received") -> list[OutgoingMessage]:
    return [_message(routing_key, f"{prefix}-{i:04d}".encode()) for i in range(count)]


class TransportConformance(DurableConformance):
    """Checks that a transport keeps the contract of :mod:`evcore.transport`.

    Set :attr:`transport_url` (or override :meth:`make_transport`); optionally list URLs
    your ``from_url`` must refuse in :attr:`invalid_urls` and give an
    :attr:`unreachable_url` pointing at a port where no broker listens.
    """

    #: The URL every check connects to; several transports opened for one check must reach
    #: the same broker (or bus).
    transport_url: str | None = None
    #: Keyword options passed to ``from_url`` with :attr:`transport_url`.
    transport_options: Mapping[str, Any] = MappingProxyType({})
    #: URLs of your scheme that ``from_url`` must refuse with InvalidURL, besides the
    #: suite's own (an unparsable host and a foreign scheme).
    invalid_urls: tuple[str, ...] = ()
    #: A URL of a broker that cannot be reached (nothing listens there), or None to skip
    #: the check that failing to connect raises ConnectionLost.
    unreachable_url: str | None = None
    #: Seconds to wait for a message that should arrive.
    delivery_timeout: float = 10.0
    #: Generous bound, in seconds, on calls that must not hang.
    hang_limit: float = 30.0
    #: Size of the large-payload check, in bytes.
    large_payload_size: int = 1 << 20

    # -- how to reach the transport ---------------------------------------------------

    def make_transport(self) -> Transport:
        """Open a new transport to the broker under test; override when a URL is not enough."""
        if self.transport_url is None:
            pytest.fail(
                f"{type(self).__name__}: set transport_url or override make_transport()",
                pytrace=False,
            )
        return load_factory(scheme_of(self.transport_url)).from_url(
            self.transport_url, **self.transport_options
        )

    def transport_factory(self) -> TransportFactory:
        """The object whose ``from_url`` builds the transport under test."""
        if self.transport_url is not None:
            return load_factory(scheme_of(self.transport_url))
        transport = self.connect_transport()
        return cast(TransportFactory, type(transport))

    # -- bookkeeping ------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _conformance_resources(self) -> Iterator[None]:
        self._opened: list[Transport | Subscription] = []
        yield
        for resource in reversed(self._opened):
            resource.close()

    def connect_transport(self) -> Transport:
        """A new transport, closed when the check ends."""
        transport = self.make_transport()
        self._opened.append(transport)
        return transport

    def subscribe(
        self,
        transport: Transport,
        exchange: Exchange,
        binding_key: str = "#",
        queue: QueueOptions | None = None,
    ) -> Subscription:
        """Subscribe with a fresh queue name unless ``queue`` is given; closed at the end."""
        options = queue if queue is not None else QueueOptions(unique_name("evconf.q"))
        subscription = transport.subscribe(exchange, binding_key, options)
        self._opened.append(subscription)
        return subscription

    def exchange_for(self, transport: Transport, name: str | None = None) -> Exchange:
        """A transient, auto-deleted exchange of the type the core would use for events on
        this transport."""
        declared = transport.capabilities.exchange_types
        preferred = rule_for(transport.driver_type).exchange_type
        kind = preferred if preferred in declared else sorted(declared)[0]
        return _exchange(kind, name)

    def receive_through(
        self, subscription: Subscription, last: bytes, binding_key: str = "#", exact: bool = True
    ) -> list[IncomingMessage]:
        """Receive until the message with body ``last`` arrives; keep only what the core
        would keep (binding-key filtering when ``exact`` routing is not declared)."""
        return collect(
            subscription,
            until=body_seen(last),
            timeout=self.delivery_timeout,
            keep=lambda m: exact or binding_matches(binding_key, m.routing_key),
        )

    def require_queue_option(self, transport: Transport, option: str) -> None:
        if option not in transport.capabilities.queue_options:
            pytest.skip(
                f"{transport.driver_type!r} transport does not declare the queue option "
                f"{option!r} in capabilities.queue_options"
            )

    def require_exchange_type(self, transport: Transport, exchange_type: str) -> None:
        if exchange_type not in transport.capabilities.exchange_types:
            pytest.skip(
                f"{transport.driver_type!r} transport does not declare the exchange type "
                f"{exchange_type!r} in capabilities.exchange_types"
            )

    def lingering_queue(self, transport: Transport, **options: Any) -> QueueOptions:
        """Options of a queue that outlives its subscriber (not exclusive, not auto-deleted),
        durable if the transport honours durability, expiring if it honours expiry."""
        honoured = transport.capabilities.queue_options
        settings: dict[str, Any] = {
            "exclusive": False,
            "auto_delete": False,
            "durable": "durable" in honoured,
            "message_ttl": None,
            "expires": 30.0 if "expires" in honoured else None,
        }
        settings.update(options)
        return QueueOptions(unique_name("evconf.q"), **settings)

    # -- the basics -------------------------------------------------------------------

    def test_declares_driver_type_and_capabilities(self) -> None:
        """A transport names its broker family and says what it can do."""
        transport = self.connect_transport()
        assert isinstance(transport, Transport)
        assert isinstance(transport.driver_type, str) and transport.driver_type
        capabilities = transport.capabilities
        assert isinstance(capabilities, Capabilities)
        assert capabilities.exchange_types & {TOPIC, FANOUT}, (
            "a transport must accept at least one of the exchange types the core uses "
            f"(topic, fanout); it declares {sorted(capabilities.exchange_types)}"
        )
        unknown = set(capabilities.queue_options) - _QUEUE_OPTION_NAMES
        assert not unknown, f"capabilities.queue_options names unknown options {sorted(unknown)}"

    def test_round_trip(self) -> None:
        """A published message arrives whole: body, routing key and content properties."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        assert isinstance(subscription, Subscription)
        body = b'{"type": "task-succeeded", "uuid": "abc", "clock": 1}'
        publisher.publish(exchange, [_message("task.succeeded", body)])

        received = collect(subscription, until=count_reached(1), timeout=self.delivery_timeout)

        assert bodies(received) == [body], "the published message did not arrive once"
        message = received[0]
        assert isinstance(message, IncomingMessage)
        assert type(message.body) is bytes
        assert message.routing_key == "task.succeeded"
        assert message.content_type == "application/json"
        assert message.content_encoding == "utf-8"
        assert message.exchange in ("", exchange.name)

    def test_headers_round_trip(self) -> None:
        """Message headers (Celery's dispatcher sets ``hostname``) arrive unchanged."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        headers = {"hostname": "w1@example.com", "x-evcore-count": 3}
        publisher.publish(exchange, [_message("worker.online", b"{}", headers=headers)])

        received = collect(subscription, until=count_reached(1), timeout=self.delivery_timeout)

        assert len(received) == 1
        assert dict(received[0].headers) == headers

    def test_batch_published_in_one_call_arrives_in_order(self) -> None:
        """Several messages in one ``publish()`` arrive, each once, in order."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        batch = [
            _message(("task.received", "task.started", "task.multi")[i % 3], f"b{i}".encode())
            for i in range(20)
        ]
        publisher.publish(exchange, batch)

        received = self.receive_through(subscription, batch[-1].body)

        assert bodies(received) == [m.body for m in batch]
        assert [m.routing_key for m in received] == [m.routing_key for m in batch]

    def test_large_payload(self) -> None:
        """A large body (1 MiB by default) of arbitrary bytes arrives intact."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        body = os.urandom(self.large_payload_size)
        publisher.publish(
            exchange,
            [
                _message(
                    "task.multi",
                    body,
                    content_type="application/octet-stream",
                    content_encoding="binary",
                )
            ],
        )

        received = collect(subscription, until=count_reached(1), timeout=self.delivery_timeout)

        assert len(received) == 1, "the large message did not arrive"
        assert len(received[0].body) == len(body)
        assert received[0].body == body

    def test_non_ascii_payload(self) -> None:
        """UTF-8 text beyond ASCII arrives byte for byte."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        body = '{"hostname": "wörker@hôst", "name": "タスク ✓ 🎉", "nul": "\\u0000"}'.encode()
        publisher.publish(exchange, [_message("task.received", body)])

        received = collect(subscription, until=count_reached(1), timeout=self.delivery_timeout)

        assert bodies(received) == [body]

    def test_arbitrary_bytes_including_nul_and_empty(self) -> None:
        """Bodies are opaque bytes: every byte value, NUL included, and the empty body."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        binary = {"content_type": "application/octet-stream", "content_encoding": "binary"}
        payloads = [bytes(range(256)) * 4, b"\x00", b"\x00\xff\x00\r\n", b"", b"last"]
        publisher.publish(exchange, [_message("task.received", p, **binary) for p in payloads])

        received = self.receive_through(subscription, b"last")

        assert bodies(received) == payloads

    def test_per_publisher_order(self) -> None:
        """Messages published one call at a time arrive in the order they were published."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        messages = _numbered("seq", 100)
        for message in messages:
            publisher.publish(exchange, [message])

        received = self.receive_through(subscription, messages[-1].body)

        assert bodies(received) == [m.body for m in messages]

    def test_interleaved_publishers_each_keep_their_order(self) -> None:
        """With two publishers, each one's messages arrive complete and in its order."""
        first, second = self.connect_transport(), self.connect_transport()
        consumer = self.connect_transport()
        exchange = self.exchange_for(consumer)
        subscription = self.subscribe(consumer, exchange)
        from_first, from_second = _numbered("first", 30), _numbered("second", 30)
        for a, b in zip(from_first, from_second, strict=True):
            first.publish(exchange, [a])
            second.publish(exchange, [b])

        received = collect(subscription, until=count_reached(60), timeout=self.delivery_timeout)

        got = bodies(received)
        assert [b for b in got if b.startswith(b"first")] == [m.body for m in from_first]
        assert [b for b in got if b.startswith(b"second")] == [m.body for m in from_second]
        assert len(got) == 60

    def test_broadcast_every_subscriber_gets_every_message(self) -> None:
        """Each subscription, on one connection or another, gets every message, in order."""
        probe = self.connect_transport()
        if not probe.capabilities.broadcast:
            pytest.skip(
                f"{probe.driver_type!r} transport declares broadcast=False: events cannot "
                "reach more than one monitor over it"
            )
        shared, own, publisher = probe, self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(shared)
        subscriptions = [
            self.subscribe(shared, exchange),
            self.subscribe(shared, exchange),
            self.subscribe(own, exchange),
        ]
        batch, singles = _numbered("batch", 10), _numbered("single", 10)
        publisher.publish(exchange, batch)
        for message in singles:
            publisher.publish(exchange, [message])
        expected = [m.body for m in batch + singles]

        for index, subscription in enumerate(subscriptions):
            received = self.receive_through(subscription, expected[-1])
            assert bodies(received) == expected, f"subscription {index} missed messages"

    def test_subscription_opened_after_a_publish_does_not_get_it(self) -> None:
        """A new subscription sees only what is published after ``subscribe()`` returns."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        early = self.subscribe(consumer, exchange)
        publisher.publish(exchange, [_message("task.sent", b"before")])
        late = self.subscribe(self.connect_transport(), exchange)
        publisher.publish(exchange, [_message("task.sent", b"after")])

        assert bodies(self.receive_through(early, b"after")) == [b"before", b"after"]
        assert bodies(self.receive_through(late, b"after")) == [b"after"]

    def test_closing_one_subscription_leaves_the_others_working(self) -> None:
        """Closing a subscription does not disturb the transport's other subscriptions."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        doomed = self.subscribe(consumer, exchange)
        survivor = self.subscribe(consumer, exchange)
        doomed.close()
        publisher.publish(exchange, [_message("task.sent", b"still-here")])

        assert bodies(self.receive_through(survivor, b"still-here")) == [b"still-here"]

    def test_resubscribe_with_the_same_queue_name(self) -> None:
        """After closing a subscription its queue name can be subscribed again at once (the
        Receiver does so when it reconnects), and the new subscription receives."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        exchange = self.exchange_for(consumer)
        queue = QueueOptions(unique_name("evconf.q"))
        first = self.subscribe(consumer, exchange, queue=queue)
        publisher.publish(exchange, [_message("task.sent", b"one")])
        assert bodies(self.receive_through(first, b"one")) == [b"one"]
        first.close()

        second = self.subscribe(consumer, exchange, queue=queue)
        publisher.publish(exchange, [_message("task.sent", b"two")])

        assert bodies(self.receive_through(second, b"two")) == [b"two"]

    def test_publish_while_another_thread_receives_on_the_same_transport(self) -> None:
        """One thread may publish while another is blocked receiving on the same transport."""
        transport = self.connect_transport()
        exchange = self.exchange_for(transport)
        subscription = self.subscribe(transport, exchange)
        messages = _numbered("threaded", 5)
        receiving = start_bounded(
            lambda: collect(subscription, until=count_reached(5), timeout=self.delivery_timeout)
        )
        time.sleep(0.2)  # let the receiver block first; correctness does not depend on it
        for message in messages:
            transport.publish(exchange, [message])

        outcome = finish_bounded(receiving, self.hang_limit + self.delivery_timeout)

        assert outcome.finished, "receive() never returned while another thread published"
        assert outcome.error is None, f"receive() raised {outcome.error!r}"
        assert bodies(outcome.value or []) == [m.body for m in messages]

    def test_receive_timeout_returns_empty(self) -> None:
        """``receive(timeout)`` with nothing to read returns an empty sequence, never hangs."""
        transport = self.connect_transport()
        subscription = self.subscribe(transport, self.exchange_for(transport))
        for timeout in (0.2, 0.0):
            outcome = run_bounded(partial(subscription.receive, timeout), self.hang_limit)
            assert outcome.finished, f"receive(timeout={timeout}) did not return"
            assert outcome.error is None, f"receive(timeout={timeout}) raised {outcome.error!r}"
            assert outcome.value is not None and len(outcome.value) == 0

    def test_receive_on_a_closed_subscription_returns_empty(self) -> None:
        """A closed subscription's ``receive()`` returns an empty sequence at once, whatever
        the timeout, and ``close()`` may be called twice."""
        transport = self.connect_transport()
        subscription = self.subscribe(transport, self.exchange_for(transport))
        subscription.close()
        outcome = run_bounded(lambda: subscription.receive(timeout=None), self.hang_limit)
        assert outcome.finished, "receive(None) on a closed subscription blocked"
        assert outcome.error is None, f"receive() on a closed subscription raised {outcome.error!r}"
        assert outcome.value is not None and len(outcome.value) == 0
        subscription.close()

    def test_subscription_close_from_another_thread_unblocks_receive(self) -> None:
        """``Subscription.close()`` from another thread makes a blocked ``receive(None)``
        return an empty sequence (not raise: the Receiver would take it for a lost
        connection and reconnect)."""
        transport = self.connect_transport()
        subscription = self.subscribe(transport, self.exchange_for(transport))
        self._check_close_unblocks(subscription, subscription.close, "Subscription.close()")

    def test_transport_close_from_another_thread_unblocks_receive(self) -> None:
        """``Transport.close()`` closes every subscription, unblocking their ``receive()``."""
        transport = self.connect_transport()
        subscription = self.subscribe(transport, self.exchange_for(transport))
        self._check_close_unblocks(subscription, transport.close, "Transport.close()")

    def _check_close_unblocks(self, subscription: Subscription, close: Any, what: str) -> None:
        receiving = start_bounded(lambda: subscription.receive(timeout=None))
        time.sleep(0.3)  # let receive() block; the check does not depend on it
        closing = run_bounded(close, self.hang_limit)
        assert closing.finished, f"{what} hung while another thread was receiving"
        assert closing.error is None, f"{what} raised {closing.error!r}"
        outcome = finish_bounded(receiving, self.hang_limit)
        assert outcome.finished, f"{what} from another thread did not unblock receive()"
        assert outcome.error is None, (
            f"a receive() unblocked by {what} must return an empty sequence, "
            f"it raised {outcome.error!r}"
        )
        assert outcome.value is not None and len(outcome.value) == 0

    def test_close_twice_and_reopen(self) -> None:
        """``close()`` is idempotent, and a new transport to the same broker works after it."""
        first = self.connect_transport()
        exchange = self.exchange_for(first)
        subscription = self.subscribe(first, exchange)
        first.publish(exchange, [_message("task.sent", b"first")])
        assert bodies(self.receive_through(subscription, b"first")) == [b"first"]
        first.close()
        first.close()

        second = self.connect_transport()
        subscription = self.subscribe(second, exchange)
        second.publish(exchange, [_message("task.sent", b"second")])

        assert bodies(self.receive_through(subscription, b"second")) == [b"second"]

    def test_publish_and_subscribe_after_close_raise_transport_error(self) -> None:
        """A closed transport refuses work with an evcore TransportError (ConnectionLost
        recommended), never a raw client exception, and does not silently reconnect."""
        transport = self.connect_transport()
        exchange = self.exchange_for(transport)
        self.subscribe(transport, exchange)  # bound, so a real broker auto-deletes it after
        transport.publish(exchange, [_message("task.sent", b"warm-up")])
        transport.close()

        publishing = run_bounded(
            lambda: transport.publish(exchange, [_message("task.sent", b"x")]), self.hang_limit
        )
        subscribing = run_bounded(
            lambda: transport.subscribe(exchange, "#", QueueOptions(unique_name("evconf.q"))),
            self.hang_limit,
        )

        if isinstance(subscribing.value, Subscription):
            self._opened.append(subscribing.value)
        for what, outcome in (("publish()", publishing), ("subscribe()", subscribing)):
            assert outcome.finished, f"{what} on a closed transport hung"
            assert isinstance(outcome.error, TransportError), (
                f"{what} on a closed transport must raise an evcore TransportError, "
                f"got {outcome.error!r}"
            )

    def test_invalid_urls_raise_invalid_url(self) -> None:
        """``from_url`` refuses malformed URLs with InvalidURL, not a bare ValueError."""
        factory = self.transport_factory()
        urls = ["evcore-conformance-unknown://localhost/", *self.invalid_urls]
        if self.transport_url is not None:
            urls.append(f"{scheme_of(self.transport_url)}://[unclosed")
        for url in urls:
            outcome = run_bounded(partial(factory.from_url, url), self.hang_limit)
            assert outcome.finished, f"from_url({url!r}) hung"
            if isinstance(outcome.value, Transport):
                outcome.value.close()
            assert isinstance(outcome.error, InvalidURL), (
                f"from_url({url!r}) must raise InvalidURL, got "
                f"{outcome.error or 'a transport'!r}"
            )

    def test_unreachable_broker_raises_connection_lost(self) -> None:
        """Failing to reach the broker is ConnectionLost (from ``from_url`` or from the first
        ``publish()``/``subscribe()``), never a raw client exception."""
        if self.unreachable_url is None:
            pytest.skip("set unreachable_url to a URL where no broker listens to run this check")
        factory = self.transport_factory()
        url = self.unreachable_url
        opening = run_bounded(
            lambda: factory.from_url(url, **self.transport_options), self.hang_limit
        )
        assert opening.finished, f"from_url({url!r}) hung"
        if opening.error is not None:
            assert isinstance(opening.error, ConnectionLost), (
                f"from_url of an unreachable broker raised {opening.error!r}"
            )
            return
        transport = opening.value
        assert transport is not None
        self._opened.append(transport)
        exchange = self.exchange_for(transport)
        calls = {
            "publish()": lambda: transport.publish(exchange, [_message("task.sent", b"x")]),
            "subscribe()": lambda: transport.subscribe(
                exchange, "#", QueueOptions(unique_name("evconf.q"))
            ),
        }
        for what, call in calls.items():
            outcome = run_bounded(call, self.hang_limit)
            assert outcome.finished, f"{what} to an unreachable broker hung"
            assert isinstance(outcome.error, ConnectionLost), (
                f"{what} to an unreachable broker must raise ConnectionLost, got {outcome.error!r}"
            )

    # -- exchange types and bindings --------------------------------------------------

    def _check_routing(
        self, exchange_type: str, cases: list[tuple[str, str]], routing_keys: list[str]
    ) -> None:
        """Bind one subscription per ``(binding_key, sentinel_routing_key)``, publish
        ``routing_keys`` then one sentinel per binding, and compare what each received
        with AMQP semantics (exactly, or after the core's own filtering)."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        self.require_exchange_type(consumer, exchange_type)
        exact = consumer.capabilities.exact_routing
        exchange = _exchange(exchange_type)
        subscriptions = [self.subscribe(consumer, exchange, key) for key, _ in cases]
        messages = [_message(rk, f"m{i}:{rk}".encode()) for i, rk in enumerate(routing_keys)]
        publisher.publish(exchange, messages)
        publisher.publish(exchange, [_message(rk, f"sentinel:{k}".encode()) for k, rk in cases])

        for (key, _), subscription in zip(cases, subscriptions, strict=True):
            received = self.receive_through(
                subscription, f"sentinel:{key}".encode(), binding_key=key, exact=exact
            )
            got = [b for b in bodies(received) if not b.startswith(b"sentinel:")]
            expected = [
                m.body
                for m in messages
                if routes(exchange_type, key, m.routing_key)
                and (exact or binding_matches(key, m.routing_key))
            ]
            assert f"sentinel:{key}".encode() in bodies(received), (
                f"binding {key!r} on a {exchange_type} exchange: nothing arrived"
            )
            assert got == expected, f"binding {key!r} on a {exchange_type} exchange"

    def test_topic_bindings_with_star_and_hash(self) -> None:
        """Topic bindings follow AMQP: ``*`` is one word, ``#`` zero or more. Without
        exact routing every matching message must still arrive (the core filters)."""
        self._check_routing(
            TOPIC,
            [
                ("#", "anything.at.all"),
                ("task.*", "task.sentinel"),
                ("*.multi", "sentinel.multi"),
                ("worker.#", "worker.sentinel.deep"),
                ("#.heartbeat", "sentinel.heartbeat"),
                ("task.received", "task.received"),
            ],
            [
                "task.received",
                "task.multi",
                "task.received.extra",
                "worker",
                "worker.heartbeat",
                "worker.online.now",
                "other.multi",
                "heartbeat",
                "task",
            ],
        )

    def test_fanout_ignores_routing_keys(self) -> None:
        """A fanout exchange delivers every message to every queue, whatever the keys."""
        self._check_routing(
            FANOUT,
            [("#", "any.key"), ("task.*", "task.sentinel"), ("no.match", "no.match")],
            ["task.received", "worker.heartbeat", "other"],
        )

    def test_direct_matches_whole_keys(self) -> None:
        """A direct exchange delivers a message to the queues bound with exactly its key."""
        self._check_routing(
            DIRECT,
            [("task.received", "task.received"), ("task.sent", "task.sent")],
            ["task.received", "task.sent", "task.received.extra", "task", "task.received"],
        )

    def test_redeclaring_an_exchange_with_another_type(self) -> None:
        """Where a broker refuses to redeclare an exchange with another type, the refusal is
        a ChannelError naming the exchange and both types, and the transport stays usable."""
        transport = self.connect_transport()
        kinds = sorted(transport.capabilities.exchange_types & {TOPIC, FANOUT, DIRECT})
        if len(kinds) < 2:
            pytest.skip(f"{transport.driver_type!r} transport declares one exchange type only")
        name = unique_name()
        self.subscribe(transport, _exchange(kinds[0], name))  # so that it is auto-deleted after
        transport.publish(_exchange(kinds[0], name), [_message("task.sent", b"x")])
        try:
            transport.publish(_exchange(kinds[1], name), [_message("task.sent", b"y")])
        except ChannelError as exc:
            for word in (name, kinds[0], kinds[1]):
                assert word in str(exc), f"the ChannelError should name {word!r}: {exc}"

        exchange = _exchange(kinds[0])
        subscription = self.subscribe(transport, exchange, "task.sent")
        transport.publish(exchange, [_message("task.sent", b"after-refusal")])
        received = self.receive_through(subscription, b"after-refusal", "task.sent")
        assert bodies(received) == [b"after-refusal"], "the transport is unusable after a refusal"

    # -- queue options and persistence -----------------------------------------------

    def test_queue_option_exclusive(self) -> None:
        """A second subscriber to an exclusive queue, from another connection, is refused
        with ChannelError; the first keeps receiving and the refused transport stays usable."""
        owner, intruder, publisher = (self.connect_transport() for _ in range(3))
        self.require_queue_option(owner, "exclusive")
        exchange = self.exchange_for(owner)
        queue = QueueOptions(unique_name("evconf.q"), exclusive=True)
        first = self.subscribe(owner, exchange, queue=queue)

        with pytest.raises(ChannelError):
            self.subscribe(intruder, exchange, queue=queue)

        publisher.publish(exchange, [_message("task.sent", b"for-owner")])
        assert bodies(self.receive_through(first, b"for-owner")) == [b"for-owner"]
        other = self.subscribe(intruder, exchange)
        intruder.publish(exchange, [_message("task.sent", b"from-intruder")])
        assert bodies(self.receive_through(other, b"from-intruder")) == [b"from-intruder"]

    def reading_queue(self, transport: Transport, **options: Any) -> QueueOptions:
        """The queue :meth:`_idle_or_absent` needs: one that outlives its subscriber where
        the transport honours ``auto_delete``, else the Receiver's usual private queue."""
        if "auto_delete" in transport.capabilities.queue_options:
            return self.lingering_queue(transport, **options)
        return QueueOptions(unique_name("evconf.q"), **options)

    def _idle_or_absent(
        self, consumer: Transport, exchange: Exchange, queue: QueueOptions, publish: Any
    ) -> Subscription:
        """Run ``publish()`` while nobody reads the queue, and return a reading subscription.

        Where the transport honours ``auto_delete`` the subscriber is away (closed) and comes
        back: a broker that pushes messages to its consumers at once applies queue limits
        only to a queue nobody consumes. Elsewhere the subscriber stays, idle.
        """
        subscription = self.subscribe(consumer, exchange, queue=queue)
        if not queue.auto_delete and "auto_delete" in consumer.capabilities.queue_options:
            subscription.close()
            publish()
            return self.subscribe(consumer, exchange, queue=queue)
        publish()
        return subscription

    def test_queue_option_message_ttl(self) -> None:
        """Messages older than ``message_ttl`` are dropped before they are read."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        self.require_queue_option(consumer, "message_ttl")
        ttl = 0.5
        exchange = self.exchange_for(consumer)
        queue = self.reading_queue(consumer, message_ttl=ttl)

        def publish_and_wait() -> None:
            publisher.publish(exchange, [_message("task.sent", b"stale")])
            time.sleep(ttl * 3 + 0.5)  # let the message outlive its TTL

        subscription = self._idle_or_absent(consumer, exchange, queue, publish_and_wait)
        publisher.publish(exchange, [_message("task.sent", b"fresh")])

        assert bodies(self.receive_through(subscription, b"fresh")) == [b"fresh"]

    def test_queue_option_max_length_drops_the_oldest(self) -> None:
        """A queue over ``max_length`` drops from its head: the newest messages are kept."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        self.require_queue_option(consumer, "max_length")
        exchange = self.exchange_for(consumer)
        queue = self.reading_queue(consumer, max_length=3)
        messages = _numbered("len", 8)

        subscription = self._idle_or_absent(
            consumer, exchange, queue, lambda: publisher.publish(exchange, messages)
        )

        received = self.receive_through(subscription, messages[-1].body)
        assert bodies(received) == [m.body for m in messages[-3:]]

    def test_queue_option_expires(self) -> None:
        """A queue unused for ``expires`` seconds is deleted, with what it would have got."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        self.require_queue_option(consumer, "expires")
        exchange = self.exchange_for(consumer)
        queue = self.lingering_queue(consumer, expires=1.0)
        self.subscribe(consumer, exchange, queue=queue).close()
        time.sleep(3.0)  # let the unused queue expire
        publisher.publish(exchange, [_message("task.sent", b"to-nobody")])

        subscription = self.subscribe(consumer, exchange, queue=queue)
        publisher.publish(exchange, [_message("task.sent", b"fresh")])

        assert bodies(self.receive_through(subscription, b"fresh")) == [b"fresh"]

    def test_queue_option_auto_delete(self) -> None:
        """An auto-delete queue goes away with its last subscriber."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        self.require_queue_option(consumer, "auto_delete")
        exchange = self.exchange_for(consumer)
        queue = self.lingering_queue(consumer, auto_delete=True)
        self.subscribe(consumer, exchange, queue=queue).close()
        publisher.publish(exchange, [_message("task.sent", b"to-nobody")])

        subscription = self.subscribe(consumer, exchange, queue=queue)
        publisher.publish(exchange, [_message("task.sent", b"fresh")])

        assert bodies(self.receive_through(subscription, b"fresh")) == [b"fresh"]

    def test_persistent_queue_keeps_messages_while_its_subscriber_is_away(self) -> None:
        """On a persistent transport a queue that is neither exclusive nor auto-deleted keeps
        what arrives while nobody is subscribed."""
        publisher, consumer = self.connect_transport(), self.connect_transport()
        if not consumer.capabilities.persistent:
            pytest.skip(f"{consumer.driver_type!r} transport declares persistent=False")
        exchange = self.exchange_for(consumer)
        queue = self.lingering_queue(consumer)
        self.subscribe(consumer, exchange, queue=queue).close()
        publisher.publish(exchange, [_message("task.sent", b"kept")])

        subscription = self.subscribe(consumer, exchange, queue=queue)
        publisher.publish(exchange, [_message("task.sent", b"fresh")])

        assert bodies(self.receive_through(subscription, b"fresh")) == [b"kept", b"fresh"]
