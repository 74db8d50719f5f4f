"""The background writer's thread lives exactly as long as its dispatcher is open, and the
dispatcher's options keep their meaning with the writer on."""

from __future__ import annotations

import gc
import json
import threading
import weakref

import pytest

import evcore
from evcore import Dispatcher
from evcore.transport import Exchange, QueueOptions
from evcore_memory import MemoryBus

EXCHANGE = Exchange("celeryev", "topic")


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "evcore-writer" and t.is_alive()]


def test_close_ends_the_writer_thread_and_releases_the_dispatcher(bus_url: str) -> None:
    before = set(writer_threads())
    dispatcher = Dispatcher(bus_url, background=True)
    dispatcher.send("custom-n", n=1)
    assert len(set(writer_threads()) - before) == 1
    dispatcher.close()
    assert set(writer_threads()) - before == set()
    transport = weakref.ref(dispatcher.transport)
    released = weakref.ref(dispatcher)
    del dispatcher
    gc.collect()
    assert released() is None
    assert transport() is None


def test_enable_after_close_starts_a_writer_again(bus_url: str) -> None:
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("tap"))
    before = set(writer_threads())
    dispatcher = Dispatcher(bus_url, background=True)
    dispatcher.send("custom-n", n=1)
    dispatcher.disable()
    assert set(writer_threads()) - before == set()
    assert dispatcher.send("custom-n", n=2) is None
    dispatcher.enable()
    assert len(set(writer_threads()) - before) == 1
    dispatcher.send("custom-n", n=3)
    dispatcher.close()
    assert set(writer_threads()) - before == set()
    assert [json.loads(m.body)["n"] for m in tap.receive(0)] == [1, 3]


def test_background_refuses_to_drop_buffering(bus_url: str) -> None:
    with pytest.raises(evcore.ConfigurationError, match="buffer_while_offline=False"):
        Dispatcher(bus_url, background=True, buffer_while_offline=False)
    assert Dispatcher(bus_url, background=True).buffer_while_offline is True


def test_retry_with_the_writer_on_retries_in_the_callers_thread(
    bus_url: str, bus: MemoryBus
) -> None:
    dispatcher = Dispatcher(bus_url, background=True)
    for n in range(20):
        dispatcher.send("custom-n", n=n)
    bus.set_offline()
    back = threading.Timer(0.15, bus.set_offline, (False,))
    back.start()
    policy = {"max_retries": 20, "interval_start": 0.05, "interval_step": 0, "interval_max": 0.05}
    dispatcher.send("custom-n", n=20, retry=True, retry_policy=policy)
    # send() returned only once the broker took the retried event and everything the writer
    # held before it: nothing was left to the offline buffer.
    assert dispatcher.stats.publish_failures >= 1
    assert dispatcher.stats.events_sent == 21
    assert len(dispatcher.offline_buffer) == 0
    back.join()
    dispatcher.close()


def test_retry_policy_is_honoured_with_the_writer_on(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url, background=True)
    bus.set_offline()
    policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0, "interval_max": 0}
    dispatcher.send("custom-n", n=0, retry=True, retry_policy=policy)
    # One attempt and two retries, all in send(); then the event is buffered.
    assert dispatcher.stats.publish_failures == 3
    assert len(dispatcher.offline_buffer) == 1
    bus.set_offline(False)
    dispatcher.close()
