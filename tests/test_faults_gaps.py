"""Gaps reach the State: ``Receiver(on_loss=state.record_loss)`` on the in-memory bus."""

from __future__ import annotations

from typing import Any

from evcore import Dispatcher, Receiver, State
from evcore_memory import MemoryBus


def lose_three(bus_url: str, bus: MemoryBus, receiver: Receiver, dispatcher: Dispatcher) -> None:
    """w1 sends 1, then 3 events nobody receives (a dropped subscription), then 1 more."""
    dispatcher.send("worker-online")
    receiver.capture(limit=1, timeout=1)
    bus.set_offline()  # the receiver's queue goes with the outage
    bus.set_offline(False)
    for _ in range(3):
        dispatcher.send("worker-heartbeat")  # published, but no queue is bound yet
    receiver.capture(timeout=0.05)  # resubscribes
    dispatcher.send("worker-offline")
    receiver.capture(limit=1, timeout=1)


def test_state_counts_the_events_the_receiver_found_missing(bus_url: str, bus: MemoryBus) -> None:
    state = State()
    receiver = Receiver(bus_url, handlers={"*": state.event}, on_loss=state.record_loss)
    dispatcher = Dispatcher(bus_url, hostname="w1@h")
    lose_three(bus_url, bus, receiver, dispatcher)
    assert receiver.stats.lost_events == {"w1@h": 3}
    assert state.lost_events == {"w1@h": 3}
    assert state.event_count == 2
    receiver.close()
    dispatcher.close()


def test_a_failing_loss_callback_is_counted_not_raised(bus_url: str, bus: MemoryBus) -> None:
    calls: list[tuple[str, int]] = []

    def broken(hostname: str, count: int) -> Any:
        calls.append((hostname, count))
        raise RuntimeError("monitor bug")

    receiver = Receiver(bus_url, on_loss=broken)
    dispatcher = Dispatcher(bus_url, hostname="w1@h")
    lose_three(bus_url, bus, receiver, dispatcher)
    assert calls == [("w1@h", 3)]
    assert receiver.stats.handler_errors == 1
    assert receiver.stats.lost_events == {"w1@h": 3}
    receiver.close()
    dispatcher.close()


def test_record_loss_accumulates_per_sender() -> None:
    state = State()
    state.record_loss("w1", 2)
    state.record_loss("w2", 1)
    state.record_loss("w1", 5)
    assert state.lost_events == {"w1": 7, "w2": 1}
