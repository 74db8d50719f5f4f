"""In-memory durable transport (``memory+stream://NAME?partitions=4``): streams for unit tests.

The durable side of :mod:`evcore.transport` without a broker: every exchange is a set of
partition logs kept in this process, with positions (decimal offsets), retention by length
(``maxlen``) and age (``max_age`` seconds), and consumer groups whose members own partitions
through leases renewed by ``receive()``. A member that stops calling ``receive()`` for longer
than its lease is dead: its partitions, with what it read but did not acknowledge, go to the
others. ``memory+stream://NAME`` names a process-wide stream broker; opening the same name
with other options is refused.

Options: ``partitions`` (default 4), ``maxlen`` (messages kept per partition, default
unbounded), ``max_age`` (seconds, default unbounded).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from evcore.errors import ChannelError, ConnectionLost, InvalidURL, UnsupportedOperation
from evcore.routing import binding_matches
from evcore.transport import (
    DIRECT,
    EARLIEST,
    EVERY_PARTITION,
    FANOUT,
    LATEST,
    TOPIC,
    Capabilities,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
    StreamOptions,
)
from evcore_adapter_helpers.subscriptions import OpenSubscriptions

__all__ = ["MemoryStreamBroker", "MemoryStreamSubscription", "MemoryStreamTransport"]

DEFAULT_PARTITIONS = 4
#: Most messages one ``receive()`` hands back.
RECEIVE_BATCH = 5_000


@dataclass(eq=False)
class _Log:
    """One partition: entries ``first`` .. ``first + len(entries) - 1``."""

    entries: deque[tuple[float, IncomingMessage]] = field(default_factory=deque)
    first: int = 0

    @property
    def end(self) -> int:
        return self.first + len(self.entries)


@dataclass(eq=False)
class _Group:
    #: member -> lease expiry (monotonic seconds).
    members: dict[str, float] = field(default_factory=dict)
    #: partition -> (owner, lease expiry).
    leases: dict[int, tuple[str, float]] = field(default_factory=dict)
    #: partition -> acknowledged offset (the next owner resumes after it).
    acked: dict[int, int] = field(default_factory=dict)


class MemoryStreamBroker:
    """Partition logs per exchange and consumer groups behind one lock."""

    def __init__(
        self,
        name: str = "",
        partitions: int = DEFAULT_PARTITIONS,
        maxlen: int | None = None,
        max_age: float | None = None,
    ) -> None:
        self.name = name
        self.partitions = partitions
        self.maxlen = maxlen
        self.max_age = max_age
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self._exchange_types: dict[str, str] = {}
        self._logs: dict[str, list[_Log]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self.offline = False

    def set_offline(self, offline: bool = True) -> None:
        """Simulate a broker outage: appending and reading raise ConnectionLost until
        ``False`` brings the broker back (with everything it kept)."""
        with self.lock:
            self.offline = offline
            self.arrived.notify_all()

    def check_online(self) -> None:
        if self.offline:
            raise ConnectionLost(f"memory stream broker {self.name or 'default'!r} is offline")

    # -- the logs (callers hold the lock) -------------------------------------------------

    def logs(self, exchange: Exchange) -> list[_Log]:
        if exchange.type not in (TOPIC, FANOUT, DIRECT):
            raise UnsupportedOperation(f"exchange type {exchange.type!r} is not supported")
        known = self._exchange_types.setdefault(exchange.name, exchange.type)
        if known != exchange.type:
            raise ChannelError(
                f"exchange {exchange.name!r} is already declared with type {known!r}, "
                f"cannot redeclare it as {exchange.type!r}"
            )
        logs = self._logs.get(exchange.name)
        if logs is None:
            logs = self._logs[exchange.name] = [_Log() for _ in range(self.partitions)]
        return logs

    def group(self, exchange: str, name: str) -> _Group:
        group = self._groups.get((exchange, name))
        if group is None:
            group = self._groups[(exchange, name)] = _Group()
        return group

    def trim(self, log: _Log, now: float) -> None:
        entries = log.entries
        if self.maxlen is not None:
            while len(entries) > self.maxlen:
                entries.popleft()
                log.first += 1
        if self.max_age is not None:
            oldest = now - self.max_age
            while entries and entries[0][0] < oldest:
                entries.popleft()
                log.first += 1

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        now = time.monotonic()
        appended = time.time()
        with self.lock:
            self.check_online()
            logs = self.logs(exchange)
            count = self.partitions
            for message in messages:
                partition = 0 if message.partition is None else message.partition
                if partition == EVERY_PARTITION:
                    targets: Iterable[int] = range(count)
                elif 0 <= partition < count:
                    targets = (partition,)
                else:
                    raise ChannelError(
                        f"partition {partition} is out of range: the stream has {count}"
                    )
                for target in targets:
                    log = logs[target]
                    log.entries.append(
                        (
                            now,
                            IncomingMessage(
                                body=message.body,
                                routing_key=message.routing_key,
                                exchange=exchange.name,
                                content_type=message.content_type,
                                content_encoding=message.content_encoding,
                                headers=dict(message.headers),
                                partition=target,
                                position=str(log.end),
                                appended_at=appended,
                            ),
                        )
                    )
                    self.trim(log, now)
            self.arrived.notify_all()

    def retained(self, exchange: str, partition: int) -> int:
        """How many messages a partition of ``exchange`` keeps now (for tests and tools)."""
        with self.lock:
            logs = self._logs.get(exchange)
            return 0 if logs is None else len(logs[partition].entries)


_brokers: dict[str, MemoryStreamBroker] = {}
_brokers_lock = threading.Lock()


def get_broker(
    name: str = "",
    partitions: int = DEFAULT_PARTITIONS,
    maxlen: int | None = None,
    max_age: float | None = None,
) -> MemoryStreamBroker:
    """The process-wide stream broker called ``name``, created with these options."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryStreamBroker(name, partitions, maxlen, max_age)
        elif (broker.partitions, broker.maxlen, broker.max_age) != (partitions, maxlen, max_age):
            raise InvalidURL(
                f"memory+stream://{name} is already open with partitions={broker.partitions}, "
                f"maxlen={broker.maxlen}, max_age={broker.max_age}"
            )
        return broker


def _routes(exchange_type: str, binding_key: str, routing_key: str) -> bool:
    if exchange_type == FANOUT:
        return True
    if exchange_type == DIRECT:
        return binding_key == routing_key
    return binding_matches(binding_key, routing_key)


class MemoryStreamSubscription:
    """A member's reader over the partitions it owns (or all of them, without a group)."""

    def __init__(
        self,
        transport: MemoryStreamTransport,
        exchange: Exchange,
        binding_key: str,
        options: StreamOptions,
        member: str,
    ) -> None:
        self._transport = transport
        self._broker = transport.broker
        self._exchange = exchange
        self._binding_key = binding_key
        self._options = options
        self.member = member
        #: partition -> next offset to read.
        self._cursors: dict[int, int] = {}
        self._trimmed = 0
        self._closed = threading.Event()
        with self._broker.lock:
            self._logs = self._broker.logs(exchange)
            self._group = (
                None if options.group is None else self._broker.group(exchange.name, options.group)
            )
            if self._group is not None:
                self._group.members[member] = time.monotonic() + options.lease
        if self._group is None:
            self._assign(frozenset(range(self._broker.partitions)))

    @property
    def trimmed(self) -> int:
        return self._trimmed

    def assignment(self) -> frozenset[int]:
        return frozenset(self._cursors)

    # -- ownership ------------------------------------------------------------------------

    def _assign(self, partitions: frozenset[int]) -> None:
        """Place the cursors of newly owned partitions: the consumer's choice, else the
        group's acknowledged position, else ``start``."""
        if not partitions:
            return
        chosen: Mapping[int, str] = {}
        if self._options.on_assigned is not None:
            chosen = self._options.on_assigned(partitions) or {}
        start = self._options.start
        with self._broker.lock:
            for partition in partitions:
                log = self._logs[partition]
                where = chosen.get(partition)
                acked = None if self._group is None else self._group.acked.get(partition)
                if where is None and acked is not None:
                    cursor = acked + 1
                else:
                    if where is None and isinstance(start, Mapping):
                        where = start.get(partition, EARLIEST)
                    elif where is None:
                        where = start
                    cursor = self._cursor_at(log, where)
                self._cursors[partition] = cursor

    def _cursor_at(self, log: _Log, where: str) -> int:
        if where == EARLIEST:
            return log.first
        if where == LATEST:
            return log.end
        try:
            return int(where) + 1
        except ValueError:
            raise ChannelError(f"not a memory stream position: {where!r}") from None

    def _rebalance(self) -> None:
        """Renew this member's leases, then give up or take partitions so that each live
        member owns at most ceil(partitions / members)."""
        group = self._group
        if group is None:
            return
        broker = self._broker
        lease = self._options.lease
        with broker.lock:
            now = time.monotonic()
            group.members[self.member] = now + lease
            for member, expiry in list(group.members.items()):
                if expiry < now:
                    del group.members[member]
            for partition, (owner, expiry) in list(group.leases.items()):
                if expiry < now or owner not in group.members:
                    del group.leases[partition]
            mine = sorted(p for p, (owner, _) in group.leases.items() if owner == self.member)
            lost = frozenset(self._cursors) - frozenset(mine)
            fair = math.ceil(broker.partitions / len(group.members))
            extra = frozenset(mine[fair:])
            keep = mine[:fair]
            for partition in keep:
                group.leases[partition] = (self.member, now + lease)
            free = [p for p in range(broker.partitions) if p not in group.leases]
            taken = frozenset(free[: max(0, fair - len(keep))])
            for partition in taken:
                group.leases[partition] = (self.member, now + lease)
        if lost or extra:
            self._revoke(lost | extra)
        if extra:
            with broker.lock:
                for partition in extra:
                    if group.leases.get(partition, ("",))[0] == self.member:
                        del group.leases[partition]
        self._assign(taken)

    def _revoke(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self._cursors.pop(partition, None)
        if self._options.on_revoked is not None:
            self._options.on_revoked(partitions)

    # -- reading --------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        deadline = None if timeout is None else time.monotonic() + timeout
        broker = self._broker
        while True:
            if self._closed.is_set():
                return []
            if self._transport.closed:
                raise ConnectionLost("memory stream transport is closed")
            self._rebalance()
            with broker.lock:
                broker.check_online()
                out = self._read()
                if out:
                    return out
                wait = self._options.lease / 4
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    wait = min(wait, left)
                broker.arrived.wait(wait)

    def _read(self) -> list[IncomingMessage]:
        """Messages after each cursor, oldest partition entries first (lock held)."""
        out: list[IncomingMessage] = []
        now = time.monotonic()
        exchange_type = self._exchange.type
        key = self._binding_key
        everything = exchange_type == FANOUT or key == "#"
        for partition, next_offset in self._cursors.items():
            log = self._logs[partition]
            self._broker.trim(log, now)
            cursor = next_offset
            if cursor < log.first:
                self._trimmed += log.first - cursor
                cursor = log.first
            end = min(log.end, cursor + RECEIVE_BATCH - len(out))
            entries = log.entries
            for index in range(cursor - log.first, end - log.first):
                message = entries[index][1]
                if everything or _routes(exchange_type, key, message.routing_key):
                    out.append(message)
            self._cursors[partition] = end
            if len(out) >= RECEIVE_BATCH:
                break
        return out

    def ack(self, messages: Iterable[IncomingMessage]) -> None:
        group = self._group
        if group is None:
            return
        with self._broker.lock:
            for message in messages:
                if message.partition is None or message.position is None:
                    continue
                owner = group.leases.get(message.partition, ("",))[0]
                if owner != self.member:
                    continue  # no longer ours: the new owner re-reads it
                offset = int(message.position)
                if offset > group.acked.get(message.partition, -1):
                    group.acked[message.partition] = offset

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        owned = frozenset(self._cursors)
        if owned and self._group is not None:
            self._revoke(owned)
        group = self._group
        with self._broker.lock:
            if group is not None:
                group.members.pop(self.member, None)
                for partition, (owner, _) in list(group.leases.items()):
                    if owner == self.member:
                        del group.leases[partition]
            self._broker.arrived.notify_all()
        self._transport._subscriptions.forget(self)


class MemoryStreamTransport:
    """The in-memory durable transport: a handle on one :class:`MemoryStreamBroker`."""

    driver_type = "memory"

    def __init__(self, broker: MemoryStreamBroker | None = None) -> None:
        self.broker = broker if broker is not None else get_broker()
        self.capabilities = Capabilities(
            broadcast=True,
            exact_routing=True,
            exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
            # Its pub/sub side keeps no queue for an absent subscriber: the streams do.
            persistent=False,
            durable=True,
            partitions=self.broker.partitions,
        )
        self._subscriptions: OpenSubscriptions[MemoryStreamSubscription] = OpenSubscriptions()
        self.closed = False
        self._members = 0

    @classmethod
    def from_url(cls, url: str = "memory+stream://", **options: Any) -> MemoryStreamTransport:
        """Open ``memory+stream://NAME?partitions=4&maxlen=N&max_age=SECONDS``."""
        try:
            parts = urlsplit(url)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
        except ValueError as exc:
            raise InvalidURL(f"cannot parse {url!r}: {exc}") from None
        if parts.scheme != "memory+stream":
            raise InvalidURL(f"not a memory+stream:// URL: {url!r}")
        query.update({key: str(value) for key, value in options.items()})
        unknown = set(query) - {"partitions", "maxlen", "max_age"}
        if unknown:
            raise InvalidURL(f"memory+stream:// does not know the option(s) {sorted(unknown)}")
        try:
            partitions = int(query.get("partitions", DEFAULT_PARTITIONS))
            maxlen = int(query["maxlen"]) if "maxlen" in query else None
            max_age = float(query["max_age"]) if "max_age" in query else None
        except ValueError as exc:
            raise InvalidURL(f"bad option in {url!r}: {exc}") from None
        if partitions < 1 or (maxlen is not None and maxlen < 1):
            raise InvalidURL(f"partitions and maxlen must be positive in {url!r}")
        if max_age is not None and not max_age > 0:
            raise InvalidURL(f"max_age must be positive in {url!r}")
        name = (parts.netloc + parts.path).strip("/")
        return cls(get_broker(name, partitions, maxlen, max_age))

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        if self.closed:
            raise ConnectionLost("memory stream transport is closed")
        self.broker.publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> MemoryStreamSubscription:
        """The pub/sub side: a private reader of every partition from now on."""
        return self.subscribe_stream(exchange, binding_key, StreamOptions(start=LATEST))

    def subscribe_stream(
        self, exchange: Exchange, binding_key: str, options: StreamOptions
    ) -> MemoryStreamSubscription:
        if self.closed:
            raise ConnectionLost("memory stream transport is closed")
        self._members += 1
        member = options.member or f"member-{id(self):x}-{self._members}"
        subscription = MemoryStreamSubscription(self, exchange, binding_key, options, member)
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("memory stream transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        self.closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        with self.broker.lock:
            self.broker.arrived.notify_all()

    def __repr__(self) -> str:
        return f"<MemoryStreamTransport memory+stream://{self.broker.name}>"
