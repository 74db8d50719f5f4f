"""The Redis Streams transport: appending to partition streams, opening stream readers.

A batch of messages is one pipelined write of ``XADD`` commands (encoded here, as the
pub/sub transport does for PUBLISH) and one read of their replies. Each entry holds the
body (``b``), the routing key (``k``) and, when they are not the defaults, the headers as
JSON (``h``), the content type (``c``) and encoding (``e``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from evcore import codec
from evcore.errors import ChannelError, ConnectionLost, UnsupportedOperation
from evcore.transport import (
    EVERY_PARTITION,
    FANOUT,
    LATEST,
    TOPIC,
    Capabilities,
    Exchange,
    OutgoingMessage,
    QueueOptions,
    StreamOptions,
)
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_redis.client import connection_for, load_redis, translate
from evcore_redis_streams.layout import StreamSettings, parse_stream_url
from evcore_redis_streams.subscription import RedisStreamSubscription

__all__ = ["RedisStreamsTransport", "resp"]

_CRLF = b"\r\n"


def resp(*args: bytes) -> bytes:
    """One command in the Redis protocol (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, _CRLF)
    return b"".join(parts)


class RedisStreamsTransport:
    """Events kept in Redis Streams, partitioned, with consumer groups over leases."""

    driver_type = "redis-streams"

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.capabilities = Capabilities(
            broadcast=True,
            exact_routing=True,
            exchange_types=frozenset({TOPIC, FANOUT}),
            queue_options=frozenset(),
            persistent=False,
            durable=True,
            partitions=settings.partitions,
        )
        redis = load_redis()
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._response_error: type[BaseException] = redis.ResponseError
        self._connection: Any = None
        self._heads: dict[tuple[str, int], bytes] = {}
        self._subscriptions: OpenSubscriptions[RedisStreamSubscription] = OpenSubscriptions()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "redis+streams://", **options: Any) -> RedisStreamsTransport:
        """Open ``redis+streams://`` or ``rediss+streams://``; nothing connects until used."""
        load_redis()
        return cls(parse_stream_url(url, **options))

    def _head(self, exchange: str, partition: int) -> bytes:
        """``XADD <key> [trim] *`` encoded, up to the entry's fields."""
        key = (exchange, partition)
        head = self._heads.get(key)
        if head is None:
            settings = self.settings
            args = [b"XADD", settings.stream_key(exchange, partition).encode("utf-8")]
            if settings.maxlen is not None:
                exact = b"=" if settings.exact_trim else b"~"
                args += [b"MAXLEN", exact, b"%d" % settings.maxlen]
            args.append(b"*")
            head = b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)
            if len(self._heads) >= 4096:
                self._heads.clear()
            self._heads[key] = head
        return head

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """XADD every message (a copy per partition for ``EVERY_PARTITION``) in one round
        trip; ConnectionLost if any may be unsent."""
        if self._closed:
            raise ConnectionLost("the Redis Streams transport is closed")
        _check_exchange(exchange)
        if not messages:
            return
        count = self.settings.partitions
        name = exchange.name
        parts: list[bytes] = []
        commands = 0
        touched: set[int] = set()
        for message in messages:
            fields = _fields(message)
            partition = 0 if message.partition is None else message.partition
            if partition == EVERY_PARTITION:
                targets: Sequence[int] = range(count)
            elif 0 <= partition < count:
                targets = (partition,)
            else:
                raise ChannelError(
                    f"partition {partition} is out of range: the stream has {count} partitions"
                )
            arity = b"*%d\r\n" % (len(fields) + 3 + (3 if self.settings.maxlen else 0))
            for target in targets:
                parts += (arity, self._head(name, target), *fields)
                commands += 1
                touched.add(target)
        if self.settings.max_age is not None:
            oldest = b"%d" % int((time.time() - self.settings.max_age) * 1000)
            for target in sorted(touched):
                key = self.settings.stream_key(name, target).encode("utf-8")
                parts.append(resp(b"XTRIM", key, b"MINID", b"~", oldest))
                commands += 1
        self._send(parts, commands)

    def _send(self, parts: list[bytes], commands: int) -> None:
        connection = self._connection
        if connection is None:
            connection = self._connection = connection_for(
                self.settings.redis, self.settings.redis.health_check_interval
            )
        refusal: BaseException | None = None
        try:
            connection.send_packed_command([b"".join(parts)])
            for _ in range(commands):
                try:
                    connection.read_response()
                except self._response_error as exc:
                    refusal = refusal or exc
        except self._errors as exc:
            connection.disconnect()
            raise translate(exc, "appending to a stream", self.settings.redis) from exc
        if refusal is not None:
            raise translate(refusal, "XADD", self.settings.redis) from refusal

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> RedisStreamSubscription:
        """The pub/sub side: a private reader of every partition, from what comes next.
        ``queue`` is not used (the streams keep the messages, not a queue)."""
        return self.subscribe_stream(exchange, binding_key, StreamOptions(start=LATEST))

    def subscribe_stream(
        self, exchange: Exchange, binding_key: str, options: StreamOptions
    ) -> RedisStreamSubscription:
        if self._closed:
            raise ConnectionLost("the Redis Streams transport is closed")
        _check_exchange(exchange)
        subscription = RedisStreamSubscription(
            self.settings, exchange, binding_key, options, self._subscriptions.forget
        )
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the Redis Streams transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        """Close the appending connection and every subscription; safe to call twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()

    def __repr__(self) -> str:
        return f"<RedisStreamsTransport {self.settings.redis.address} P={self.settings.partitions}>"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _fields(message: OutgoingMessage) -> list[bytes]:
    """The entry's field/value pairs, RESP-encoded."""
    out = [
        b"$1\r\nb\r\n",
        _bulk(message.body),
        b"$1\r\nk\r\n",
        _bulk(message.routing_key.encode("utf-8")),
    ]
    if message.headers:
        out += (b"$1\r\nh\r\n", _bulk(codec.dumps(dict(message.headers))))
    if message.content_type != "application/json":
        out += (b"$1\r\nc\r\n", _bulk(message.content_type.encode("utf-8")))
    if message.content_encoding != "utf-8":
        out += (b"$1\r\ne\r\n", _bulk(message.content_encoding.encode("utf-8")))
    return out


def _check_exchange(exchange: Exchange) -> None:
    if exchange.type not in (TOPIC, FANOUT):
        raise UnsupportedOperation(
            f"the Redis Streams transport carries topic and fanout exchanges; "
            f"{exchange.name!r} has type {exchange.type!r}"
        )
