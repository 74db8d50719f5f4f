"""One SSUBSCRIBE on a connection to the node serving the channel's slot.

Sharded pub/sub keeps a channel on the shard that owns its hash slot: SPUBLISH goes to
that shard's primary and only its nodes forward the message, so subscribing elsewhere is
answered with MOVED, which the subscription follows. When the slot moves away (a
migration, a failover) or the node goes, the server drops the subscription (SUNSUBSCRIBE,
or a closed socket); ``receive()`` then raises ConnectionLost and the Receiver subscribes
again, on the node that serves the slot now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from evcore.errors import ConnectionLost, MessageRejected
from evcore.routing import routes
from evcore.transport import IncomingMessage
from evcore_adapter_helpers.envelope import unpack
from evcore_redis.client import connection_for, load_redis, translate
from evcore_redis.reader import PubSubReader
from evcore_redis.settings import RedisSettings
from evcore_rediscluster.settings import ClusterSettings

__all__ = ["ClusterSubscription"]

logger = logging.getLogger("evcore.rediscluster")


class ClusterSubscription(PubSubReader):
    """Messages of one exchange's sharded channel whose routing key the binding matches."""

    broker = "Redis Cluster"

    def __init__(
        self,
        settings: ClusterSettings,
        node: tuple[str, int],
        exchange: str,
        exchange_type: str,
        binding_key: str,
        on_close: Callable[[ClusterSubscription], None],
    ) -> None:
        self.exchange = exchange
        self.channel = settings.channel(exchange)
        #: Messages dropped because their envelope could not be decoded.
        self.rejected = 0
        self._settings = settings
        self._type = exchange_type
        self._binding = binding_key
        self._on_close = on_close
        redis = load_redis()
        self._errors = (redis.RedisError, OSError)
        self.node = node
        self._node_settings = replace(settings.node, host=node[0], port=node[1])
        self._connection: Any = None
        self._attach(node)
        self._start_reading()

    def _attach(self, node: tuple[str, int]) -> None:
        """SSUBSCRIBE on ``node``, following MOVED answers to the node that serves the slot."""
        redis = load_redis()
        for _ in range(self._settings.max_redirects + 1):
            self.node = node
            self._node_settings = replace(self._settings.node, host=node[0], port=node[1])
            connection = connection_for(self._node_settings)
            try:
                connection.send_command("SSUBSCRIBE", self.channel)
                reply = connection.read_response()
            except redis.ResponseError as exc:
                connection.disconnect()
                moved = _moved_to(exc)
                if moved is None:
                    raise translate(exc, "SSUBSCRIBE", self._node_settings) from exc
                node = moved
                continue
            except self._errors as exc:
                connection.disconnect()
                raise translate(exc, "subscribing", self._node_settings) from exc
            if not (isinstance(reply, list) and reply and reply[0] == b"ssubscribe"):
                connection.disconnect()
                raise ConnectionLost(f"unexpected reply to SSUBSCRIBE: {reply!r:.200}")
            self._connection = connection
            return
        raise ConnectionLost(
            f"SSUBSCRIBE {self.channel!r} was redirected more than "
            f"{self._settings.max_redirects} times (the cluster is resharding)"
        )

    @property
    def reader_settings(self) -> RedisSettings:
        return self._node_settings

    def _drain(self, received: list[IncomingMessage]) -> None:
        connection = self._connection
        limit = self._settings.node.max_drain
        while True:
            reply = connection.read_response()
            if isinstance(reply, list) and len(reply) == 3:
                kind = reply[0]
                if kind == b"smessage":
                    message = self._decode(reply[2])
                    if message is not None:
                        received.append(message)
                elif kind == b"sunsubscribe":
                    raise ConnectionLost(
                        f"the slot of channel {self.channel!r} moved away from "
                        f"{self.node[0]}:{self.node[1]}; subscribe again"
                    )
            if len(received) >= limit or not connection.can_read(0):
                break

    def _decode(self, payload: bytes) -> IncomingMessage | None:
        try:
            message = unpack(payload)
        except MessageRejected as exc:
            self.rejected += 1
            logger.warning("dropped a message on channel %r: %s", self.channel, exc)
            return IncomingMessage(payload, "", self.exchange, rejected=exc.reason)
        if not routes(self._type, self._binding, message.routing_key):
            return None
        return replace(message, exchange=self.exchange)

    def _on_closed(self) -> None:
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self._dead else "open"
        return f"<ClusterSubscription {self.node} {self.channel!r} {state}>"


def _moved_to(error: BaseException) -> tuple[str, int] | None:
    """The node a ``MOVED <slot> <host>:<port>`` answer points to, or None."""
    host, port = getattr(error, "host", None), getattr(error, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    words = str(error).split()
    if len(words) == 3 and words[0] == "MOVED":
        host, _, digits = words[2].rpartition(":")
        if host and digits.isdigit():
            return host, int(digits)
    return None
