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
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from evcore.errors import ConnectionLost, MessageRejected
from evcore.routing import routes
from evcore.transport import IncomingMessage
from evcore_adapter_helpers.envelope import unpack
from evcore_redis.client import connection_for, load_redis, shutdown_socket, translate
from evcore_rediscluster.settings import ClusterSettings

__all__ = ["ClusterSubscription"]

logger = logging.getLogger("evcore.rediscluster")

#: How long close() waits for a blocked reader to notice the shut-down socket.
_CLOSE_WAIT = 5.0


class ClusterSubscription:
    """Messages of one exchange's sharded channel whose routing key the binding matches."""

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
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._io = threading.Lock()
        self._closed = threading.Event()
        self._dead = False
        self._ping_sent: float | None = None
        self.node = node
        self._node_settings = replace(settings.node, host=node[0], port=node[1])
        self._connection: Any = None
        self._attach(node)
        self._last_read = time.monotonic()

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
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed.is_set()

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Wait up to ``timeout`` seconds for a message, then return it with every message
        already buffered behind it; ``[]`` on timeout or close."""
        if self._closed.is_set():
            return []
        with self._io:
            if self._dead:
                raise ConnectionLost("this Redis Cluster subscription was dropped; subscribe again")
            try:
                return self._receive(timeout)
            except self._errors as exc:
                self._connection.disconnect()
                if self._closed.is_set():
                    return []
                self._dead = True
                raise translate(exc, "receiving", self._node_settings) from exc
            except ConnectionLost:
                self._connection.disconnect()
                self._dead = True
                raise
            finally:
                if self._closed.is_set():
                    self._connection.disconnect()

    def _receive(self, timeout: float | None) -> list[IncomingMessage]:
        connection = self._connection
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        received: list[IncomingMessage] = []
        while not self._closed.is_set():
            if connection.can_read(self._wait(deadline)):
                self._drain(received)
                if received:
                    return received
                continue
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            self._check_health(now)
        return received

    def _wait(self, deadline: float | None) -> float | None:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        interval = self._settings.node.health_check_interval
        if interval:
            base = self._last_read + interval if self._ping_sent is None else (
                self._ping_sent + self._ping_grace()
            )
            until = max(base - time.monotonic(), 0.0)
            wait = until if wait is None else min(wait, until)
        return wait

    def _ping_grace(self) -> float:
        node = self._settings.node
        return node.socket_timeout or node.health_check_interval

    def _check_health(self, now: float) -> None:
        """PING a silent connection; give it up when the PING goes unanswered."""
        if not self._settings.node.health_check_interval:
            return
        if self._ping_sent is None:
            if now - self._last_read >= self._settings.node.health_check_interval:
                self._connection.send_command("PING", check_health=False)
                self._ping_sent = now
        elif now - self._ping_sent >= self._ping_grace():
            raise ConnectionLost(
                f"Redis Cluster node {self.node[0]}:{self.node[1]} did not answer a "
                f"health-check PING within {self._ping_grace():g} s"
            )

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
        self._last_read = time.monotonic()
        self._ping_sent = None

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

    def close(self) -> None:
        """Unsubscribe by dropping the connection; wakes a blocked :meth:`receive`."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._io.acquire(blocking=False) or self._wake_reader():
            try:
                self._connection.disconnect()
            except Exception:
                logger.debug("error while closing a Redis Cluster subscription", exc_info=True)
            finally:
                self._io.release()
        self._on_close(self)

    def _wake_reader(self) -> bool:
        shutdown_socket(self._connection)
        return self._io.acquire(timeout=_CLOSE_WAIT)

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
