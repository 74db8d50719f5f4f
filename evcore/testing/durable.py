"""The durable section of the conformance suite: streams, positions, groups, retention.

:class:`DurableConformance` is mixed into :class:`~evcore.testing.TransportConformance`;
its checks run only for transports whose capabilities declare ``durable`` and are skipped,
saying so, for the others. Every check uses an exchange and a consumer group of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import pytest

from evcore.registry import load_factory, scheme_of
from evcore.testing.harness import unique_name
from evcore.transport import (
    EARLIEST,
    EVERY_PARTITION,
    FANOUT,
    LATEST,
    DurableTransport,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    StreamOptions,
    StreamSubscription,
    Transport,
)

__all__ = ["DurableConformance"]


def _stream_exchange() -> Exchange:
    return Exchange(unique_name("evconf.s"), FANOUT, durable=False, auto_delete=True)


def _numbered(prefix: str, count: int, partition: int) -> list[OutgoingMessage]:
    return [
        OutgoingMessage("task.received", f"{prefix}-{i:04d}".encode(), partition=partition)
        for i in range(count)
    ]


def _drain(
    subscriptions: Sequence[StreamSubscription],
    until: Callable[[list[IncomingMessage]], bool],
    timeout: float,
) -> list[IncomingMessage]:
    """Receive from every subscription in turn until ``until(received)`` or the timeout."""
    received: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while not until(received) and time.monotonic() < deadline:
        for subscription in subscriptions:
            received.extend(subscription.receive(timeout=0.05))
    return received


class DurableConformance:
    """Checks of the durable side of the protocol (see ``docs/writing-a-transport.md``)."""

    #: Seconds of the lease the group checks use; a dead member's partitions move after it.
    stream_lease: float = 1.0
    #: A URL of your scheme whose streams keep at most ``retention_maxlen`` messages per
    #: partition (approximately, if the broker trims lazily); None skips the retention check.
    retention_url: str | None = None
    retention_maxlen: int = 50
    delivery_timeout: float = 10.0

    # Provided by TransportConformance.
    _opened: list[Any]

    def connect_transport(self) -> Transport:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------

    def durable_transport(self, url: str | None = None) -> DurableTransport:
        """A new transport (from ``url`` when given), skipping the check unless durable."""
        if url is None:
            transport = self.connect_transport()
        else:
            transport = load_factory(scheme_of(url)).from_url(url)
            self._opened.append(transport)
        if not transport.capabilities.durable:
            pytest.skip(f"{transport.driver_type!r} transport does not declare durable streams")
        return cast(DurableTransport, transport)

    def open_stream(
        self, transport: DurableTransport, exchange: Exchange, **options: Any
    ) -> StreamSubscription:
        """A stream subscription, closed when the check ends."""
        options.setdefault("lease", self.stream_lease)
        subscription = transport.subscribe_stream(exchange, "#", StreamOptions(**options))
        self._opened.append(subscription)
        return subscription

    # -- the checks -------------------------------------------------------------------

    def test_durable_replay_from_earliest(self) -> None:
        """A reader starting at the earliest position gets every retained message, each
        partition in append order, with its partition and a position; a message for every
        partition is in each of them."""
        transport = self.durable_transport()
        count = transport.capabilities.partitions
        exchange = _stream_exchange()
        sent = [m for p in range(count) for m in _numbered(f"p{p}", 5, p)]
        transport.publish(exchange, sent)
        transport.publish(
            exchange, [OutgoingMessage("worker.heartbeat", b"hb", partition=EVERY_PARTITION)]
        )
        reader = self.open_stream(transport, exchange, start=EARLIEST)
        got = _drain([reader], lambda r: len(r) >= len(sent) + count, self.delivery_timeout)
        for partition in range(count):
            mine = [m.body for m in got if m.partition == partition]
            expected = [f"p{partition}-{i:04d}".encode() for i in range(5)] + [b"hb"]
            assert mine == expected, f"partition {partition} replayed {mine}"
        assert all(m.position is not None for m in got), "every message needs a position"
        assert reader.assignment() == frozenset(range(count))

    def test_durable_append_times_when_given(self) -> None:
        """A transport that sets ``appended_at`` sets it to when the broker stored the
        message: between just before the publish and just after (a minute of clock
        difference allowed), never decreasing along a partition."""
        transport = self.durable_transport()
        exchange = _stream_exchange()
        before = time.time()
        transport.publish(exchange, _numbered("t", 5, 0))
        reader = self.open_stream(transport, exchange, start=EARLIEST)
        got = _drain([reader], lambda r: len(r) >= 5, self.delivery_timeout)
        after = time.time()
        times = [m.appended_at for m in got if m.partition == 0]
        if all(t is None for t in times):
            pytest.skip(f"{transport.driver_type!r} transport does not set appended_at")
        assert None not in times, f"appended_at set on some messages only: {times}"
        stamps = cast(list[float], times)
        assert all(before - 60 <= t <= after + 60 for t in stamps), (before, stamps, after)
        assert stamps == sorted(stamps), f"appended_at went back in time: {stamps}"

    def test_durable_latest_skips_history(self) -> None:
        """A reader starting at the latest position gets only what is appended after it."""
        transport = self.durable_transport()
        exchange = _stream_exchange()
        transport.publish(exchange, _numbered("old", 3, 0))
        reader = self.open_stream(transport, exchange, start=LATEST)
        reader.receive(timeout=0.2)
        transport.publish(exchange, _numbered("new", 3, 0))
        got = _drain([reader], lambda r: len(r) >= 3, self.delivery_timeout)
        assert [m.body for m in got] == [f"new-{i:04d}".encode() for i in range(3)]

    def test_durable_resume_after_a_position(self) -> None:
        """Positions handed back in ``start`` resume just after those messages."""
        transport = self.durable_transport()
        exchange = _stream_exchange()
        count = transport.capabilities.partitions
        transport.publish(exchange, [m for p in range(count) for m in _numbered(f"p{p}", 6, p)])
        first = self.open_stream(transport, exchange, start=EARLIEST)
        got = _drain([first], lambda r: len(r) >= 6 * count, self.delivery_timeout)
        resume = {p: [m for m in got if m.partition == p][2].position or "" for p in range(count)}
        second = self.open_stream(transport, exchange, start=resume)
        rest = _drain([second], lambda r: len(r) >= 3 * count, self.delivery_timeout)
        for partition in range(count):
            bodies = [m.body for m in rest if m.partition == partition]
            assert bodies == [f"p{partition}-{i:04d}".encode() for i in range(3, 6)]

    def test_durable_group_members_split_the_partitions(self) -> None:
        """Two members of one group own disjoint partitions covering all of them, and each
        message reaches exactly one of them."""
        transport = self.durable_transport()
        count = transport.capabilities.partitions
        if count < 2:
            pytest.skip("the stream has a single partition: nothing to split")
        exchange = _stream_exchange()
        group = unique_name("evconf.g")
        first = self.open_stream(transport, exchange, group=group, member="a", start=EARLIEST)
        second = self.open_stream(transport, exchange, group=group, member="b", start=EARLIEST)
        sent = [m for p in range(count) for m in _numbered(f"p{p}", 4, p)]
        deadline = time.monotonic() + self.delivery_timeout
        got: dict[str, list[IncomingMessage]] = {"a": [], "b": []}
        transport.publish(exchange, sent)
        while time.monotonic() < deadline:
            for name, member in (("a", first), ("b", second)):
                received = member.receive(timeout=0.05)
                got[name].extend(received)
                member.ack(received)
            owned = (first.assignment(), second.assignment())
            if owned[0] and owned[1] and len(got["a"]) + len(got["b"]) >= len(sent):
                break
        a, b = first.assignment(), second.assignment()
        assert a and b and not a & b and a | b == frozenset(range(count)), (a, b)
        bodies_a = {m.body for m in got["a"]}
        bodies_b = {m.body for m in got["b"]}
        assert not bodies_a & bodies_b, "a message reached both members"
        assert bodies_a | bodies_b == {m.body for m in sent}

    def _takeover(self, dies: Callable[[StreamSubscription], None]) -> None:
        transport = self.durable_transport()
        count = transport.capabilities.partitions
        exchange = _stream_exchange()
        group = unique_name("evconf.g")
        transport.publish(exchange, [m for p in range(count) for m in _numbered(f"p{p}", 6, p)])
        first = self.open_stream(transport, exchange, group=group, member="a", start=EARLIEST)
        read = _drain([first], lambda r: len(r) >= 6 * count, self.delivery_timeout)
        assert first.assignment() == frozenset(range(count))
        # Acknowledge the first two of each partition only.
        first.ack([m for m in read if m.body.endswith((b"-0000", b"-0001"))])
        dies(first)
        second = self.open_stream(transport, exchange, group=group, member="b", start=LATEST)
        got = _drain(
            [second],
            lambda r: second.assignment() == frozenset(range(count)) and len(r) >= 4 * count,
            self.stream_lease * 3 + self.delivery_timeout,
        )
        assert second.assignment() == frozenset(range(count))
        for partition in range(count):
            bodies = [m.body for m in got if m.partition == partition]
            assert bodies == [f"p{partition}-{i:04d}".encode() for i in range(2, 6)], (
                f"partition {partition}: the new owner must re-read exactly what was not "
                f"acknowledged, got {bodies}"
            )

    def test_durable_dead_member_is_taken_over_after_its_lease(self) -> None:
        """A member that stops reading (dead) loses its partitions after its lease; the new
        owner re-reads what it did not acknowledge, and nothing it did."""
        self._takeover(lambda member: None)

    def test_durable_closed_member_hands_over_unacknowledged_messages(self) -> None:
        """A member closing without acknowledging leaves those messages to the next owner."""
        self._takeover(lambda member: member.close())

    def test_durable_assignment_callbacks(self) -> None:
        """``on_assigned`` is told of new partitions and may place their start; ``on_revoked``
        is told before they go (here: on close)."""
        transport = self.durable_transport()
        exchange = _stream_exchange()
        count = transport.capabilities.partitions
        transport.publish(exchange, [m for p in range(count) for m in _numbered(f"p{p}", 3, p)])
        assigned: list[frozenset[int]] = []
        revoked: list[frozenset[int]] = []
        probe = self.open_stream(transport, exchange, start=EARLIEST)
        history = _drain([probe], lambda r: len(r) >= 3 * count, self.delivery_timeout)
        after_first: Mapping[int, str] = {
            p: next(m for m in history if m.partition == p).position or "" for p in range(count)
        }

        def on_assigned(partitions: frozenset[int]) -> Mapping[int, str]:
            assigned.append(partitions)
            return {p: after_first[p] for p in partitions}

        member = self.open_stream(
            transport,
            exchange,
            group=unique_name("evconf.g"),
            start=LATEST,
            on_assigned=on_assigned,
            on_revoked=revoked.append,
        )
        got = _drain([member], lambda r: len(r) >= 2 * count, self.delivery_timeout)
        assert frozenset().union(*assigned) == frozenset(range(count))
        assert sorted(m.body for m in got) == sorted(
            f"p{p}-{i:04d}".encode() for p in range(count) for i in (1, 2)
        )
        member.close()
        assert frozenset().union(*revoked) == frozenset(range(count))

    def test_durable_retention_bounds_and_counts_the_loss(self) -> None:
        """Retention keeps the newest messages; a reader whose position fell out of the
        window continues at the oldest retained one and counts the gap in ``trimmed``."""
        if self.retention_url is None:
            pytest.skip("no retention_url given for the retention check")
        transport = self.durable_transport(self.retention_url)
        exchange = _stream_exchange()
        limit = self.retention_maxlen
        transport.publish(exchange, _numbered("r", 1, 0))
        reader = self.open_stream(transport, exchange, start=EARLIEST)
        first = _drain([reader], lambda r: len(r) >= 1, self.delivery_timeout)
        assert [m.body for m in first] == [b"r-0000"]
        total = limit * 4
        for start in range(0, total, 10):
            batch = [
                OutgoingMessage("task.received", f"r-{i:04d}".encode(), partition=0)
                for i in range(start + 1, min(start + 11, total + 1))
            ]
            transport.publish(exchange, batch)
        later = [
            m.body
            for m in _drain(
                [reader],
                lambda r: any(m.body == f"r-{total:04d}".encode() for m in r),
                self.delivery_timeout,
            )
        ]
        assert later[-limit:] == [
            f"r-{i:04d}".encode() for i in range(total - limit + 1, total + 1)
        ]
        assert len(later) < total, "retention kept more than its bound allows"
        assert reader.trimmed >= 1, "a reader that fell behind retention must count it"
        assert reader.trimmed <= total - len(later)
