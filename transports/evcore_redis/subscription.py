"""One PSUBSCRIBE on a dedicated connection: the Redis side of a Receiver.

Pub/sub is at-most-once: only messages published while the subscription is attached
arrive. The reading connection serves nothing else, so a slow handler never delays a
publish and Redis only disconnects it when the reader falls behind by more than
``client-output-buffer-limit pubsub`` allows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from evcore.errors import ConnectionLost, MessageRejected
from evcore.transport import IncomingMessage
from evcore_adapter_helpers.envelope import unpack
from evcore_redis.client import connection_for, load_redis, translate
from evcore_redis.reader import PubSubReader
from evcore_redis.settings import RedisSettings

__all__ = ["RedisSubscription"]

logger = logging.getLogger("evcore.redis")


class RedisSubscription(PubSubReader):
    """Messages published on one exchange's channels that match the binding key's patterns."""

    def __init__(
        self,
        settings: RedisSettings,
        exchange: str,
        patterns: list[str],
        on_close: Callable[[RedisSubscription], None],
    ) -> None:
        self.exchange = exchange
        self.patterns = tuple(patterns)
        #: Messages dropped because their envelope could not be decoded.
        self.rejected = 0
        self._settings = settings
        self._on_close = on_close
        self._prefix = settings.channel_prefix(exchange).encode("utf-8")
        self._errors = _client_errors()
        self._connection = connection_for(settings)
        self._start_reading()
        self._attach()

    def _attach(self) -> None:
        connection = self._connection
        try:
            connection.connect()  # its own step, so an unreachable broker is named as such
        except self._errors as exc:
            connection.disconnect()
            raise translate(exc, "connecting", self._settings) from exc
        try:
            connection.send_command("PSUBSCRIBE", *self.patterns)
            for _ in self.patterns:
                reply = connection.read_response()
                if not (isinstance(reply, list) and reply and reply[0] == b"psubscribe"):
                    raise ConnectionLost(f"unexpected reply to PSUBSCRIBE: {reply!r:.200}")
        except self._errors as exc:
            connection.disconnect()
            raise translate(exc, "subscribing", self._settings) from exc
        except ConnectionLost:
            connection.disconnect()
            raise
        self._last_read = time.monotonic()

    @property
    def reader_settings(self) -> RedisSettings:
        return self._settings

    def _drain(self, received: list[IncomingMessage]) -> None:
        connection = self._connection
        limit = self._settings.max_drain
        while True:
            reply = connection.read_response()
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
                received.append(self._decode(reply[2], reply[3]))
            if len(received) >= limit or not connection.can_read(0):
                break

    def _decode(self, channel: bytes, payload: bytes) -> IncomingMessage:
        prefix = self._prefix
        if channel.startswith(prefix) and channel[len(prefix) : len(prefix) + 1] == b"/":
            routing_key = channel[len(prefix) + 1 :].decode("utf-8", "replace")
        else:
            routing_key = ""
        try:
            message = unpack(payload, routing_key)
        except MessageRejected as exc:
            self.rejected += 1
            logger.warning(
                "dropped a message on Redis channel %r: %s", channel.decode("utf-8", "replace"), exc
            )
            return IncomingMessage(payload, routing_key, self.exchange, rejected=exc.reason)
        if not message.exchange:
            message = replace(message, exchange=self.exchange)
        return message

    def _on_closed(self) -> None:
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self._dead else "open"
        return f"<RedisSubscription {self._settings.address} {list(self.patterns)} {state}>"


def _client_errors() -> tuple[type[BaseException], ...]:
    redis = load_redis()
    return (redis.RedisError, OSError)
