"""NATS JetStream (``jetstream://``): evcore's durable side over JetStream streams.

Layout. Each exchange is one stream, ``<stream_prefix>-<exchange>-<digest>``, capturing the
subjects ``<subject_prefix>.<exchange>.<partition>.<routing key words>`` (the prefix is
``evstream`` unless given; tokens escaped as in :mod:`evcore_nats.subjects`). A message goes
to the partition the publisher chose (a copy to each for ``EVERY_PARTITION``); its position
is its stream sequence number, so positions of one partition grow but are not contiguous.
Retention is the stream's: ``max_msgs``, ``max_bytes`` and ``max_age`` (for the whole stream,
all partitions together), discarding the oldest.

Publishing waits for JetStream's acknowledgement of every message of the batch (sent
pipelined, the acknowledgements collected on one reply subscription per connection): once
``publish()`` returns, the messages are in the stream's store.

Reading. Every owned partition is read through a pull consumer filtered to that partition.
A reader asks for at most ``batch`` messages per partition at a time, and only from inside
``receive()``, so what it holds is bounded and a reader that falls behind is really behind:
retention may remove what it has not pulled yet, and it counts the gap in ``trimmed``.

- A group's partition is read through a durable consumer with cumulative acknowledgements
  (``AckPolicy.ALL``); its acknowledged floor is the group's position there. Each owner
  makes a consumer of its own (``<group digest>-p<partition>-<random>``), starting just
  after the previous owner's floor (or where ``on_assigned`` says), records it in the
  group's record and deletes the previous one (see :mod:`evcore_nats.groups` for who owns
  what). What the previous owner read but did not acknowledge is read again, in order, at
  once; and a previous owner that only stalled can neither read more nor move the group's
  position, since its consumer is gone.
- Readers without a group, and the pub/sub side (``subscribe()``, every partition from now
  on), use ephemeral consumers without acknowledgements, which the server deletes if their
  reader vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from evcore.errors import (
    ChannelError,
    ConnectionLost,
    InvalidURL,
    TransportError,
    UnsupportedOperation,
)
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
from evcore_nats.client import Link, Session, load_nats
from evcore_nats.core import NatsStats, Publisher, refusal
from evcore_nats.groups import GroupState, group_key, join, plan, release
from evcore_nats.settings import JETSTREAM_OPTIONS, NatsSettings, parse_settings
from evcore_nats.subjects import escape_token, publish_subject, unescape_token
from evcore_nats.wire import incoming

__all__ = [
    "JetStreamSubscription",
    "JetStreamTransport",
    "StreamLayout",
    "layout_for",
    "sequence_of",
]

logger = logging.getLogger("evcore.nats")

DEFAULT_PARTITIONS = 16
DEFAULT_SUBJECT_PREFIX = "evstream"
#: A consumer's messages are never redelivered on a timer while their owner holds them:
#: takeover re-creates the consumer instead.
_ACK_WAIT = 3600.0
#: Seconds an ephemeral consumer outlives a reader that vanished without deleting it.
_EPHEMERAL_IDLE = 30.0
#: Longest and shortest a pull request lingers on the server waiting for messages. Every
#: request has an expiry, so that the server always says when it ends (a request without
#: one ends without a word once it has sent what there was).
_MAX_LINGER = 1.0
_MIN_LINGER = 0.05
#: How long after its expiry a pull request whose end the server did not report is taken
#: for ended. The server's 408 usually says so, but not always (seen with nats-server 2.9
#: under load, after a partial delivery): without this bound the partition would stall.
_PULL_GRACE = 0.25
#: A group rebalances this many times per lease (renewing its leases each time).
_RENEWALS_PER_LEASE = 3
_CAS_ATTEMPTS = 5
_STREAM_NAME_IN_USE = 10058
#: The most messages one ``receive()`` hands back: a batch its caller applies well within a
#: lease (a message may hold a batch of events), so that it calls ``receive()`` again, and
#: renews its leases, in time.
_HAND_OUT = 1000
#: Subjects whose partition and routing key a reader keeps decoded.
_SUBJECT_CACHE_SIZE = 4096
_PUBSUB = -1


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """Where one exchange lives in JetStream: its stream's name and subjects."""

    stream: str
    base: str
    partitions: int

    def subject(self, partition: int, routing_key: str) -> str:
        words = ".".join(escape_token(word) for word in routing_key.split("."))
        return f"{self.base}.{partition}.{words}"

    def filter(self, partition: int) -> str:
        """The subjects of one partition, or of all of them for ``_PUBSUB``."""
        return f"{self.base}.>" if partition == _PUBSUB else f"{self.base}.{partition}.>"

    def partition_and_key(self, subject: str) -> tuple[int, str]:
        """The partition and routing key a stream subject carries."""
        rest = subject[len(self.base) + 1 :].split(".")
        try:
            partition = int(rest[0])
        except ValueError:
            partition = 0
        return partition, ".".join(unescape_token(token) for token in rest[1:])


def layout_for(settings: NatsSettings, exchange: str) -> StreamLayout:
    """The stream of ``exchange``: a plain, bounded name with a digest of the real name."""
    extra = settings.extra
    plain = re.sub(r"[^A-Za-z0-9_-]", "_", exchange)[:40]
    digest = hashlib.sha256(exchange.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    prefix = settings.subject_prefix or DEFAULT_SUBJECT_PREFIX
    return StreamLayout(
        stream=f"{extra.get('stream_prefix', 'evcore')}-{plain}-{digest}",
        base=publish_subject(prefix, exchange, "x")[:-2],
        partitions=extra.get("partitions", DEFAULT_PARTITIONS),
    )


def _ack_number(reply: str, after_sequence: int) -> int | None:
    """The number ``after_sequence`` tokens past the stream sequence of a JetStream
    acknowledgement subject (``$JS.ACK....``), in both its short form and the one with
    domain and account tokens; None if the subject is not one."""
    tokens = reply.split(".")
    index = 5 if len(tokens) == 9 else 7 if len(tokens) >= 11 else -1
    if index < 0 or tokens[0] != "$JS":
        return None
    try:
        return int(tokens[index + after_sequence])
    except ValueError:
        return None


def sequence_of(reply: str) -> int:
    """The stream sequence in an acknowledgement subject; 0 if not one."""
    return _ack_number(reply, 0) or 0


def appended_at(reply: str) -> float | None:
    """When the server stored the message, from the nanoseconds in its acknowledgement
    subject (two tokens after the stream sequence); None if the subject has none."""
    nanoseconds = _ack_number(reply, 2)
    return None if nanoseconds is None else nanoseconds / 1e9


class _Reader:
    """One pull consumer of one partition (or of the whole stream, for the pub/sub side)."""

    __slots__ = (
        "consumer",
        "durable",
        "expected",
        "inbox",
        "outstanding",
        "partition",
        "pull_until",
        "subscription",
        "unacked",
    )

    def __init__(self, partition: int, durable: bool, expected: int | None) -> None:
        self.partition = partition
        self.durable = durable
        #: The sequence the next message should have if nothing was lost (when known).
        self.expected = expected
        self.consumer = ""
        self.inbox = ""
        self.subscription: Any = None
        #: Messages the open pull request may still bring (0: no request open).
        self.outstanding = 0
        #: When to stop waiting for the open request's end (monotonic seconds).
        self.pull_until = 0.0
        #: (sequence, acknowledgement subject) of messages handed out, not acknowledged.
        self.unacked: deque[tuple[int, str]] = deque()


class JetStreamSubscription:
    """A member's reader over the partitions it owns (or every partition, without a group;
    or the whole stream from now on, for the pub/sub side)."""

    def __init__(
        self,
        transport: JetStreamTransport,
        exchange: Exchange,
        binding_key: str,
        options: StreamOptions,
        member: str,
        pubsub: bool = False,
    ) -> None:
        self._transport = transport
        self._link = link = transport._link
        self._layout = transport.layout(exchange.name)
        self._exchange = exchange
        self._binding_key = binding_key
        self._everything = exchange.type == FANOUT or binding_key == "#"
        self._options = options
        self.member = member
        self._group = None if pubsub else options.group
        self._key = "" if self._group is None else group_key(self._group)
        self._readers: dict[int, _Reader] = {}
        self._cond = threading.Condition()
        self._items: deque[tuple[_Reader, Any]] = deque()
        self._closed = False
        self._lost: str | None = None
        self._trimmed = 0
        self._gap_check: Any = None
        self._subjects: dict[str, tuple[int, str]] = {}
        self._next_rebalance = 0.0
        self._session = session = link.session()
        self._kv: Any = None
        #: Whether the stream has retention limits (else no gap can come from retention).
        self._limited = transport._ensure_stream(session, self._layout)
        if self._group is not None:
            self._kv = transport._groups_bucket(session, self._layout)
            lease = options.lease
            self._change_group(lambda state: join(state, member, time.time(), lease))
        session.watch(self, self._on_lost)
        if pubsub:
            self._start({_PUBSUB: LATEST})
        elif self._group is None:
            self._assign(frozenset(range(self._layout.partitions)))

    # -- what it owns ---------------------------------------------------------------------

    @property
    def trimmed(self) -> int:
        """Gaps retention left before this reader got there (at least one per gap)."""
        check = self._gap_check
        if check is not None:
            with contextlib.suppress(Exception):
                check.result(self._link.settings.flush_timeout)
        return self._trimmed

    def assignment(self) -> frozenset[int]:
        """The partitions this reader owns now."""
        return frozenset(p for p in self._readers if p != _PUBSUB)

    def _run(self, make: Any, doing: str) -> Any:
        return self._link.run(make, doing, self._link.settings.flush_timeout, self._session)

    def _assign(self, partitions: frozenset[int]) -> None:
        """Start reading newly owned partitions: where ``on_assigned`` says, else after
        the group's acknowledged floor, else at ``start``."""
        chosen: Mapping[int, str] = {}
        if self._options.on_assigned is not None:
            chosen = self._options.on_assigned(partitions) or {}
        previous: dict[int, str] = {}
        if self._group is not None:
            state, _ = self._read_group()
            previous = {p: state.consumers[p] for p in partitions if p in state.consumers}
        start = self._options.start
        wheres: dict[int, str] = {}
        for partition in sorted(partitions):
            where = chosen.get(partition)
            if where is None and partition in previous:
                where = self._acked_floor(previous[partition])
            if where is None:
                where = start.get(partition, EARLIEST) if isinstance(start, Mapping) else start
            wheres[partition] = where
        self._start(wheres)
        if self._group is not None:
            self._hand_over(previous, {p: self._readers[p].consumer for p in wheres})

    def _hand_over(self, previous: Mapping[int, str], started: Mapping[int, str]) -> None:
        """Record the new consumers as the group's, then delete the previous owners'."""
        member = self.member

        def record(state: GroupState) -> None:
            for partition, name in started.items():
                if state.leases.get(partition, ("",))[0] == member:
                    state.consumers[partition] = name

        self._change_group(record)
        nats = load_nats()
        js = self._transport._jetstream(self._session)
        stream = self._layout.stream
        stale = [name for p, name in previous.items() if started.get(p) != name]

        async def delete() -> None:
            for name in stale:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(stream, name)

        if stale:
            self._run(delete, "deleting the previous owners' consumers")

    def _acked_floor(self, consumer: str) -> str | None:
        """The position a group's consumer acknowledged last, if any."""
        nats = load_nats()
        js = self._transport._jetstream(self._session)

        async def floor() -> str | None:
            try:
                info = await js.consumer_info(self._layout.stream, consumer)
            except nats.js.errors.NotFoundError:
                return None
            acked = info.ack_floor
            if acked is None or not acked.consumer_seq:
                return None
            return str(acked.stream_seq)

        result: str | None = self._run(floor, f"reading the position of {consumer}")
        return result

    def _consumer(self, partition: int) -> str:
        """A new durable consumer name for ``partition``: one per owner."""
        return f"{self._key}-p{partition}-{uuid.uuid4().hex[:12]}"

    def _start(self, wheres: Mapping[int, str]) -> None:
        readers: list[tuple[_Reader, dict[str, Any]]] = []
        api = load_nats().js.api
        for partition, where in wheres.items():
            if where == EARLIEST:
                deliver: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.ALL}
                expected = None
            elif where == LATEST:
                deliver = {"deliver_policy": api.DeliverPolicy.NEW}
                expected = None
            else:
                try:
                    after = int(where)
                except ValueError:
                    raise ChannelError(f"not a JetStream position: {where!r}") from None
                deliver = {
                    "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                    "opt_start_seq": after + 1,
                }
                expected = after + 1
            reader = _Reader(partition, self._group is not None, expected)
            readers.append((reader, deliver))
        self._run(lambda: self._open(readers), f"starting consumers on {self._layout.stream}")
        for reader, _ in readers:
            self._readers[reader.partition] = reader

    async def _open(self, readers: list[tuple[_Reader, dict[str, Any]]]) -> None:
        nats = load_nats()
        api = nats.js.api
        client = self._session.client
        jsm = self._transport._jetstream(self._session)
        for reader, deliver in readers:
            reader.inbox = client.new_inbox()
            reader.subscription = await client.subscribe(
                reader.inbox,
                cb=partial(self._on_message, reader),
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )
            if reader.durable:
                durable: str | None = self._consumer(reader.partition)
                acks: dict[str, Any] = {
                    "ack_policy": api.AckPolicy.ALL,
                    "ack_wait": _ACK_WAIT,
                    "max_ack_pending": self._transport.max_ack_pending,
                }
            else:
                durable = None
                acks = {"ack_policy": api.AckPolicy.NONE, "inactive_threshold": _EPHEMERAL_IDLE}
            config = api.ConsumerConfig(
                durable_name=durable,
                max_deliver=-1,
                filter_subject=self._layout.filter(reader.partition),
                **acks,
                **deliver,
            )
            info = await jsm.add_consumer(self._layout.stream, config)
            reader.consumer = info.name

    async def _on_message(self, reader: _Reader, msg: Any) -> None:
        with self._cond:
            if self._closed:
                return
            headers = msg.headers
            if not msg.reply and headers and "Status" in headers:
                reader.outstanding = 0  # the pull request ended (expired, nothing, ...)
            else:
                self._items.append((reader, msg))
                reader.outstanding -= 1
            self._cond.notify()

    def _pull(self, linger: float) -> None:
        """Open a pull request for every reader without one: up to ``batch`` messages,
        lingering up to ``linger`` seconds on the server for them."""
        now = time.monotonic()
        batch = self._transport.batch
        linger = min(max(linger, _MIN_LINGER), _MAX_LINGER)
        ask = {"batch": batch, "expires": int(linger * 1e9)}
        requests: list[tuple[str, str, bytes]] = []
        with self._cond:
            for reader in self._readers.values():
                if reader.outstanding > 0 and now < reader.pull_until:
                    continue
                reader.outstanding = batch
                reader.pull_until = now + linger + _PULL_GRACE
                subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._layout.stream}.{reader.consumer}"
                requests.append((subject, reader.inbox, json.dumps(ask).encode()))
        if not requests:
            return
        client = self._session.client

        async def send() -> None:
            for subject, inbox, body in requests:
                await client.publish(subject, body, reply=inbox)

        self._link.submit(send, "asking for messages")

    def _on_lost(self, reason: str) -> None:
        with self._cond:
            self._lost = reason
            self._cond.notify_all()

    # -- groups ---------------------------------------------------------------------------

    def _rebalance(self) -> None:
        """Renew this member's leases; give up or take partitions as the group changed."""
        options = self._options
        self._next_rebalance = time.monotonic() + options.lease / _RENEWALS_PER_LEASE
        owned = self.assignment()
        outcome = None
        for _ in range(_CAS_ATTEMPTS):
            state, revision = self._read_group()
            outcome = plan(
                state, self.member, owned, self._layout.partitions, time.time(), options.lease
            )
            if self._write_group(state, revision):
                break
            outcome = None
        if outcome is None:
            return  # a busy group: the next rebalance tries again, well within the lease
        if outcome.lost:
            self._revoke(outcome.lost)
        if outcome.extra:
            self._revoke(outcome.extra)
            self._change_group(lambda state: release(state, self.member, outcome.extra))
        start = (outcome.keep | outcome.taken) - self.assignment()
        if start:
            self._assign(start)

    def _read_group(self) -> tuple[GroupState, int]:
        errors = load_nats().js.errors
        kv, key = self._kv, self._key

        async def read() -> tuple[bytes | None, int]:
            try:
                entry = await kv.get(key)
            except (errors.KeyNotFoundError, errors.KeyDeletedError):
                return None, 0
            return entry.value, entry.revision or 0

        raw, revision = self._run(read, "reading the group's leases")
        return GroupState.decode(raw), revision

    def _write_group(self, state: GroupState, revision: int) -> bool:
        """Compare-and-set the group's record; False when another member changed it."""
        errors = load_nats().js.errors
        kv, key, value = self._kv, self._key, state.encode()

        async def write() -> bool:
            try:
                if revision:
                    await kv.update(key, value, last=revision)
                else:
                    await kv.create(key, value)
            except (errors.KeyWrongLastSequenceError, errors.APIError) as exc:
                if isinstance(exc, errors.KeyWrongLastSequenceError) or exc.err_code == 10071:
                    return False
                raise
            return True

        written: bool = self._run(write, "writing the group's leases")
        return written

    def _change_group(self, change: Any) -> None:
        for _ in range(_CAS_ATTEMPTS):
            state, revision = self._read_group()
            change(state)
            if self._write_group(state, revision):
                return

    def _revoke(self, partitions: frozenset[int]) -> None:
        """Tell the consumer, then stop reading ``partitions``."""
        if self._options.on_revoked is not None:
            self._options.on_revoked(partitions)
        readers = [self._readers.pop(p) for p in partitions if p in self._readers]
        with contextlib.suppress(TransportError):
            self._run(lambda: self._stop(readers), "stopping consumers")

    async def _stop(self, readers: list[_Reader]) -> None:
        nats = load_nats()
        jsm = self._transport._jetstream(self._session)
        for reader in readers:
            if reader.subscription is not None:
                with contextlib.suppress(nats.errors.Error):
                    await reader.subscription.unsubscribe()
            if not reader.durable and reader.consumer:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await jsm.delete_consumer(self._layout.stream, reader.consumer)

    # -- reading --------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Messages of the owned partitions, each with its partition and position, waiting
        up to ``timeout`` seconds; renews this member's leases on the way."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if self._closed:
                return []
            due = self._group is not None and time.monotonic() >= self._next_rebalance
            if due and self._lost is None:
                self._rebalance()
            with self._cond:
                if self._closed:
                    return []
                items = self._items
                batch = [items.popleft() for _ in range(min(len(items), _HAND_OUT))]
                if not batch and self._lost is not None:
                    raise ConnectionLost(f"{self._lost}; subscribe again")
            now = time.monotonic()
            wait = _MAX_LINGER if deadline is None else min(deadline - now, _MAX_LINGER)
            if self._group is not None:
                wait = min(wait, max(self._next_rebalance - now, 0.0))
            if batch:
                # The next batch comes while this one is being applied.
                self._pull(_MAX_LINGER)
                return self._hand_out(batch)
            self._pull(max(wait, 0.0))
            if wait <= 0 and (deadline is None or now >= deadline):
                return []
            with self._cond:
                if not self._items and not self._closed and self._lost is None:
                    self._cond.wait(wait)

    def _hand_out(self, batch: list[tuple[_Reader, Any]]) -> list[IncomingMessage]:
        out: list[IncomingMessage] = []
        readers = self._readers
        layout = self._layout
        subjects = self._subjects
        for reader, msg in batch:
            if readers.get(reader.partition) is not reader:
                continue  # a partition given up since: its next owner reads it again
            reply = msg.reply
            sequence = sequence_of(reply)
            if reader.expected is not None and sequence > reader.expected:
                self._check_gap(reader.expected)
            reader.expected = sequence + 1 if reader.partition != _PUBSUB else None
            subject = msg.subject
            known = subjects.get(subject)
            if known is None:
                if len(subjects) >= _SUBJECT_CACHE_SIZE:
                    subjects.clear()
                known = subjects[subject] = layout.partition_and_key(subject)
            partition, routing_key = known
            if reader.durable:
                reader.unacked.append((sequence, reply))
            if not self._everything and not self._routes(routing_key):
                continue
            message = incoming(msg.data, routing_key, self._exchange.name, msg.headers)
            message.partition = partition
            message.position = str(sequence)
            message.appended_at = appended_at(reply)
            out.append(message)
        return out

    def _routes(self, routing_key: str) -> bool:
        if self._exchange.type == DIRECT:
            return routing_key == self._binding_key
        return binding_matches(self._binding_key, routing_key)

    def _check_gap(self, expected: int) -> None:
        """Count a gap if retention removed messages this reader had not reached: the
        stream's first sequence is past where it stood. Asked in the background, one
        question at a time, and only of a stream with retention limits."""
        if not self._limited:
            return
        check = self._gap_check
        if check is not None and not check.done():
            return
        js = self._transport._jetstream(self._session)
        stream = self._layout.stream

        async def first() -> None:
            info = await js.stream_info(stream)
            if int(info.state.first_seq) > expected:
                self._trimmed += 1

        self._gap_check = self._link.submit(first, "checking for a retention gap")

    def _acknowledge(self, replies: list[str]) -> None:
        client = self._session.client

        async def send() -> None:
            for reply in replies:
                await client.publish(reply, b"+ACK")

        self._link.submit(send, "acknowledging")

    def ack(self, messages: Iterable[IncomingMessage]) -> None:
        """Acknowledge, per partition, up to the newest of ``messages``: the group's
        position (readers without a group keep none)."""
        if self._group is None or self._closed:
            return
        newest: dict[int, int] = {}
        for message in messages:
            if message.partition is None or message.position is None:
                continue
            try:
                position = int(message.position)
            except ValueError:
                continue
            if position > newest.get(message.partition, -1):
                newest[message.partition] = position
        replies = []
        for partition, position in newest.items():
            reader = self._readers.get(partition)
            if reader is None:
                continue  # no longer ours: the new owner reads it again
            reply = None
            unacked = reader.unacked
            while unacked and unacked[0][0] <= position:
                reply = unacked.popleft()[1]
            if reply is not None:
                replies.append(reply)
        if replies:
            self._acknowledge(replies)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and give up the partitions at once; what was not acknowledged is
        read again by the next owner. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
        session = self._session
        session.unwatch(self)
        owned = self.assignment()
        readers, self._readers = list(self._readers.values()), {}
        if session.lost is not None or self._link.closed:
            # A dead connection: the partitions stay this member's until their leases run
            # out, so a Receiver that subscribes again continues them where it was.
            self._transport._subscriptions.forget(self)
            return
        if owned and self._group is not None and self._options.on_revoked is not None:
            self._options.on_revoked(owned)
        with contextlib.suppress(TransportError):
            self._run(lambda: self._stop(readers), "stopping consumers")
            if self._group is not None:
                self._change_group(lambda state: release(state, self.member))
        self._transport._subscriptions.forget(self)

    def __repr__(self) -> str:
        who = f"{self._group}/{self.member}" if self._group is not None else self.member
        return f"<JetStreamSubscription {self._layout.stream} {who} {sorted(self._readers)}>"


class _Appender:
    """Appends batches to JetStream on one connection, pipelined: every message of a batch
    is published with a reply subject ``<inbox>.<batch>.<index>`` and the batch completes
    when JetStream has acknowledged each of them (one subscription per connection collects
    the acknowledgements)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.inbox: str = client.new_inbox()
        self._batches: dict[str, tuple[list[int], asyncio.Future[None]]] = {}
        self._numbers = itertools.count(1)
        self._subscription: Any = None

    async def append(self, ready: list[tuple[str, bytes, dict[str, str]]], wait: float) -> None:
        """Publish ``ready`` and return once every message is stored; ChannelError for an
        append JetStream refused, ConnectionLost when no stream takes the subject."""
        if self._subscription is None:
            self._subscription = await self.client.subscribe(
                f"{self.inbox}.*.*", cb=self._on_ack, pending_msgs_limit=0, pending_bytes_limit=0
            )
        number = str(next(self._numbers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batches[number] = ([len(ready)], done)
        publish, reply = self.client.publish, f"{self.inbox}.{number}."
        try:
            for index, (subject, body, headers) in enumerate(ready):
                await publish(subject, body, reply=f"{reply}{index}", headers=headers)
            await asyncio.wait_for(done, wait)
        finally:
            del self._batches[number]

    async def _on_ack(self, msg: Any) -> None:
        number = msg.subject[len(self.inbox) + 1 :].split(".", 1)[0]
        batch = self._batches.get(number)
        if batch is None or batch[1].done():
            return
        left, done = batch
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            done.set_exception(ConnectionLost("no JetStream stream takes these subjects now"))
        elif b'"error"' in msg.data:
            detail = msg.data[:300].decode("utf-8", "replace")
            done.set_exception(ChannelError(f"JetStream refused an append: {detail}"))
        else:
            left[0] -= 1
            if left[0] == 0:
                done.set_result(None)


class JetStreamTransport:
    """Durable, partitioned event streams on NATS JetStream (see the module's doc)."""

    driver_type = "nats"

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        extra = settings.extra
        self.partitions: int = extra.get("partitions", DEFAULT_PARTITIONS)
        #: Most messages a group's partition may have handed out and not acknowledged.
        self.max_ack_pending: int = extra.get("max_ack_pending", 20_000)
        #: Most messages one pull request brings per partition.
        self.batch: int = extra.get("batch", 1000)
        self.capabilities = Capabilities(
            broadcast=True,
            exact_routing=True,
            exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
            queue_options=frozenset(),
            persistent=False,
            durable=True,
            partitions=self.partitions,
        )
        self._link = Link(settings, "jetstream")
        self._publisher = Publisher(self._link)
        self._layouts: dict[str, StreamLayout] = {}
        self._subscriptions: OpenSubscriptions[JetStreamSubscription] = OpenSubscriptions()
        self._members = itertools.count(1)
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "jetstream://", **options: Any) -> JetStreamTransport:
        """Open ``jetstream://[user:password@]host[:port][?options]``; options as in the
        docs. Nothing is connected until the first publish or subscribe."""
        load_nats()
        settings = parse_settings(
            url, frozenset({"jetstream"}), extra_options=JETSTREAM_OPTIONS, **options
        )
        if settings.extra.get("partitions", DEFAULT_PARTITIONS) > 1024:
            raise InvalidURL(f"partitions must be at most 1024 in {url!r}")
        return cls(settings)

    @property
    def stats(self) -> NatsStats:
        """Counters of the publishing side (published, oversized, unsendable)."""
        return self._publisher.stats

    def layout(self, exchange: str) -> StreamLayout:
        """The stream and subjects of ``exchange``."""
        layout = self._layouts.get(exchange)
        if layout is None:
            layout = self._layouts[exchange] = layout_for(self.settings, exchange)
        return layout

    # -- per connection: the JetStream context, streams and buckets made sure of ---------

    def _jetstream(self, session: Session) -> Any:
        context = session.cache.get("js")
        if context is None:
            context = session.client.jetstream(timeout=self.settings.flush_timeout)
            session.cache["js"] = context
        return context

    def _ensure_stream(self, session: Session, layout: StreamLayout) -> bool:
        """Make sure the stream exists; whether it has retention limits."""
        made: dict[str, bool] = session.cache.setdefault("streams", {})
        if layout.stream in made:
            return made[layout.stream]
        nats = load_nats()
        api = nats.js.api
        extra = self.settings.extra
        config = api.StreamConfig(
            name=layout.stream,
            subjects=[f"{layout.base}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_msgs=extra.get("max_msgs") or -1,
            max_bytes=extra.get("max_bytes") or -1,
            max_age=extra.get("max_age") or 0,
            storage=api.StorageType(extra.get("storage", "file")),
            num_replicas=extra.get("replicas", 1),
        )
        jsm = self._jetstream(session)

        async def ensure() -> bool:
            try:
                info = await jsm.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                # Made by another process with other limits: use it as it is.
                info = await jsm.stream_info(layout.stream)
                if info.config.subjects != config.subjects:
                    raise ChannelError(
                        f"JetStream stream {layout.stream!r} exists with subjects "
                        f"{info.config.subjects}, not {config.subjects}"
                    ) from exc
            kept = info.config
            return any(
                (limit or 0) > 0 for limit in (kept.max_msgs, kept.max_bytes, kept.max_age)
            )

        limited: bool = self._link.run(
            ensure, f"creating stream {layout.stream!r}", self.settings.flush_timeout, session
        )
        made[layout.stream] = limited
        return limited

    def _groups_bucket(self, session: Session, layout: StreamLayout) -> Any:
        buckets: dict[str, Any] = session.cache.setdefault("buckets", {})
        bucket = buckets.get(layout.stream)
        if bucket is not None:
            return bucket
        nats = load_nats()
        js = self._jetstream(session)
        name = f"{layout.stream}-groups"
        extra = self.settings.extra

        async def open_bucket() -> Any:
            try:
                return await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                return await js.create_key_value(
                    bucket=name,
                    history=1,
                    storage=nats.js.api.StorageType(extra.get("storage", "file")),
                    replicas=extra.get("replicas", 1),
                )

        bucket = self._link.run(
            open_bucket, f"opening bucket {name!r}", self.settings.flush_timeout, session
        )
        buckets[layout.stream] = bucket
        return bucket

    # -- the protocol ---------------------------------------------------------------------

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Append each message to its partition (a copy to each for ``EVERY_PARTITION``)
        and return once JetStream has stored them all."""
        if self._closed:
            raise ConnectionLost("the JetStream transport is closed")
        _require_type(exchange)
        if not messages:
            return
        layout = self.layout(exchange.name)
        count = layout.partitions
        placed: list[OutgoingMessage] = []
        subjects: list[str] = []
        refused: list[str] = []
        for message in messages:
            partition = 0 if message.partition is None else message.partition
            if partition == EVERY_PARTITION:
                targets: Iterable[int] = range(count)
            elif 0 <= partition < count:
                targets = (partition,)
            else:
                self._publisher.stats.unsendable += 1
                refused.append(f"partition {partition} is out of range (0..{count - 1})")
                continue
            for target in targets:
                placed.append(message)
                subjects.append(layout.subject(target, message.routing_key))
        session = self._link.session()
        ready, too_big = self._publisher.prepare(placed, subjects, session.client.max_payload)
        refused += too_big
        if ready:
            self._ensure_stream(session, layout)
            appender = session.cache.get("appender")
            if appender is None:
                appender = session.cache["appender"] = _Appender(session.client)
            wait = self.settings.flush_timeout
            try:
                self._link.run(
                    lambda: appender.append(ready, wait),
                    f"appending to stream {layout.stream!r}",
                    wait,
                    session,
                )
            except TransportError as exc:
                self._maybe_gone(session, layout, exc)
                raise
            self._publisher.stats.published += len(ready)
        if refused:
            raise refusal(exchange.name, refused, len(messages))

    def _maybe_gone(self, session: Session, layout: StreamLayout, exc: Exception) -> None:
        """Forget a stream that may have been deleted, so the next publish makes it again."""
        session.cache.get("streams", {}).pop(layout.stream, None)
        logger.warning("appending to %s failed: %s", layout.stream, exc)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> JetStreamSubscription:
        """The pub/sub side: every partition, from the next message on (an ephemeral
        consumer). ``queue`` is not used."""
        return self._open(exchange, binding_key, StreamOptions(start=LATEST), pubsub=True)

    def subscribe_stream(
        self, exchange: Exchange, binding_key: str, options: StreamOptions
    ) -> JetStreamSubscription:
        """Read ``exchange``'s partitions as ``options`` says (see the module's doc)."""
        return self._open(exchange, binding_key, options, pubsub=False)

    def _open(
        self, exchange: Exchange, binding_key: str, options: StreamOptions, pubsub: bool
    ) -> JetStreamSubscription:
        if self._closed:
            raise ConnectionLost("the JetStream transport is closed")
        _require_type(exchange)
        member = options.member or f"member-{id(self):x}-{next(self._members)}"
        subscription = JetStreamSubscription(
            self, exchange, binding_key, options, member, pubsub=pubsub
        )
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the JetStream transport was closed while subscribing")
        return subscription

    def delete_exchange(self, exchange: str) -> None:
        """Delete ``exchange``'s stream and its groups' bucket, with everything in them."""
        nats = load_nats()
        session = self._link.session()
        layout = self.layout(exchange)
        js = self._jetstream(session)

        async def delete() -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(f"{layout.stream}-groups")
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(layout.stream)

        self._link.run(delete, f"deleting stream {layout.stream!r}", 10.0, session)
        session.cache.get("streams", {}).pop(layout.stream, None)
        session.cache.get("buckets", {}).pop(layout.stream, None)

    def close(self) -> None:
        """Close every subscription (handing their partitions over), the connection and
        the loop thread; safe to call twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        self._link.close()

    def __repr__(self) -> str:
        return f"<JetStreamTransport {self.settings.address} partitions={self.partitions}>"


def _require_type(exchange: Exchange) -> None:
    if exchange.type not in (TOPIC, FANOUT, DIRECT):
        raise UnsupportedOperation(
            f"the JetStream transport accepts topic, fanout and direct exchanges; "
            f"exchange {exchange.name!r} has type {exchange.type!r}"
        )

