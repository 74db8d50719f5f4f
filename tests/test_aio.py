"""AsyncReceiver: events reach asyncio in order, back-pressure holds, closing is clean."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from typing import Any

import pytest

from evcore import Dispatcher
from evcore.aio import AsyncReceiver, StreamMark
from evcore.errors import ConfigurationError, TransportNotFound
from evcore.registry import connect
from evcore.transport import EARLIEST, Exchange, OutgoingMessage, StreamOptions


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


def _raw_heartbeats(hostname: str, numbers: list[int], partition: int | None = None) -> list[Any]:
    """Heartbeats carrying evcore's sequence headers, numbered as given (gaps on purpose)."""
    return [
        OutgoingMessage(
            "worker.heartbeat",
            json.dumps(
                {"type": "worker-heartbeat", "hostname": hostname, "clock": n, "timestamp": n}
            ).encode(),
            {"hostname": hostname, "evcore-boot": f"boot-{hostname}", "evcore-seq": n},
            partition=partition,
        )
        for n in numbers
    ]


def test_losses_reach_the_loop_in_order_with_the_events(bus_url: str) -> None:
    """A gap is reported on the event loop after the events before it and before the
    first event after it, whatever the batches."""
    seen: list[Any] = []
    threads: set[str] = set()

    def on_loss(hostname: str, count: int) -> None:
        threads.add(threading.current_thread().name)
        seen.append(("lost", hostname, count))

    async def main() -> None:
        async with AsyncReceiver(bus_url, on_loss=on_loss) as receiver:
            transport = receiver.receiver.transport  # type: ignore[union-attr]
            exchange = Exchange("celeryev", "topic")
            transport.publish(exchange, _raw_heartbeats("w1", [1, 2, 5, 6]))
            transport.publish(exchange, _raw_heartbeats("w1", [9]))
            async for batch in receiver.batches(limit=100):
                seen.extend(event["clock"] for event in batch)
                if len(batch) and batch[-1]["clock"] == 9:
                    break

    asyncio.run(main())
    assert seen == [1, 2, ("lost", "w1", 2), 5, 6, ("lost", "w1", 2), 9]
    assert threads == {threading.current_thread().name}


def test_marks_follow_their_events_and_finish_ends_with_one() -> None:
    """On a durable stream every mark comes once, right after the events it follows, with
    the positions of exactly those events; finish() delivers the rest and a final mark."""
    url = f"memory+stream://{uuid.uuid4().hex}?partitions=2"
    transport = connect(url)
    exchange = Exchange("celeryev", "topic")

    async def main() -> list[tuple[int, StreamMark | None]]:
        pairs: list[tuple[int, StreamMark | None]] = []
        receiver = AsyncReceiver(url, stream=StreamOptions(start=EARLIEST))
        await receiver.start()
        for round_ in range(3):
            await asyncio.to_thread(
                transport.publish,
                exchange,
                _raw_heartbeats("w1", list(range(round_ * 10, round_ * 10 + 10)), partition=0)
                + _raw_heartbeats("w2", list(range(round_ * 5, round_ * 5 + 5)), partition=1),
            )
            await asyncio.sleep(0.6)  # a capture slice: a mark between rounds
        receiver.finish()
        async for batch, mark in receiver.marked_batches(limit=7):
            assert len(batch) <= 7
            pairs.append((len(batch), mark))
        await receiver.aclose()
        assert receiver.stats.marks == sum(1 for _, mark in pairs if mark is not None)
        return pairs

    pairs = asyncio.run(main())
    transport.close()
    delivered = 0
    marks = []
    for count, mark in pairs:
        delivered += count
        if mark is not None:
            assert mark.events == delivered  # exactly the events handed over before it
            marks.append(mark)
    assert delivered == 45 and len(marks) >= 3
    assert marks[-1].events == 45
    # The last mark's positions are those of each partition's last message.
    assert set(marks[-1].positions) == {0, 1}
    assert marks[-1].sequences["boot-w1"] == 30 and marks[-1].sequences["boot-w2"] == 15
    # In-memory positions are offsets: every mark is at or after the one before.
    for before, after in itertools.pairwise(marks):
        assert all(int(after.positions[p]) >= int(before.positions.get(p, -1)) for p in (0, 1))
