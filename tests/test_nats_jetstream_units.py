"""The JetStream adapter's pure parts: group ownership, stream layout, positions, options."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evcore.errors import InvalidURL
from evcore_nats import JetStreamTransport, parse_settings
from evcore_nats.groups import GroupState, group_key, plan, release
from evcore_nats.jetstream import layout_for, sequence_of
from evcore_nats.settings import JETSTREAM_OPTIONS


def rebalance(state: GroupState, members: list[str], now: float, partitions: int) -> None:
    """Every member applies the rule once, in turn, giving up its extra partitions."""
    for member in members:
        owned = frozenset(p for p, (o, _) in state.leases.items() if o == member)
        outcome = plan(state, member, owned, partitions, now, lease=10.0)
        release(state, member, outcome.extra)


@settings(max_examples=200)
@given(st.integers(1, 64), st.integers(1, 9))
def test_members_end_up_splitting_every_partition_fairly(partitions: int, count: int) -> None:
    state = GroupState()
    members = [f"m{i}" for i in range(count)]
    for _ in range(3):
        rebalance(state, members, now=100.0, partitions=partitions)
    assert sorted(state.leases) == list(range(partitions))
    fair = math.ceil(partitions / count)
    load = [sum(1 for o, _ in state.leases.values() if o == m) for m in members]
    assert max(load) <= fair


def test_a_dead_member_loses_its_partitions_after_its_lease() -> None:
    state = GroupState()
    rebalance(state, ["a"], now=0.0, partitions=4)
    assert {o for o, _ in state.leases.values()} == {"a"}
    outcome = plan(state, "b", frozenset(), 4, now=5.0, lease=10.0)
    assert outcome.taken == frozenset()  # a is still alive
    outcome = plan(state, "b", frozenset(), 4, now=10.5, lease=10.0)
    assert outcome.taken == frozenset(range(4))
    back = plan(state, "a", frozenset(range(4)), 4, now=10.6, lease=10.0)
    assert back.lost == frozenset(range(4)) and back.keep == frozenset()


def test_a_member_with_too_many_gives_the_extra_up_and_keeps_the_rest() -> None:
    state = GroupState()
    rebalance(state, ["a"], now=0.0, partitions=4)
    plan(state, "b", frozenset(), 4, now=1.0, lease=10.0)
    outcome = plan(state, "a", frozenset(range(4)), 4, now=1.0, lease=10.0)
    assert outcome.keep == frozenset({0, 1}) and outcome.extra == frozenset({2, 3})
    assert all(state.leases[p][0] == "a" for p in (2, 3)), "kept until its consumer is told"
    release(state, "a", outcome.extra)
    assert plan(state, "b", frozenset(), 4, now=1.1, lease=10.0).taken == frozenset({2, 3})


def test_the_record_survives_encoding_and_garbage_reads_as_empty() -> None:
    state = GroupState({"a": 12.5}, {0: ("a", 12.5), 3: ("a", 12.5)})
    assert GroupState.decode(state.encode()) == state
    for raw in (None, b"", b"{", b"[1]", b'{"members": 1, "leases": {}}'):
        assert GroupState.decode(raw) == GroupState()
    release(state, "a")
    assert state == GroupState()


@given(st.text(max_size=40))
def test_group_keys_and_stream_names_are_plain_whatever_the_name(name: str) -> None:
    key = group_key(name)
    assert key.isascii() and key.isalnum() and len(key) == 25
    layout = layout_for(parse_settings("nats://"), name)
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in layout.stream)
    subject = layout.subject(3, "task.received")
    assert subject.startswith("evstream.") and subject.endswith(".3.task.received")
    assert layout.partition_and_key(subject) == (3, "task.received")


def test_distinct_exchanges_get_distinct_streams() -> None:
    settings_ = parse_settings("nats://")
    names = {layout_for(settings_, name).stream for name in ("a.b", "a_b", "a b", "a/b")}
    assert len(names) == 4


def test_positions_come_from_acknowledgement_subjects() -> None:
    assert sequence_of("$JS.ACK.stream.consumer.1.42.7.1796013814991543766.0") == 42
    assert sequence_of("$JS.ACK.domain.acchash.stream.consumer.1.42.7.17960138.0.tok") == 42
    assert sequence_of("_INBOX.abc") == 0
    assert sequence_of("$JS.ACK.s.c.1.x.7.1.0") == 0


@pytest.mark.parametrize(
    "url",
    [
        "jetstream://h?partitions=0",
        "jetstream://h?partitions=5000",
        "jetstream://h?storage=tape",
        "jetstream://h?stream_prefix=a.b",
        "jetstream://h?max_age=-1",
        "jetstream://h?batch=0",
        "nats://h?partitions=4",
    ],
)
def test_bad_jetstream_urls(url: str) -> None:
    with pytest.raises(InvalidURL):
        JetStreamTransport.from_url(url)


def test_jetstream_options() -> None:
    transport = JetStreamTransport.from_url(
        "jetstream://127.0.0.1:4333?partitions=8&max_msgs=100&max_age=3600&storage=memory"
    )
    assert transport.capabilities.durable and transport.capabilities.partitions == 8
    assert transport.settings.extra["max_age"] == 3600.0
    assert set(transport.settings.extra) <= set(JETSTREAM_OPTIONS)
    transport.close()
