"""AsyncReceiver: events reach asyncio in order, back-pressure holds, closing is clean."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from evcore import Dispatcher
from evcore.aio import AsyncReceiver
from evcore.errors import ConfigurationError, TransportNotFound


def publish(url: str, count: int, hostname: str = "w1@example") -> None:
    dispatcher = Dispatcher(url, hostname=hostname)
    for number in range(count):
        dispatcher.send("task-received", uuid=f"t{number}", name="add")
    dispatcher.close()


def test_events_arrive_in_order_with_async_for(bus_url: str) -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        async with AsyncReceiver(bus_url) as receiver:
            await asyncio.to_thread(publish, bus_url, 50)
            async for event in receiver:
                seen.append(event["uuid"])
                if len(seen) == 50:
                    break
            assert receiver.stats.delivered == 50
        return seen

    assert asyncio.run(main()) == [f"t{n}" for n in range(50)]


def test_batches_and_thread_handlers(bus_url: str) -> None:
    in_thread: list[str] = []

    def handler(event: dict[str, Any]) -> None:
        in_thread.append(threading.current_thread().name)

    async def main() -> int:
        total = 0
        async with AsyncReceiver(bus_url, handlers={"*": handler}) as receiver:
            await asyncio.to_thread(publish, bus_url, 300)
            async for batch in receiver.batches(limit=64):
                assert 1 <= len(batch) <= 64
                total += len(batch)
                if total == 300:
                    break
        return total

    assert asyncio.run(main()) == 300
    assert set(in_thread) == {"evcore-aio-receiver"}


def test_back_pressure_bounds_the_queue(bus_url: str) -> None:
    async def main() -> None:
        async with AsyncReceiver(bus_url, maxsize=10) as receiver:
            await asyncio.to_thread(publish, bus_url, 100)
            # The loop takes nothing: the worker thread fills the queue and then waits.
            deadline = time.monotonic() + 5
            while receiver.stats.full_waits == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert receiver.qsize == 10
            assert receiver.stats.full_waits >= 1
            taken = []
            async for event in receiver:
                taken.append(event["uuid"])
                if len(taken) == 100:
                    break
            assert taken == [f"t{n}" for n in range(100)]
            assert receiver.stats.full_seconds > 0

    asyncio.run(main())


def test_cancelling_a_waiting_consumer_then_closing(bus_url: str) -> None:
    async def main() -> AsyncReceiver:
        receiver = AsyncReceiver(bus_url)
        await receiver.start()
        consumer = asyncio.ensure_future(receiver.__anext__())
        await asyncio.sleep(0.05)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        started = time.monotonic()
        await receiver.aclose()
        assert time.monotonic() - started < 3
        assert not receiver.running
        with pytest.raises(StopAsyncIteration):
            await receiver.__anext__()
        return receiver

    receiver = asyncio.run(main())
    assert receiver.receiver is not None
    assert receiver.receiver.should_stop


def test_close_unblocks_a_full_queue_and_counts_what_was_dropped(bus_url: str) -> None:
    async def main() -> AsyncReceiver:
        receiver = AsyncReceiver(bus_url, maxsize=5)
        await receiver.start()
        await asyncio.to_thread(publish, bus_url, 20)
        while receiver.stats.full_waits == 0:
            await asyncio.sleep(0.02)
        await asyncio.wait_for(receiver.aclose(), timeout=5)
        return receiver

    receiver = asyncio.run(main())
    assert receiver.stats.dropped_on_close >= 5
    assert receiver.stats.queued + receiver.stats.dropped_on_close - 5 <= 20


def test_lag_connected_and_stats(bus_url: str) -> None:
    async def main() -> None:
        async with AsyncReceiver(bus_url) as receiver:
            assert receiver.connected
            assert receiver.lag() == 0.0
            await asyncio.to_thread(publish, bus_url, 3)
            while receiver.qsize < 3:
                await asyncio.sleep(0.01)
            assert receiver.lag(now=time.time() + 10) >= 10
            assert receiver.receiver_stats is not None
            assert receiver.receiver_stats.events == 3

    asyncio.run(main())


def test_bad_url_and_options_are_named_errors() -> None:
    with pytest.raises(ConfigurationError):
        AsyncReceiver("memory://x", maxsize=0)

    async def main() -> None:
        with pytest.raises(TransportNotFound):
            await AsyncReceiver("nosuchscheme://host").start()

    asyncio.run(main())


def test_a_failing_handler_is_counted_not_fatal(bus_url: str) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise ValueError("boom")

    async def main() -> None:
        async with AsyncReceiver(bus_url, handlers={"*": broken}) as receiver:
            await asyncio.to_thread(publish, bus_url, 2)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                stats = receiver.receiver_stats
                if stats is not None and stats.handler_errors == 2:
                    break
                await asyncio.sleep(0.02)
            assert receiver.receiver_stats is not None
            assert receiver.receiver_stats.handler_errors == 2
            assert receiver.running

    asyncio.run(main())
