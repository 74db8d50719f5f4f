"""One LISTEN on a connection of its own: the PostgreSQL side of a Receiver.

Notifications are at-most-once, like Redis pub/sub: only those committed while the
connection listens arrive. The reader waits on the socket and on a pipe that ``close()``
writes to, so closing from another thread wakes it; it reads with libpq's
``consume_input``/``notifies`` (psycopg's ``pq`` layer), never running a query.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from evcore.errors import ConnectionLost, MessageRejected
from evcore.routing import routes
from evcore.transport import IncomingMessage
from evcore_pgnotify.client import connect, load_psycopg, translate
from evcore_pgnotify.payload import decode
from evcore_pgnotify.settings import NotifySettings

__all__ = ["NotifySubscription"]

logger = logging.getLogger("evcore.pgnotify")

#: How long close() waits for a blocked reader to notice the wake-up.
_CLOSE_WAIT = 5.0


class NotifySubscription:
    """Notifications on one exchange's channel whose routing key the binding matches."""

    def __init__(
        self,
        settings: NotifySettings,
        exchange: str,
        exchange_type: str,
        binding_key: str,
        channel: str,
        on_close: Callable[[NotifySubscription], None],
    ) -> None:
        self.exchange = exchange
        self.channel = channel
        #: Notifications dropped because they could not be decoded.
        self.rejected = 0
        self._settings = settings
        self._type = exchange_type
        self._binding = binding_key
        self._on_close = on_close
        self._psycopg = load_psycopg()
        self._io = threading.Lock()
        self._closed = threading.Event()
        self._dead = False
        self._connection = connect(settings)
        self._wake_read, self._wake_write = os.pipe()
        try:
            sql = self._psycopg.sql
            self._connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except self._psycopg.Error as exc:
            self._release()
            raise translate(exc, f"LISTEN on channel {channel!r}", settings) from exc
        self._pgconn = self._connection.pgconn

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed.is_set()

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Wait up to ``timeout`` seconds for a notification, then return it with every one
        already read behind it; ``[]`` on timeout or close."""
        if self._closed.is_set():
            return []
        with self._io:
            if self._closed.is_set():
                return []
            if self._dead:
                raise ConnectionLost(
                    "this PostgreSQL subscription lost its connection; subscribe again"
                )
            try:
                return self._receive(timeout)
            except (self._psycopg.Error, OSError) as exc:
                if self._closed.is_set():
                    return []
                self._dead = True
                raise translate(exc, "receiving notifications", self._settings) from exc
            except ConnectionLost:
                self._dead = True
                raise

    def _receive(self, timeout: float | None) -> list[IncomingMessage]:
        received: list[IncomingMessage] = []
        self._drain(received)  # read along with an earlier batch
        if received:
            return received
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        pgconn = self._pgconn
        while not self._closed.is_set():
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            readable, _, _ = select.select([pgconn.socket, self._wake_read], [], [], wait)
            if self._closed.is_set():
                break
            if readable:
                pgconn.consume_input()
                if pgconn.status != self._psycopg.pq.ConnStatus.OK:
                    raise ConnectionLost(
                        f"PostgreSQL at {self._settings.address} closed the listening "
                        f"connection: {pgconn.get_error_message()}"
                    )
                self._drain(received)
                if received:
                    break
            elif deadline is not None and time.monotonic() >= deadline:
                break
        return received

    def _drain(self, received: list[IncomingMessage]) -> None:
        pgconn = self._pgconn
        limit = self._settings.max_drain
        while len(received) < limit:
            notify = pgconn.notifies()
            if notify is None:
                return
            message = self._decode(notify.extra.decode("utf-8", "replace"))
            if message is not None:
                received.append(message)

    def _decode(self, payload: str) -> IncomingMessage | None:
        try:
            message = decode(payload, self.exchange)
        except MessageRejected as exc:
            self.rejected += 1
            logger.warning("dropped a notification on channel %r: %s", self.channel, exc)
            return IncomingMessage(
                payload.encode("utf-8"), "", self.exchange, rejected=exc.reason
            )
        if not routes(self._type, self._binding, message.routing_key):
            return None
        return message

    def close(self) -> None:
        """Stop listening by closing the connection; wakes a blocked :meth:`receive`."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        if self._io.acquire(timeout=_CLOSE_WAIT):
            try:
                self._release()
            finally:
                self._io.release()
        self._on_close(self)

    def _release(self) -> None:
        try:
            self._connection.close()
        except Exception:
            logger.debug("error while closing a PostgreSQL subscription", exc_info=True)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self._dead else "open"
        return f"<NotifySubscription {self._settings.address} {self.channel!r} {state}>"


