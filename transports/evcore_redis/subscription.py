"""One PSUBSCRIBE on a dedicated connection: the Redis side of a Receiver.

Pub/sub is at-most-once: only messages published while the subscription is attached
arrive. The reading connection serves nothing else, so a slow handler never delays a
publish and Redis only disconnects it when the reader falls behind by more than
``client-output-buffer-limit pubsub`` allows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from evcore.errors import ConnectionLost, MessageRejected
from evcore.transport import IncomingMessage
from evcore_adapter_helpers.envelope import unpack
from evcore_redis.client import connection_for, load_redis, shutdown_socket, translate
from evcore_redis.settings import RedisSettings

__all__ = ["RedisSubscription"]

logger = logging.getLogger("evcore.redis")

#: How long close() waits for a blocked reader to notice the shut-down socket.
_CLOSE_WAIT = 5.0


class RedisSubscription:
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
        self._io = threading.Lock()
        self._closed = threading.Event()
        self._dead = False
        self._last_read = time.monotonic()
        self._ping_sent: float | None = None
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
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed.is_set()

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Wait up to ``timeout`` seconds for a message, then return it with every message
        already buffered behind it (at most ``max_drain``); ``[]`` on timeout or close."""
        if self._closed.is_set():
            return []
        with self._io:
            if self._dead:
                raise ConnectionLost("this Redis subscription lost its connection; subscribe again")
            try:
                return self._receive(timeout)
            except self._errors as exc:
                self._connection.disconnect()
                if self._closed.is_set():
                    return []
                self._dead = True
                raise translate(exc, "receiving", self._settings) from exc
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
        """Seconds to wait for data: until the deadline or the next health check."""
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        interval = self._settings.health_check_interval
        if interval:
            if self._ping_sent is None:
                due = self._last_read + interval
            else:
                due = self._ping_sent + self._ping_grace()
            until = max(due - time.monotonic(), 0.0)
            wait = until if wait is None else min(wait, until)
        return wait

    def _ping_grace(self) -> float:
        return self._settings.socket_timeout or self._settings.health_check_interval

    def _check_health(self, now: float) -> None:
        """PING a silent connection; give it up when the PING goes unanswered."""
        interval = self._settings.health_check_interval
        if not interval:
            return
        if self._ping_sent is None:
            if now - self._last_read >= interval:
                self._connection.send_command("PING", check_health=False)
                self._ping_sent = now
        elif now - self._ping_sent >= self._ping_grace():
            raise ConnectionLost(
                f"Redis at {self._settings.address} did not answer a health-check PING "
                f"within {self._ping_grace():g} s"
            )

    def _drain(self, received: list[IncomingMessage]) -> None:
        connection = self._connection
        limit = self._settings.max_drain
        while True:
            reply = connection.read_response()
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
                received.append(self._decode(reply[2], reply[3]))
            if len(received) >= limit or not connection.can_read(0):
                break
        self._last_read = time.monotonic()
        self._ping_sent = None

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

    def close(self) -> None:
        """Unsubscribe by dropping the connection; wakes a blocked :meth:`receive`."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._io.acquire(blocking=False) or self._wake_reader():
            try:
                self._connection.disconnect()
            except Exception:
                logger.debug("error while closing a Redis subscription", exc_info=True)
            finally:
                self._io.release()
        self._on_close(self)

    def _wake_reader(self) -> bool:
        """Shut the socket under a blocked reader and wait for it to leave."""
        shutdown_socket(self._connection)
        return self._io.acquire(timeout=_CLOSE_WAIT)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self._dead else "open"
        return f"<RedisSubscription {self._settings.address} {list(self.patterns)} {state}>"


def _client_errors() -> tuple[type[BaseException], ...]:
    redis = load_redis()
    return (redis.RedisError, OSError)
