"""The exchange type events use: the driver type's rule where the transport declares that
type, else what the transport declares; a third party's fanout-only transport works."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

import evcore
from evcore import Dispatcher, Receiver
from evcore.routing import events_disabled_because, exchange_type_for
from evcore.testing import TransportConformance
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    OutgoingMessage,
    QueueOptions,
)
from evcore_memory import MemorySubscription, MemoryTransport, get_bus


class DeclaredTypesTransport(MemoryTransport):
    """A memory transport under a driver type of its own that accepts only the exchange
    types it declares, as a third party's adapter would."""

    def __init__(self, bus_name: str, driver_type: str, exchange_types: frozenset[str]) -> None:
        super().__init__(get_bus(bus_name))
        self.driver_type = driver_type
        self.capabilities = Capabilities(exchange_types=exchange_types)

    def _check(self, exchange: Exchange) -> None:
        if exchange.type not in self.capabilities.exchange_types:
            raise evcore.UnsupportedOperation(f"no {exchange.type!r} exchanges here")

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        self._check(exchange)
        super().publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> MemorySubscription:
        self._check(exchange)
        return super().subscribe(exchange, binding_key, queue)


def fanout_only(bus_name: str, driver_type: str = "acmebus") -> DeclaredTypesTransport:
    return DeclaredTypesTransport(bus_name, driver_type, frozenset({FANOUT}))


def test_a_fanout_only_transport_of_its_own_driver_type_carries_events() -> None:
    bus_name = f"fanout-only-{uuid.uuid4().hex[:8]}"
    seen: list[dict[str, Any]] = []
    receiver = Receiver(fanout_only(bus_name), handlers={"*": seen.append})
    dispatcher = Dispatcher(fanout_only(bus_name), hostname="w1@acme")
    dispatcher.send("worker-online", freq=2.0)
    dispatcher.send("task-received", uuid="t1", name="add")
    assert receiver.capture(limit=2, timeout=2.0) == 2
    assert [event["type"] for event in seen] == ["worker-online", "task-received"]
    assert dispatcher.exchange.type == receiver.exchange.type == FANOUT
    assert dispatcher.stats.events_refused == 0


def test_on_a_fanout_exchange_the_receiver_filters_by_binding_key() -> None:
    bus_name = f"fanout-filter-{uuid.uuid4().hex[:8]}"
    seen: list[dict[str, Any]] = []
    receiver = Receiver(fanout_only(bus_name), handlers={"*": seen.append}, routing_key="task.#")
    dispatcher = Dispatcher(fanout_only(bus_name), hostname="w1@acme")
    dispatcher.send("worker-online")
    dispatcher.send("task-started", uuid="t1")
    receiver.capture(timeout=0.2)
    assert [event["type"] for event in seen] == ["task-started"]
    assert receiver.stats.filtered == 1


@pytest.mark.parametrize(
    ("driver_type", "declared", "chosen"),
    [
        ("redis", {TOPIC, FANOUT}, FANOUT),  # Celery's rule, where it can be honoured
        ("redis", {TOPIC}, TOPIC),  # ...and where it cannot
        ("amqp", {TOPIC, FANOUT, DIRECT}, TOPIC),
        ("acmebus", {FANOUT}, FANOUT),
        ("acmebus", {FANOUT, DIRECT}, FANOUT),
        ("acmebus", {DIRECT}, None),
    ],
)
def test_exchange_type_choice(driver_type: str, declared: set[str], chosen: str | None) -> None:
    transport = DeclaredTypesTransport("unused", driver_type, frozenset(declared))
    assert exchange_type_for(transport) == chosen


def test_a_transport_with_no_event_exchange_type_has_events_disabled() -> None:
    transport = DeclaredTypesTransport("unused", "acmebus", frozenset({DIRECT}))
    reason = events_disabled_because(transport)
    assert reason is not None and "['direct']" in reason
    with pytest.raises(evcore.EventsDisabled, match="none of which can carry events"):
        Receiver(transport)
    assert Dispatcher(transport).send("worker-online") is None


def test_sql_stays_disabled_whatever_it_declares() -> None:
    transport = DeclaredTypesTransport("unused", "sql", frozenset({TOPIC, FANOUT}))
    assert "driver type 'sql'" in (events_disabled_because(transport) or "")


class TestFanoutOnlyConformance(TransportConformance):
    """The conformance suite judges such a transport on the exchange the core uses."""

    def make_transport(self) -> DeclaredTypesTransport:
        return fanout_only(f"conformance-{type(self).__name__}")
