"""The reading side shared by Redis pub/sub subscriptions (plain and sharded).

A subscription reads one dedicated connection. ``receive()`` waits for data no longer than
the next health check, PINGs a connection that stayed silent for ``health_check_interval``
and gives it up when the PING goes unanswered; ``close()`` shuts the socket under a
blocked reader so it returns at once. Subclasses say how to subscribe and how to read
their replies (:meth:`PubSubReader._drain`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from evcore.errors import ConnectionLost
from evcore.transport import IncomingMessage
from evcore_redis.client import shutdown_socket, translate
from evcore_redis.settings import RedisSettings

__all__ = ["PubSubReader"]

logger = logging.getLogger("evcore.redis")

#: How long close() waits for a blocked reader to notice the shut-down socket.
CLOSE_WAIT = 5.0


class PubSubReader:
    """One subscribed connection read with health checks; see the module documentation."""

    #: How the broker is named in errors ("Redis", "Redis Cluster").
    broker = "Redis"
    _connection: Any
    _errors: tuple[type[BaseException], ...]

    def _start_reading(self) -> None:
        self._io = threading.Lock()
        self._closed = threading.Event()
        self._dead = False
        self._last_read = time.monotonic()
        self._ping_sent: float | None = None

    @property
    def reader_settings(self) -> RedisSettings:
        """The settings of the connection being read (timeouts, health checks, drain)."""
        raise NotImplementedError

    def _drain(self, received: list[IncomingMessage]) -> None:
        """Read the replies waiting on the connection into ``received``."""
        raise NotImplementedError

    def _on_closed(self) -> None:
        """Called once by :meth:`close`, after the connection is dropped."""

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
                raise ConnectionLost(
                    f"this {self.broker} subscription lost its connection; subscribe again"
                )
            try:
                return self._receive(timeout)
            except self._errors as exc:
                self._connection.disconnect()
                if self._closed.is_set():
                    return []
                self._dead = True
                raise translate(exc, "receiving", self.reader_settings) from exc
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
                self._last_read = time.monotonic()
                self._ping_sent = None
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
        interval = self.reader_settings.health_check_interval
        if interval:
            if self._ping_sent is None:
                due = self._last_read + interval
            else:
                due = self._ping_sent + self._ping_grace()
            until = max(due - time.monotonic(), 0.0)
            wait = until if wait is None else min(wait, until)
        return wait

    def _ping_grace(self) -> float:
        settings = self.reader_settings
        return settings.socket_timeout or settings.health_check_interval

    def _check_health(self, now: float) -> None:
        """PING a silent connection; give it up when the PING goes unanswered."""
        interval = self.reader_settings.health_check_interval
        if not interval:
            return
        if self._ping_sent is None:
            if now - self._last_read >= interval:
                self._connection.send_command("PING", check_health=False)
                self._ping_sent = now
        elif now - self._ping_sent >= self._ping_grace():
            raise ConnectionLost(
                f"{self.broker} at {self.reader_settings.address} did not answer a "
                f"health-check PING within {self._ping_grace():g} s"
            )

    def close(self) -> None:
        """Unsubscribe by dropping the connection; wakes a blocked :meth:`receive`."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._io.acquire(blocking=False) or self._wake_reader():
            try:
                self._connection.disconnect()
            except Exception:
                logger.debug("error while closing a %s subscription", self.broker, exc_info=True)
            finally:
                self._io.release()
        self._on_closed()

    def _wake_reader(self) -> bool:
        """Shut the socket under a blocked reader and wait for it to leave."""
        shutdown_socket(self._connection)
        return self._io.acquire(timeout=CLOSE_WAIT)
