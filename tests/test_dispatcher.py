from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

import evcore
from evcore import Dispatcher
from evcore.transport import Exchange, IncomingMessage, QueueOptions, Subscription
from evcore_memory import MemoryBus

EXCHANGE = Exchange("celeryev", "topic")


@pytest.fixture
def tap(bus_url: str) -> Iterator[Subscription]:
    """A raw subscription to everything published on the test's bus."""
    transport = evcore.connect(bus_url)
    subscription = transport.subscribe(EXCHANGE, "#", QueueOptions("tap"))
    yield subscription
    transport.close()


def drain(subscription: Subscription) -> list[IncomingMessage]:
    return list(subscription.receive(0))


def test_send_stamps_envelope_fields_in_celery_order(bus_url: str, tap: Subscription) -> None:
    dispatcher = Dispatcher(bus_url, hostname="w1@host")
    event = dispatcher.send("task-succeeded", uuid="u1", result="42", runtime=0.5)
    assert event is not None
    [message] = drain(tap)
    assert message.routing_key == "task.succeeded"
    assert message.headers["hostname"] == "w1@host"
    assert message.headers["evcore-seq"] == 1
    assert message.headers["evcore-boot"] == dispatcher.boot_id
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    body = json.loads(message.body)
    assert list(body) == [
        "hostname", "utcoffset", "pid", "clock", "uuid", "result", "runtime", "timestamp", "type"
    ]
    assert body == event
    assert isinstance(body["utcoffset"], float)
    assert body["clock"] >= 1


def test_hostname_defaults_to_anonymous_nodename(bus_url: str) -> None:
    dispatcher = Dispatcher(bus_url)
    assert dispatcher.hostname.startswith("gen")
    assert "@" in dispatcher.hostname


def test_reserved_fields_raise_type_error(bus_url: str) -> None:
    dispatcher = Dispatcher(bus_url)
    for field in ("hostname", "clock", "pid"):
        with pytest.raises(TypeError, match=field):
            dispatcher.send("custom-x", **{field: "x"})


def test_clock_moves_forward_per_event_and_blind_never_sends_null(
    bus_url: str, tap: Subscription
) -> None:
    clock = evcore.LamportClock(10)
    dispatcher = Dispatcher(bus_url, clock=clock)
    dispatcher.send("worker-heartbeat")
    dispatcher.send("worker-heartbeat", blind=True)
    clocks = [json.loads(m.body)["clock"] for m in drain(tap)]
    assert clocks == [11, 0]
    assert clock.value == 11


def test_groups_filter(bus_url: str, tap: Subscription) -> None:
    dispatcher = Dispatcher(bus_url, groups=["worker"])
    assert dispatcher.send("task-started", uuid="u") is None
    assert dispatcher.send("worker-online") is not None
    assert [m.routing_key for m in drain(tap)] == ["worker.online"]


def test_disabled_sends_nothing_but_publish_works(bus_url: str, tap: Subscription) -> None:
    dispatcher = Dispatcher(bus_url, enabled=False)
    assert dispatcher.send("worker-online") is None
    assert dispatcher.publish("task-sent", {"uuid": "u"}) is not None
    assert [m.routing_key for m in drain(tap)] == ["task.sent"]


def test_unserialisable_field_fails_at_send(bus_url: str) -> None:
    dispatcher = Dispatcher(bus_url)
    with pytest.raises(TypeError):
        dispatcher.send("custom-x", payload=object())


def test_batching_at_the_limit_and_on_flush(bus_url: str, tap: Subscription) -> None:
    buffered: list[int] = []
    dispatcher = Dispatcher(
        bus_url,
        buffer_group={"task"},
        buffer_limit=3,
        on_send_buffered=lambda: buffered.append(1),
    )
    dispatcher.send("task-received", uuid="a")
    dispatcher.send("task-started", uuid="a")
    assert drain(tap) == []
    assert len(buffered) == 2
    dispatcher.send("worker-heartbeat")  # other groups are not batched
    dispatcher.send("task-succeeded", uuid="a")  # third: the batch goes out
    messages = drain(tap)
    assert [m.routing_key for m in messages] == ["worker.heartbeat", "task.multi"]
    batch = json.loads(messages[1].body)
    assert [e["type"] for e in batch] == ["task-received", "task-started", "task-succeeded"]
    assert len(buffered) == 2  # the send that fills the batch does not call back
    dispatcher.send("task-failed", uuid="b")
    assert drain(tap) == []
    dispatcher.flush()
    [last] = drain(tap)
    assert last.routing_key == "task.multi"
    assert [e["uuid"] for e in json.loads(last.body)] == ["b"]
    dispatcher.flush()
    assert drain(tap) == []  # nothing sent twice


def test_batched_events_are_clocked_even_when_blind(bus_url: str, tap: Subscription) -> None:
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=1)
    dispatcher.send("task-started", uuid="a", blind=True)
    [message] = drain(tap)
    assert json.loads(message.body)[0]["clock"] > 0


def test_offline_buffer_holds_events_in_order_and_flushes_on_recovery(
    bus_url: str, bus: MemoryBus, tap: Subscription
) -> None:
    dispatcher = Dispatcher(bus_url)
    bus.set_offline()
    for n in range(5):
        dispatcher.send("custom-n", n=n)
    assert len(dispatcher.offline_buffer) == 5
    assert dispatcher.stats.publish_failures >= 1
    bus.set_offline(False)
    transport = evcore.connect(bus_url)
    tap = transport.subscribe(EXCHANGE, "#", QueueOptions("tap2"))
    dispatcher.send("custom-n", n=5)  # goes out after the buffered ones
    assert [json.loads(m.body)["n"] for m in drain(tap)] == [0, 1, 2, 3, 4, 5]
    assert len(dispatcher.offline_buffer) == 0
    assert dispatcher.stats.events_sent == 6


def test_offline_buffer_is_bounded_and_counts_drops(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url, offline_buffer_limit=3)
    bus.set_offline()
    for n in range(10):
        dispatcher.send("custom-n", n=n)
    assert len(dispatcher.offline_buffer) == 3
    assert dispatcher.offline_buffer.dropped == 7
    bus.set_offline(False)
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("t"))
    dispatcher.flush()
    assert [json.loads(m.body)["n"] for m in drain(tap)] == [7, 8, 9]


def test_drop_newest_policy_and_byte_bound(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url, offline_buffer_limit=2, offline_drop_policy="drop-newest")
    bus.set_offline()
    for n in range(4):
        dispatcher.send("custom-n", n=n)
    assert [json.loads(m.body)["n"] for m, _ in dispatcher.offline_buffer.take_all()] == [0, 1]
    small = Dispatcher(bus_url, offline_buffer_bytes=400)
    for _ in range(5):
        small.send("custom-n", pad="x" * 150)
    assert small.offline_buffer.bytes <= 400
    assert small.offline_buffer.dropped >= 3


def test_flush_tries_each_item_once_while_still_offline(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url)
    bus.set_offline()
    for n in range(3):
        dispatcher.send("custom-n", n=n)
    failures = dispatcher.stats.publish_failures
    dispatcher.flush()
    assert dispatcher.stats.publish_failures == failures + 1  # stops at the first failure
    assert len(dispatcher.offline_buffer) == 3


def test_batch_that_fails_is_buffered_whole(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=2)
    bus.set_offline()
    dispatcher.send("task-received", uuid="a")
    dispatcher.send("task-started", uuid="a")
    assert len(dispatcher.offline_buffer) == 1
    assert dispatcher.offline_buffer.events == 2
    assert dispatcher.pending_events == 2


def test_without_buffering_a_failed_publish_raises(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url, buffer_while_offline=False)
    bus.set_offline()
    with pytest.raises(evcore.ConnectionLost):
        dispatcher.send("worker-online")


def test_retry_publishes_once_the_broker_is_back(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url)
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("t"))
    bus.set_offline()
    threading.Timer(0.1, bus.set_offline, (False,)).start()
    tap_after: list[Subscription] = []
    threading.Timer(
        0.15,
        lambda: tap_after.append(
            evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("t2"))
        ),
    ).start()
    policy = {"max_retries": 20, "interval_start": 0.05, "interval_step": 0.0}
    dispatcher.send("worker-heartbeat", retry=True, retry_policy=policy)
    assert len(dispatcher.offline_buffer) == 0
    assert dispatcher.stats.events_sent == 1
    del tap


def test_extend_buffer_moves_undelivered_events(bus_url: str, bus: MemoryBus) -> None:
    old, new = Dispatcher(bus_url), Dispatcher(bus_url)
    bus.set_offline()
    old.send("custom-n", n=1)
    new.extend_buffer(old)
    assert len(old.offline_buffer) == 0
    assert len(new.offline_buffer) == 1


def test_concurrent_sends_during_flush_are_never_lost(bus_url: str, tap: Subscription) -> None:
    dispatcher = Dispatcher(bus_url, buffer_group={"task"}, buffer_limit=7)
    per_thread = 500

    def send_many(tag: int) -> None:
        for n in range(per_thread):
            dispatcher.send("task-started", uuid=f"{tag}-{n}")
            if n % 50 == 0:
                dispatcher.flush()

    threads = [threading.Thread(target=send_many, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dispatcher.flush()
    uuids = [e["uuid"] for m in drain(tap) for e in json.loads(m.body)]
    assert len(uuids) == 4 * per_thread
    assert len(set(uuids)) == 4 * per_thread
    for tag in range(4):  # each sender's events keep their order
        own = [int(u.split("-")[1]) for u in uuids if u.startswith(f"{tag}-")]
        assert own == sorted(own)


def test_enable_disable_callbacks_and_close(bus_url: str, tap: Subscription) -> None:
    calls: list[str] = []
    dispatcher = Dispatcher(bus_url, enabled=False, buffer_group={"task"})
    dispatcher.on_enabled.add(lambda: calls.append("on"))
    dispatcher.on_disabled.add(lambda: calls.append("off"))
    dispatcher.enable()
    dispatcher.send("task-started", uuid="a")
    dispatcher.disable()  # closing publishes the pending batch
    assert calls == ["on", "off"]
    assert [m.routing_key for m in drain(tap)] == ["task.multi"]
    assert dispatcher.send("worker-online") is None


def test_close_keeps_what_it_could_not_deliver(bus_url: str, bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus_url)
    bus.set_offline()
    dispatcher.send("custom-n", n=1)
    dispatcher.close()
    assert dispatcher.send("custom-n", n=2) is None
    bus.set_offline(False)
    tap = evcore.connect(bus_url).subscribe(EXCHANGE, "#", QueueOptions("t"))
    dispatcher.enable()
    dispatcher.flush()
    assert [json.loads(m.body)["n"] for m in drain(tap)] == [1]


def test_context_manager_closes_an_owned_transport(bus_url: str) -> None:
    with Dispatcher(bus_url) as dispatcher:
        pass
    with pytest.raises(evcore.ConnectionLost):
        dispatcher.transport.publish(EXCHANGE, [])


def test_only_json_is_offered() -> None:
    with pytest.raises(ValueError, match="pickle"):
        Dispatcher("memory://", serializer="pickle")


def test_sql_driver_disables_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="evcore.dispatcher")
    dispatcher = Dispatcher("fakesql://rules")
    assert dispatcher.enabled is False
    assert dispatcher.disabled_reason is not None
    assert dispatcher.send("worker-online") is None
    assert dispatcher.publish("task-sent", {"uuid": "u"}) is None
    dispatcher.enable()
    assert dispatcher.enabled is False
    warnings = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(warnings) == 1
    assert "sql" in warnings[0].getMessage()


def test_redis_driver_uses_a_fanout_exchange() -> None:
    dispatcher = Dispatcher("fakeredis://rules")
    assert dispatcher.exchange == Exchange("celeryev", "fanout")
    assert Dispatcher("memory://").exchange.type == "topic"
    assert Dispatcher("memory://", exchange="other").exchange.name == "other"


def test_a_transport_that_cannot_broadcast_disables_events(bus_url: str) -> None:
    from dataclasses import replace

    transport = evcore.connect(bus_url)
    transport.capabilities = replace(transport.capabilities, broadcast=False)  # type: ignore[misc]
    dispatcher = Dispatcher(transport)
    assert dispatcher.enabled is False
    assert dispatcher.disabled_reason is not None
    assert "broadcast" in dispatcher.disabled_reason
    with pytest.raises(evcore.EventsDisabled, match="broadcast"):
        evcore.Receiver(transport)


def test_batches_split_to_fit_a_transports_body_limit_and_larger_events_are_refused(
    bus_url: str,
) -> None:
    from dataclasses import replace

    transport = evcore.connect(bus_url)
    transport.capabilities = replace(transport.capabilities, max_body_size=600)  # type: ignore[misc]
    tap = transport.subscribe(EXCHANGE, "#", QueueOptions("tap"))
    dispatcher = Dispatcher(transport, hostname="w1@limit", buffer_group={"task"}, buffer_limit=8)
    sent = [dispatcher.send("task-received", uuid=f"t{n}", pad="x" * 40) for n in range(8)]
    assert all(event is not None for event in sent)
    assert dispatcher.send("task-failed", uuid="big", traceback="x" * 700) is None
    assert dispatcher.send("worker-online", blob="y" * 700) is None
    assert dispatcher.publish("task-sent", {"uuid": "huge", "args": "z" * 700}) is None
    dispatcher.flush()

    messages = drain(tap)
    assert len(messages) > 1, "the batch was not split"
    assert all(len(m.body) <= 600 for m in messages)
    events = [event for m in messages for event in json.loads(m.body)]
    assert [event["uuid"] for event in events] == [f"t{n}" for n in range(8)]
    seqs = [m.headers["evcore-seq"] for m in messages]
    counts = [len(json.loads(m.body)) for m in messages]
    assert seqs == [1 + sum(counts[:i]) for i in range(len(counts))]
    assert dispatcher.stats.events_too_large == 3
    assert dispatcher.stats.events_sent == 8
    transport.close()
