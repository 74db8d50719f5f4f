"""A member's reader over its partition streams: XREAD, leases, acknowledgements, gaps.

Redis consumer groups balance entries between consumers, not keys; evcore needs every event
of a task to reach one State, so partition ownership is evcore's own, built on leases in
Redis (``SET NX PX``, renewed by the owner). A member registers in the group's sorted set;
each member owns at most ``ceil(partitions / live members)`` partitions, giving up the extra
ones and claiming free ones as members come and go. A member that stops renewing (dead, or
stalled for longer than its lease) loses its partitions to the others.

The group's progress is one acknowledged entry id per partition, written only by the lease
holder; a new owner reads after it, so what the previous owner read but did not acknowledge
is read again (at-least-once). This replaces XREADGROUP's pending lists and XAUTOCLAIM:
with one owner per partition the pending entries are exactly those after the acknowledged
id, and reading with XREAD costs no per-entry bookkeeping on the server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from evcore import codec
from evcore.errors import ChannelError, ConnectionLost
from evcore.routing import binding_matches
from evcore.transport import (
    EARLIEST,
    FANOUT,
    LATEST,
    Exchange,
    IncomingMessage,
    StreamOptions,
)
from evcore_redis.client import connection_for, load_redis, shutdown_socket, translate
from evcore_redis_streams.layout import StreamSettings

__all__ = ["RedisStreamSubscription"]

logger = logging.getLogger("evcore.redis_streams")

_CLOSE_WAIT = 5.0
_POSITION = re.compile(r"\d{1,20}-\d{1,20}")

# Registers a member (score: its expiry in server milliseconds), forgets expired ones and
# returns the live members.
_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
# Takes a free lease or renews one's own: 1 if the caller owns the partition afterwards.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Gives a lease up, if it is still the caller's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Records the group's position in a partition, only for the lease holder.
_ACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# The id of the oldest entry a stream still keeps, or '' when it is empty or missing.
_FIRST_ID = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then return first[1][1] end
return ''
"""


def appended_at(entry_id: bytes) -> float | None:
    """When Redis appended the entry: the milliseconds of its automatic ID."""
    milliseconds, _, _ = entry_id.partition(b"-")
    return int(milliseconds) / 1000 if milliseconds.isdigit() else None


def _id(position: bytes | str) -> tuple[int, int]:
    text = position.decode() if isinstance(position, bytes) else position
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSubscription:
    """Reads the partitions this member owns (all of them without a group)."""

    def __init__(
        self,
        settings: StreamSettings,
        exchange: Exchange,
        binding_key: str,
        options: StreamOptions,
        on_close: Callable[[RedisStreamSubscription], None],
    ) -> None:
        self.settings = settings
        self.exchange = exchange
        self.binding_key = binding_key
        self.options = options
        self.member = options.member or f"{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
        self._match_all = exchange.type == FANOUT or binding_key == "#"
        self._on_close = on_close
        redis = load_redis()
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._connection = connection_for(settings.redis)
        self._io = threading.Lock()
        self._closed = threading.Event()
        self._dead = False
        #: partition -> id of the last entry read (XREAD continues after it).
        self._cursors: dict[int, bytes] = {}
        self._keys = {
            p: settings.stream_key(exchange.name, p).encode() for p in range(settings.partitions)
        }
        self._partition_of = {key: p for p, key in self._keys.items()}
        self._acked: dict[int, tuple[int, int]] = {}
        self._first_seen: dict[int, bytes] = {}
        self._routing_keys: dict[bytes, str] = {}
        self._trimmed = 0
        self._next_rebalance = 0.0
        self._scripts: dict[str, bytes] = {}
        self._lease_ms = max(int(options.lease * 1000), 100)
        with self._io:
            self._guarded(self._start)

    # -- plumbing ---------------------------------------------------------------------

    def _guarded(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._errors as exc:
            self._connection.disconnect()
            if self._closed.is_set():
                return None
            self._dead = True
            raise translate(exc, "reading a stream", self.settings.redis) from exc

    def _pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands in one write and read every reply (refusals raise ChannelError)."""
        if not commands:
            return []
        connection = self._connection
        packed = connection.pack_commands([tuple(command) for command in commands])
        connection.send_packed_command(packed)
        replies: list[Any] = []
        refusal: BaseException | None = None
        response_error = load_redis().ResponseError
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except response_error as exc:
                refusal = refusal or exc
                replies.append(None)
        if refusal is not None:
            raise translate(refusal, "a stream command", self.settings.redis) from refusal
        return replies

    def _script(self, name: str, source: str) -> bytes:
        """The SHA of a script, loaded once per connection."""
        sha = self._scripts.get(name)
        if sha is None:
            self._connection.send_command("SCRIPT", "LOAD", source)
            sha = self._scripts[name] = self._connection.read_response()
        return sha

    def _evals(
        self, name: str, source: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        sha = self._script(name, source)
        return self._pipeline([("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])

    # -- ownership --------------------------------------------------------------------

    def _start(self) -> None:
        """Without a group, own every partition now (``LATEST`` means from now on). In a
        group, only join: partitions are claimed on the first ``receive``, so members
        started together split them at once instead of handing them over later."""
        if self.options.group is None:
            self._assign(frozenset(range(self.settings.partitions)))
        else:
            self._evals(
                "heartbeat",
                _HEARTBEAT,
                [
                    (
                        (self.settings.members_key(self.exchange.name, self.options.group),),
                        (self.member, str(self._lease_ms)),
                    )
                ],
            )

    def _rebalance(self) -> None:
        """Renew the leases, then give up or claim partitions towards a fair share."""
        group = self.options.group
        assert group is not None
        settings = self.settings
        name = self.exchange.name
        lease = str(self._lease_ms)
        self._next_rebalance = time.monotonic() + self.options.lease / 3
        members_key = settings.members_key(name, group)
        (alive,) = self._evals("heartbeat", _HEARTBEAT, [((members_key,), (self.member, lease))])
        members = sorted(alive)
        owned = sorted(self._cursors)
        renewed = self._evals(
            "claim",
            _CLAIM,
            [((settings.lease_key(name, p, group),), (self.member, lease, "0")) for p in owned],
        )
        kept = [p for p, ok in zip(owned, renewed, strict=True) if ok]
        lost = frozenset(owned) - frozenset(kept)
        fair = math.ceil(settings.partitions / max(len(members), 1))
        extra = frozenset(kept[fair:])
        if lost or extra:
            self._revoke(lost | extra)
        if extra:
            self._evals(
                "release",
                _RELEASE,
                [((settings.lease_key(name, p, group),), (self.member,)) for p in sorted(extra)],
            )
        need = fair - (len(kept) - len(extra))
        if need <= 0:
            return
        # Each member looks for free partitions from its own place in the member list, so
        # members claiming at the same moment reach for different ones.
        rank = members.index(self.member.encode()) if self.member.encode() in members else 0
        first = rank * fair % settings.partitions
        circle = [*range(first, settings.partitions), *range(first)]
        others = [p for p in circle if p not in self._cursors]
        owners = self._pipeline([("GET", settings.lease_key(name, p, group)) for p in others])
        free = [p for p, owner in zip(others, owners, strict=True) if owner is None][:need]
        claimed = self._evals(
            "claim",
            _CLAIM,
            [((settings.lease_key(name, p, group),), (self.member, lease, "1")) for p in free],
        )
        self._assign(frozenset(p for p, ok in zip(free, claimed, strict=True) if ok))

    def _assign(self, partitions: frozenset[int]) -> None:
        """Place the cursors of newly owned partitions: the consumer's choice, else the
        group's acknowledged id, else ``start``."""
        if not partitions:
            return
        chosen: Mapping[int, str] = {}
        if self.options.on_assigned is not None:
            chosen = self.options.on_assigned(partitions) or {}
        group = self.options.group
        order = sorted(partitions)
        acked: list[Any] = [None] * len(order)
        if group is not None:
            acked = self._pipeline(
                [("GET", self.settings.acked_key(self.exchange.name, p, group)) for p in order]
            )
        start = self.options.start
        latest: list[int] = []
        for partition, acked_id in zip(order, acked, strict=True):
            where = chosen.get(partition)
            if where is None and acked_id is not None:
                self._cursors[partition] = acked_id
                self._acked[partition] = _id(acked_id)
                continue
            if where is None:
                where = start.get(partition, EARLIEST) if isinstance(start, Mapping) else start
            if where == EARLIEST:
                self._cursors[partition] = b"0-0"
            elif where == LATEST:
                latest.append(partition)
            elif _POSITION.fullmatch(where):
                self._cursors[partition] = where.encode()
            else:
                raise ChannelError(f"not a Redis stream position: {where!r}")
        if latest:
            tails = self._pipeline(
                [("XREVRANGE", self._keys[p], "+", "-", "COUNT", "1") for p in latest]
            )
            for partition, tail in zip(latest, tails, strict=True):
                self._cursors[partition] = tail[0][0] if tail else b"0-0"

    def _revoke(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self._cursors.pop(partition, None)
            self._acked.pop(partition, None)
        if self.options.on_revoked is not None:
            self.options.on_revoked(partitions)

    def assignment(self) -> frozenset[int]:
        return frozenset(self._cursors)

    @property
    def trimmed(self) -> int:
        return self._trimmed

    # -- reading ----------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        if self._closed.is_set():
            return []
        with self._io:
            if self._dead:
                raise ConnectionLost("this Redis stream subscription lost its connection")
            try:
                received: list[IncomingMessage] = self._guarded(lambda: self._receive(timeout))
            finally:
                if self._closed.is_set():
                    self._connection.disconnect()
            return received or []

    def _receive(self, timeout: float | None) -> list[IncomingMessage]:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while not self._closed.is_set():
            now = time.monotonic()
            if self.options.group is not None and now >= self._next_rebalance:
                self._rebalance()
            wait = self.options.lease / 3
            if self.settings.redis.socket_timeout:
                wait = min(wait, self.settings.redis.socket_timeout / 2)
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            received = self._read(max(wait, 0.0))
            if received or (deadline is not None and time.monotonic() >= deadline):
                return received
        return []

    def _read(self, wait: float) -> list[IncomingMessage]:
        cursors = self._cursors
        if not cursors:
            self._closed.wait(min(wait, 0.1))
            return []
        order = sorted(cursors)
        command: list[Any] = ["XREAD", "COUNT", self.settings.read_count]
        block = int(wait * 1000)
        if block > 0:
            command += ["BLOCK", block]
        command += ["STREAMS", *(self._keys[p] for p in order), *(cursors[p] for p in order)]
        # Where each stream begins now is asked in the same write, just before reading: a
        # cursor older than that was trimmed away, and with it what followed it unread.
        checked = [p for p in order if cursors[p] != b"0-0"]
        sha = self._script("first_id", _FIRST_ID)
        commands = [("EVALSHA", sha, 1, self._keys[p]) for p in checked]
        replies = self._pipeline([*commands, command])
        self._count_gaps(checked, replies[:-1])
        reply = replies[-1]
        if not reply:
            return []
        out: list[IncomingMessage] = []
        for key, entries in reply:
            partition = self._partition_of[key]
            if partition not in cursors or not entries:
                continue
            cursors[partition] = entries[-1][0]
            out.extend(self._messages(partition, entries))
        return out

    def _messages(self, partition: int, entries: Iterable[Any]) -> list[IncomingMessage]:
        exchange = self.exchange.name
        match_all = self._match_all
        binding_key = self.binding_key
        keys = self._routing_keys
        loads = codec.loads
        out = []
        append = out.append
        for entry_id, flat in entries:
            # The layout transport.py writes: b, k, then h when there are headers; c and e
            # (rare) or anything else goes the general way.
            size = len(flat)
            if size in (4, 6) and flat[0] == b"b" and flat[2] == b"k" and (
                size == 4 or flat[4] == b"h"
            ):
                body, raw_key = flat[1], flat[3]
                raw_headers = flat[5] if size == 6 else None
                content_type: bytes | None = None
                encoding: bytes | None = None
            else:
                fields = dict(zip(flat[::2], flat[1::2], strict=False))
                body, raw_key = fields.get(b"b", b""), fields.get(b"k", b"")
                raw_headers = fields.get(b"h")
                content_type, encoding = fields.get(b"c"), fields.get(b"e")
            routing_key = keys.get(raw_key)
            if routing_key is None:
                routing_key = raw_key.decode("utf-8", "replace")
                if len(keys) < 1024:
                    keys[raw_key] = routing_key
            if not match_all and not binding_matches(binding_key, routing_key):
                continue
            headers: Any = {}
            rejected = None
            if raw_headers is not None:
                try:
                    headers = loads(raw_headers)
                except ValueError:
                    headers, rejected = {}, "malformed"
                if headers.__class__ is not dict:
                    headers, rejected = {}, "malformed"
            append(
                IncomingMessage(
                    body,
                    routing_key,
                    exchange,
                    "application/json"
                    if content_type is None
                    else content_type.decode("utf-8", "replace"),
                    "utf-8" if encoding is None else encoding.decode("utf-8", "replace"),
                    headers,
                    rejected,
                    partition,
                    entry_id.decode(),
                    appended_at(entry_id),
                )
            )
        return out

    def _count_gaps(self, partitions: Sequence[int], first_ids: Sequence[Any]) -> None:
        """Count a gap where retention removed a reader's cursor (one per gap: Redis keeps
        no count of what it trimmed between two entries). Trimming that stops exactly at
        the cursor is counted too, though nothing unread was lost."""
        for partition, first in zip(partitions, first_ids, strict=True):
            if not first or first == self._first_seen.get(partition):
                continue
            self._first_seen[partition] = first
            if _id(self._cursors[partition]) < _id(first):
                self._trimmed += 1
                logger.warning(
                    "retention removed entries of partition %d of %r before this reader read them",
                    partition,
                    self.exchange.name,
                )

    # -- acknowledging and closing ----------------------------------------------------

    def ack(self, messages: Iterable[IncomingMessage]) -> None:
        group = self.options.group
        if group is None:
            return
        newest: dict[int, tuple[tuple[int, int], str]] = {}
        for message in messages:
            partition, position = message.partition, message.position
            if partition is None or position is None or partition not in self._cursors:
                continue
            entry = _id(position)
            if entry > newest.get(partition, ((-1, -1), ""))[0]:
                newest[partition] = (entry, position)
        calls = []
        for partition, (entry, position) in sorted(newest.items()):
            if entry > self._acked.get(partition, (-1, -1)):
                self._acked[partition] = entry
                keys = (
                    self.settings.lease_key(self.exchange.name, partition, group),
                    self.settings.acked_key(self.exchange.name, partition, group),
                )
                calls.append((keys, (self.member, position)))
        if not calls:
            return
        with self._io:
            if self._dead:
                raise ConnectionLost("this Redis stream subscription lost its connection")
            self._guarded(lambda: self._evals("ack", _ACK, calls))

    def close(self) -> None:
        """Give the partitions up (their unacknowledged entries go to the next owner) and
        drop the connection; wakes a blocked :meth:`receive`."""
        if self._closed.is_set():
            return
        self._closed.set()
        if not self._io.acquire(blocking=False):
            shutdown_socket(self._connection)
            if not self._io.acquire(timeout=_CLOSE_WAIT):
                self._on_close(self)
                return
        try:
            self._connection.disconnect()
            owned = frozenset(self._cursors)
            if self.options.group is not None and not self._dead:
                if owned:
                    self._revoke(owned)
                with contextlib.suppress(*self._errors, ConnectionLost, ChannelError):
                    self._leave(owned)
        finally:
            self._io.release()
            self._on_close(self)

    def _leave(self, owned: frozenset[int]) -> None:
        """Release the leases and the membership on a fresh connection."""
        group = self.options.group
        assert group is not None
        self._connection = connection_for(self.settings.redis)
        self._scripts.clear()
        try:
            self._evals(
                "release",
                _RELEASE,
                [
                    ((self.settings.lease_key(self.exchange.name, p, group),), (self.member,))
                    for p in sorted(owned)
                ],
            )
            self._pipeline(
                [("ZREM", self.settings.members_key(self.exchange.name, group), self.member)]
            )
        finally:
            self._connection.disconnect()

    def __repr__(self) -> str:
        return (
            f"<RedisStreamSubscription {self.settings.redis.address} {self.exchange.name} "
            f"member={self.member} owns={sorted(self._cursors)}>"
        )
