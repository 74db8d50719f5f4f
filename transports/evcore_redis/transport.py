"""The Redis transport: kombu's pub/sub fanout layout over redis-py.

Publishing is ``PUBLISH /{db}.<exchange>/<routing key> <kombu JSON envelope>``, a whole
batch pipelined in one write and one round trip. The commands are encoded here (the RESP
framing of PUBLISH is fixed and the channel prefix is cached), which is several times
cheaper than packing them through redis-py one argument at a time. Subscribing is
``PSUBSCRIBE`` on a dedicated connection per subscription (see
:mod:`evcore_redis.subscription`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evcore.errors import ConnectionLost, UnsupportedOperation
from evcore.transport import FANOUT, Capabilities, Exchange, OutgoingMessage, QueueOptions
from evcore_adapter_helpers.envelope import pack_many
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_redis.client import connection_for, load_redis, translate
from evcore_redis.settings import RedisSettings, parse_settings
from evcore_redis.subscription import RedisSubscription

__all__ = ["RedisTransport"]

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=False,
    exchange_types=frozenset({FANOUT}),
    queue_options=frozenset(),
    persistent=False,
)

#: How many (exchange, routing key) pairs keep their encoded PUBLISH prefix ready.
_HEAD_CACHE_SIZE = 1024
#: A RESP array of three bulk strings, the first one PUBLISH, up to the channel's length.
_PUBLISH = b"*3\r\n$7\r\nPUBLISH\r\n$"
_CRLF = b"\r\n"


class RedisTransport:
    """Events over Redis pub/sub, wire-compatible with kombu's Redis transport."""

    driver_type = "redis"
    capabilities = _CAPABILITIES

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._errors: tuple[type[BaseException], ...] = (load_redis().RedisError, OSError)
        self._response_error: type[BaseException] = load_redis().ResponseError
        self._connection: Any = None
        self._heads: dict[tuple[str, str], bytes] = {}
        self._subscriptions: OpenSubscriptions[RedisSubscription] = OpenSubscriptions()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "redis://", **options: Any) -> RedisTransport:
        """Open ``redis://``, ``rediss://`` or ``redis+socket://``; options as in the docs.

        Nothing is connected until the first publish or subscribe.
        """
        load_redis()
        return cls(parse_settings(url, **options))

    def _command_head(self, exchange: str, routing_key: str) -> bytes:
        """The RESP encoding of ``PUBLISH <channel>`` up to the payload's length."""
        key = (exchange, routing_key)
        head = self._heads.get(key)
        if head is None:
            channel = self.settings.publish_channel(exchange, routing_key).encode("utf-8")
            head = b"%s%d\r\n%s\r\n$" % (_PUBLISH, len(channel), channel)
            if len(self._heads) >= _HEAD_CACHE_SIZE:
                self._heads.clear()
            self._heads[key] = head
        return head

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """PUBLISH every message in one round trip; ConnectionLost if any may be unsent."""
        if self._closed:
            raise ConnectionLost("the Redis transport is closed")
        _require_fanout(exchange)
        if not messages:
            return
        name = exchange.name
        head = self._command_head
        parts: list[bytes] = []
        for message, payload in zip(messages, pack_many(name, messages), strict=True):
            parts += (head(name, message.routing_key), b"%d\r\n" % len(payload), payload, _CRLF)
        connection = self._connection
        if connection is None:
            connection = self._connection = connection_for(
                self.settings, self.settings.health_check_interval
            )
            try:
                connection.connect()  # its own step, so an unreachable broker is named as such
            except self._errors as exc:
                connection.disconnect()
                self._connection = None
                raise translate(exc, "connecting", self.settings) from exc
        refusal: BaseException | None = None
        try:
            connection.send_packed_command([b"".join(parts)])
            for _ in messages:
                try:
                    connection.read_response()
                except self._response_error as exc:
                    refusal = refusal or exc
        except self._errors as exc:
            connection.disconnect()
            self._connection = None  # the next publish connects afresh, as a step of its own
            raise translate(exc, "publishing", self.settings) from exc
        if refusal is not None:
            raise translate(refusal, "PUBLISH", self.settings) from refusal

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> RedisSubscription:
        """PSUBSCRIBE to the channels ``binding_key`` may match, on a connection of its own.

        ``queue`` is not used: pub/sub has no queue, nothing is kept for an absent
        subscriber, and the core filters by the exact binding key.
        """
        if self._closed:
            raise ConnectionLost("the Redis transport is closed")
        _require_fanout(exchange)
        patterns = self.settings.subscribe_patterns(exchange.name, binding_key)
        subscription = RedisSubscription(
            self.settings, exchange.name, patterns, self._subscriptions.forget
        )
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the Redis transport was closed while subscribing")
        return subscription

    def close(self) -> None:
        """Close the publishing connection and every subscription; safe to call twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()

    def __repr__(self) -> str:
        return f"<RedisTransport {self.settings.kind} {self.settings.address}>"


def _require_fanout(exchange: Exchange) -> None:
    if exchange.type != FANOUT:
        raise UnsupportedOperation(
            f"the Redis transport carries fanout exchanges only (pub/sub, as kombu does for "
            f"events); exchange {exchange.name!r} has type {exchange.type!r}"
        )
