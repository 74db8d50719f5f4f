"""Concurrency on real brokers: many threads sending at once, a receiver stopped from
another thread, and a close racing a flush. No event may be lost or duplicated, and no
call may hang (every join is bounded and checked)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _amqp_support import delete_exchanges
from _faults_support import Monitor
from _net import wait_for
from _redis_support import PrivateRedis

from evcore import Dispatcher, Receiver

HOST = "w1@threads"
JOIN = 30.0


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN)
    assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"


def monitor_pairs(monitor: Monitor) -> list[tuple[int, int]]:
    """``(thread tag, number)`` of each event received, in arrival order."""
    return [divmod(number, 100_000) for number in monitor.numbers]


@pytest.mark.redis
@pytest.mark.parametrize("background", [False, True], ids=["direct", "background"])
def test_many_threads_sending_at_once_lose_and_duplicate_nothing(
    server: PrivateRedis, exchange_name: str, background: bool
) -> None:
    threads_count, per_thread = 8, 300
    monitor = Monitor(server.url, exchange_name)
    dispatcher = Dispatcher(
        server.url, hostname=HOST, exchange=exchange_name, background=background
    )
    start = threading.Barrier(threads_count)

    def sender(tag: int) -> None:
        start.wait(JOIN)
        for n in range(per_thread):
            number = tag * 100_000 + n
            dispatcher.send("task-received", uuid=f"t{number}", n=number)

    threads = [threading.Thread(target=sender, args=(tag,)) for tag in range(threads_count)]
    try:
        for thread in threads:
            thread.start()
        join_all(threads)
        dispatcher.flush()
        total = threads_count * per_thread
        assert wait_for(lambda: len(monitor.numbers) >= total, 30)
    finally:
        dispatcher.close()
        monitor.stop()
    by_tag: dict[int, list[int]] = {}
    for tag, n in monitor_pairs(monitor):
        by_tag.setdefault(tag, []).append(n)
    assert by_tag == {tag: list(range(per_thread)) for tag in range(threads_count)}
    stats = monitor.receiver.stats
    assert (stats.events, stats.duplicates, dict(stats.lost_events)) == (total, 0, {})
    assert dispatcher.stats.events_sent == total
    assert len(monitor.state.tasks) == total


@pytest.mark.parametrize(
    "broker", [pytest.param(name, marks=getattr(pytest.mark, name)) for name in ("redis", "amqp")]
)
def test_a_receiver_stopped_from_another_thread_ends_promptly(
    request: pytest.FixtureRequest, exchange_name: str, broker: str
) -> None:
    url = request.getfixturevalue(f"{broker}_url")
    handled: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    stop_sending = threading.Event()
    receiver = Receiver(url, exchange=exchange_name, handlers={"*": handled.append})
    dispatcher = Dispatcher(url, hostname=HOST, exchange=exchange_name)

    def consume() -> None:
        try:
            receiver.capture()  # no limit, no timeout: only close() ends it
        except BaseException as exc:
            errors.append(exc)

    def produce() -> None:
        while not stop_sending.is_set():
            dispatcher.send("worker-heartbeat")
            stop_sending.wait(0.005)

    consumer = threading.Thread(target=consume)
    producer = threading.Thread(target=produce)
    try:
        consumer.start()
        producer.start()
        assert wait_for(lambda: len(handled) >= 20)
        receiver.close()  # from this thread, while the other is receiving
        join_all([consumer])
    finally:
        stop_sending.set()
        join_all([producer])
        receiver.close()
        dispatcher.close()
        if broker == "amqp":
            delete_exchanges(url, {exchange_name})
    assert errors == []
    assert receiver.stats.duplicates == 0 and not receiver.stats.lost_events


@pytest.mark.redis
def test_close_racing_a_flush_and_sends_loses_and_duplicates_nothing(
    server: PrivateRedis, exchange_name: str
) -> None:
    monitor = Monitor(server.url, exchange_name)
    dispatcher = Dispatcher(server.url, hostname=HOST, exchange=exchange_name)
    accepted: list[int] = []
    lock = threading.Lock()

    def send(number: int) -> None:
        if dispatcher.send("task-received", uuid=f"t{number}", n=number) is not None:
            with lock:
                accepted.append(number)

    try:
        send(0)
        assert monitor.saw(0)
        server.stop()
        for number in range(1, 501):  # buffered while the broker is away
            send(number)
        assert dispatcher.pending_events == 500
        server.start()
        assert wait_for(lambda: monitor.receiver.stats.reconnects >= 1)

        go = threading.Barrier(4)

        def flusher() -> None:
            go.wait(JOIN)
            dispatcher.flush()

        def closer() -> None:
            go.wait(JOIN)
            dispatcher.close()

        def sender(tag: int) -> None:
            go.wait(JOIN)
            for n in range(100):
                send(tag * 100_000 + n)

        threads = [
            threading.Thread(target=flusher),
            threading.Thread(target=closer),
            threading.Thread(target=sender, args=(1,)),
            threading.Thread(target=sender, args=(2,)),
        ]
        for thread in threads:
            thread.start()
        join_all(threads)
        assert dispatcher.pending_events == 0  # close drained everything it accepted
        assert wait_for(lambda: len(monitor.numbers) >= len(accepted), 30)
    finally:
        dispatcher.close()
        monitor.stop()
    assert sorted(monitor.numbers) == sorted(accepted)  # nothing lost, nothing twice
    assert monitor.receiver.stats.duplicates == 0
    assert not monitor.receiver.stats.lost_events
    assert dispatcher.stats.events_sent == len(accepted)
