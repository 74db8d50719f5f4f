"""JetStream with evcore's Dispatcher, Receiver and State against real servers: a group of
monitors whose States add up to one State, and a server killed and restarted mid-run that
loses nothing it acknowledged (file store, a private nats-server)."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _nats_support import PrivateNats, delete_streams, private_nats
from _net import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import make_events, sendable
from evcore import Dispatcher, Receiver
from evcore.state import State
from evcore.state.merge import merge_snapshots
from evcore.state.snapshot import snapshot
from evcore.transport import EARLIEST, StreamOptions
from evcore_nats import JetStreamSubscription

pytestmark = [pytest.mark.nats, pytest.mark.durable]

PREFIX = f"evtest{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def stream_url(nats_url: str) -> Iterator[str]:
    url = nats_url.replace("nats://", "jetstream://", 1)
    yield f"{url}?partitions=4&stream_prefix={PREFIX}&storage=memory"
    delete_streams(nats_url, PREFIX)


def state_reader(url: str, exchange: str, **options: Any) -> tuple[State, Receiver]:
    state = State(max_tasks_in_memory=None)
    receiver = Receiver(
        url,
        exchange=exchange,
        handlers={"*": state.event},
        on_loss=state.record_loss,
        stream=StreamOptions(start=EARLIEST, **options),
    )
    return state, receiver


def comparable(state: State) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tasks and workers by key, without what depends on when this reader received them."""

    def clean(record: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in record.items() if k not in ("local_received", "heartbeats")}
        if "heartbeats" in record:
            kept["heartbeats"] = len(record["heartbeats"])
        return kept

    data = snapshot(state)
    return (
        {task["uuid"]: clean(task) for task in data["tasks"]},
        {worker["hostname"]: clean(worker) for worker in data["workers"]},
    )


def test_a_group_of_two_monitors_adds_up_to_one_that_read_everything(
    stream_url: str, exchange_name: str
) -> None:
    events = sendable(make_events(120, seed=5))
    with Dispatcher(
        stream_url, hostname="w1@js", exchange=exchange_name, buffer_group=("task",)
    ) as dispatcher:
        for type_, fields in events:
            dispatcher.send(type_, **fields)

    single, receiver = state_reader(stream_url, exchange_name)
    assert wait_for(lambda: receiver.capture(timeout=0.2) == 0 and single.event_count > 0, 20)
    receiver.close()

    members = [
        state_reader(stream_url, exchange_name, group="g", member=f"m{i}", lease=1.0)
        for i in range(2)
    ]
    for _ in range(100):
        handled = sum(member.capture(timeout=0.05) for _, member in members)
        if handled == 0 and all(member.assignment() for _, member in members):
            break
    owned = [member.assignment() for _, member in members]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == frozenset(range(4))
    for _, member in members:
        assert not member.stats.lost_events
    union = State.from_json(
        merge_snapshots(snapshot(state) for state, _ in members), max_tasks_in_memory=None
    )
    for _, member in members:
        member.close()
    assert single.event_count >= len(events)
    assert comparable(union) == comparable(single)


def test_a_killed_server_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """Appends confirmed before a kill -9 are all there after the restart, and a group
    member resumes after what it acknowledged: every event applied once."""
    total = 3000
    with private_nats(store_dir=tmp_path / "store") as server:
        url = f"{server.url.replace('nats://', 'jetstream://')}?partitions=4&connect_timeout=1"
        seen: list[int] = []
        first = Receiver(
            url,
            exchange="ev",
            handlers={"*": lambda event: seen.append(event["n"])},
            stream=StreamOptions(group="g", member="m1", lease=1.0, start=EARLIEST),
        )
        dispatcher = Dispatcher(url, hostname="w1@restart", exchange="ev")
        sender = threading.Thread(target=send_all, args=(dispatcher, total, server))
        sender.start()
        handled_first = first.capture(limit=total // 3, timeout=20)
        applied = first.positions()
        first.close()  # acknowledges nothing more: its partitions resume after their floor
        sender.join(60)
        assert not sender.is_alive()
        assert dispatcher.pending_events == 0
        assert dispatcher.stats.publish_failures >= 1, "the kill happened mid-run"
        dispatcher.close()

        second = Receiver(
            url,
            exchange="ev",
            handlers={"*": lambda event: seen.append(event["n"])},
            stream=StreamOptions(group="g", member="m2", lease=1.0, start=EARLIEST),
        )
        done = lambda: second.capture(timeout=0.3) == 0 and len(set(seen)) > total  # noqa: E731
        assert wait_for(done, 30)
        second.close()
    assert applied, "the first member applied something before the restart"
    assert sorted(set(seen)) == list(range(-1, total)), "an acknowledged append went missing"
    # What the first member applied after its last acknowledgement is read again, no more.
    assert len(seen) - (total + 1) <= handled_first
    assert not second.stats.lost_events


def send_all(dispatcher: Dispatcher, total: int, server: PrivateNats) -> None:
    for number in range(total):
        dispatcher.send("task-received", uuid=f"t{number}", n=number)
        if number == total // 2:
            server.stop(kill=True)
            dispatcher.send("task-received", uuid="during", n=-1)  # buffered
            server.start()
    dispatcher.flush()


def test_hostile_exchange_names_get_streams_of_their_own(stream_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    names = [f"{tag}.a", f"{tag}_a", f"{tag} a", f"{tag}.>", f"{tag}*", "ä" + tag]
    for name in names:
        with Dispatcher(stream_url, hostname="w1@js", exchange=name) as dispatcher:
            dispatcher.send("worker-online", name=name)
    for name in names:
        seen: list[str] = []
        with Receiver(
            stream_url,
            exchange=name,
            handlers={"*": lambda event, seen=seen: seen.append(event["name"])},
            stream=StreamOptions(start=EARLIEST),
        ) as receiver:
            subscription = receiver._subscribe()
            assert isinstance(subscription, JetStreamSubscription)
            assert receiver.capture(limit=1, timeout=10) == 1
            rest = lambda r=receiver: r.capture(timeout=0.1) == 0 and r.stats.messages >= 4  # noqa: E731
            assert wait_for(rest)
        # One copy per partition (the extra ones dropped as duplicates), none from the others.
        assert seen == [name], name
        assert receiver.stats.messages == 4 and receiver.stats.duplicates == 3


def test_a_stalled_member_cannot_move_the_groups_position(
    stream_url: str, exchange_name: str
) -> None:
    """A member that stalled past its lease and acknowledges afterwards acknowledges on a
    consumer its successor replaced: the group's position stays where the owners left it."""
    from evcore.transport import FANOUT, Exchange, OutgoingMessage
    from evcore_nats import JetStreamTransport

    transport = JetStreamTransport.from_url(stream_url.replace("partitions=4", "partitions=1"))
    exchange = Exchange(exchange_name, FANOUT)
    transport.publish(exchange, [OutgoingMessage("k", b"m%d" % i) for i in range(6)])

    def member(name: str) -> JetStreamSubscription:
        options = StreamOptions(group="g", member=name, lease=0.5, start=EARLIEST)
        return transport.subscribe_stream(exchange, "#", options)

    def read(subscription: JetStreamSubscription, count: int) -> list[Any]:
        got: list[Any] = []
        wait_for(lambda: bool(got.extend(subscription.receive(0.1))) or len(got) >= count, 10)
        return got

    try:
        stalled = member("a")
        assert len(read(stalled, 6)) == 6
        successor = member("b")
        taken_over = read(successor, 6)  # once a's lease has run out
        assert [m.body for m in taken_over] == [b"m%d" % i for i in range(6)]
        stalled.ack(taken_over[-1:])  # too late: a no longer owns the partition
        successor.close()  # without acknowledging anything
        third = member("c")
        assert [m.body for m in read(third, 6)] == [b"m%d" % i for i in range(6)]
        stalled.close()
        third.close()
    finally:
        transport.close()


def test_a_stream_deleted_under_a_dispatcher_is_made_again_and_nothing_is_lost(
    stream_url: str, exchange_name: str
) -> None:
    from evcore_nats import JetStreamTransport

    admin = JetStreamTransport.from_url(stream_url)
    seen: list[int] = []
    try:
        with Dispatcher(stream_url, hostname="w1@js", exchange=exchange_name) as dispatcher:
            dispatcher.send("task-received", uuid="t0", n=0)
            admin.delete_exchange(exchange_name)
            dispatcher.send("task-received", uuid="t1", n=1)  # no stream: buffered
            assert dispatcher.stats.publish_failures == 1 and dispatcher.pending_events == 1
            dispatcher.send("task-received", uuid="t2", n=2)  # the stream is made again
            assert dispatcher.pending_events == 0
        with Receiver(
            stream_url,
            exchange=exchange_name,
            handlers={"*": lambda event: seen.append(event["n"])},
            stream=StreamOptions(start=EARLIEST),
        ) as receiver:
            receiver.capture(limit=2, timeout=10)
    finally:
        admin.close()
    # The first went with the deleted stream. t1 and t2 sit in different partitions, and a
    # reader of several partitions keeps order within each partition only.
    assert sorted(seen) == [1, 2]


def read_keys(reader: JetStreamSubscription, count: int) -> list[str]:
    got: list[str] = []

    def more() -> bool:
        got.extend(message.routing_key for message in reader.receive(0.2))
        return len(got) >= count

    wait_for(more, 5)
    return got


def test_stream_readers_keep_only_what_their_binding_matches(
    stream_url: str, exchange_name: str
) -> None:
    from evcore.transport import TOPIC, Exchange, OutgoingMessage
    from evcore_nats import JetStreamTransport

    transport = JetStreamTransport.from_url(stream_url)
    exchange = Exchange(exchange_name, TOPIC)
    keys = ["worker", "worker.online", "task.sent", "task.sent.x", "a.worker"]
    try:
        transport.publish(exchange, [OutgoingMessage(k, k.encode(), partition=1) for k in keys])
        for binding, expected in (
            ("worker.#", ["worker", "worker.online"]),
            ("task.*", ["task.sent"]),
            ("#.worker", ["worker", "a.worker"]),
        ):
            reader = transport.subscribe_stream(exchange, binding, StreamOptions(start=EARLIEST))
            got = read_keys(reader, len(expected))
            assert not reader.receive(0.3)
            assert got == expected, binding
            reader.close()
    finally:
        transport.close()
