"""A Receiver's public connection state: up or not, since when, reconnects, on-change calls."""

from __future__ import annotations

import time

from evcore import ConnectionState, Dispatcher, Receiver
from evcore_memory import MemoryBus


def test_connected_from_the_start_then_lost_and_back(bus_url: str, bus: MemoryBus) -> None:
    changes: list[ConnectionState] = []
    before = time.monotonic()
    receiver = Receiver(bus_url, on_connection_change=changes.append, reconnect_delay=(0.01, 0.02))
    assert receiver.connected
    state = receiver.connection
    assert (state.reconnects, state.losses, state.error) == (0, 0, None)
    assert before <= state.since <= time.monotonic()
    assert [c.connected for c in changes] == [True]

    bus.set_offline()
    receiver.capture(timeout=0.1)
    assert not receiver.connected
    lost = receiver.connection
    assert lost.losses == 1 and lost.reconnects == 0
    assert lost.error is not None and "offline" in lost.error
    assert lost.since >= state.since

    bus.set_offline(False)
    seen: list[dict[str, object]] = []
    receiver.handlers["*"] = seen.append
    dispatcher = Dispatcher(bus_url, hostname="w1@h")
    receiver.capture(timeout=0.2)  # subscribes again
    dispatcher.send("worker-online")
    receiver.capture(limit=1, timeout=1.0)
    assert receiver.connected
    back = receiver.connection
    assert (back.reconnects, back.losses, back.error) == (1, 1, None)
    assert back.reconnects == receiver.stats.reconnects
    assert [c.connected for c in changes] == [True, False, True]
    assert changes[-1] == back
    assert [event["type"] for event in seen] == ["worker-online"]
    receiver.close()
    dispatcher.close()


def test_a_broker_away_at_the_start_is_not_a_loss(bus_url: str, bus: MemoryBus) -> None:
    changes: list[ConnectionState] = []
    bus.set_offline()
    receiver = Receiver(bus_url, on_connection_change=changes.append, reconnect_delay=(0.01, 0.02))
    assert not receiver.connected
    assert receiver.connection.losses == 0
    assert "offline" in (receiver.connection.error or "")
    assert changes == []  # never up, so nothing changed
    bus.set_offline(False)
    receiver.capture(timeout=0.2)
    assert receiver.connected
    assert [c.connected for c in changes] == [True]
    assert receiver.connection.reconnects == 1
    receiver.close()


def test_a_failing_callback_is_counted_and_receiving_goes_on(
    bus_url: str, bus: MemoryBus
) -> None:
    def broken(state: ConnectionState) -> None:
        raise RuntimeError("callback bug")

    receiver = Receiver(bus_url, on_connection_change=broken, reconnect_delay=(0.01, 0.02))
    bus.set_offline()
    receiver.capture(timeout=0.1)
    bus.set_offline(False)
    receiver.capture(timeout=0.2)
    assert receiver.connected
    assert receiver.stats.handler_errors == 3  # up at the start, down, up again
    receiver.close()
