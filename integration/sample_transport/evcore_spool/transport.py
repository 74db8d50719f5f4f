"""``spool://`` for evcore: the Transport protocol over a :class:`~evcore_spool.spool.Spool`."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from evcore.errors import (
    ChannelError,
    ConfigurationError,
    ConnectionLost,
    InvalidURL,
    UnsupportedOperation,
)
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    IncomingMessage,
    OutgoingMessage,
    QueueOptions,
)
from evcore_spool.spool import ExchangeTypeMismatch, QueueLocked, Spool, decode

__all__ = ["SpoolSubscription", "SpoolTransport"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 0.02

CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=True,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset({"exclusive", "auto_delete", "message_ttl"}),
    persistent=True,
)


def _mapped(what: str, call: Callable[[], T]) -> T:
    """Run ``call``, turning the spool's and the operating system's failures into evcore's."""
    try:
        return call()
    except ExchangeTypeMismatch as exc:
        raise ChannelError(str(exc)) from None
    except QueueLocked as exc:
        raise ChannelError(str(exc)) from None
    except PermissionError as exc:
        raise ChannelError(f"{what}: permission denied: {exc}") from exc
    except OSError as exc:
        raise ConnectionLost(f"{what}: {exc}") from exc


class SpoolSubscription:
    """A queue in the spool, read by polling; ``close()`` from any thread wakes ``receive()``."""

    def __init__(
        self, transport: SpoolTransport, queue: QueueOptions, lock_fd: int
    ) -> None:
        self._transport = transport
        self._queue = queue
        self._lock_fd = lock_fd
        self._claim = uuid.uuid4().hex
        self._closed = threading.Event()
        self._close_lock = threading.Lock()

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        deadline = None if timeout is None else time.monotonic() + timeout
        spool, poll = self._transport.spool, self._transport.poll_interval
        while not self._closed.is_set():
            taken = _mapped(
                f"reading queue {self._queue.name!r}",
                lambda: spool.take(self._queue.name, self._claim),
            )
            messages = self._fresh(taken)
            if messages:
                return messages
            if taken:
                continue  # everything read had expired: look again before waiting
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self._closed.wait(poll if remaining is None else min(poll, remaining))
        return []

    def _fresh(self, taken: list[tuple[float, bytes]]) -> list[IncomingMessage]:
        ttl = self._queue.message_ttl
        oldest = None if ttl is None else time.time() - ttl
        messages = []
        for published_at, envelope in taken:
            if oldest is not None and published_at < oldest:
                continue
            message = decode(envelope)
            if message is None:
                logger.warning("dropped a file that is not a message in %r", self._queue.name)
                continue
            messages.append(message)
        return messages

    def close(self) -> None:
        with self._close_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._transport._forget(self)
        _mapped(
            f"closing queue {self._queue.name!r}",
            lambda: self._transport.spool.close_queue(
                self._queue.name, self._lock_fd, delete_if_unused=self._queue.auto_delete
            ),
        )


class SpoolTransport:
    """Events through a spool directory that every process on the machine can share.

    ``spool:///var/tmp/events`` uses that directory, creating it on first use;
    ``?poll_interval=0.05`` (or the ``poll_interval`` option) sets how often an idle
    subscription looks for new messages, in seconds.
    """

    driver_type = "spool"
    capabilities = CAPABILITIES

    def __init__(self, root: Path, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.spool = Spool(root)
        self.poll_interval = poll_interval
        self._subscriptions: set[SpoolSubscription] = set()
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SpoolTransport:
        """Open ``spool:///absolute/path``; no I/O happens before the first use."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidURL(f"cannot parse {url!r}: {exc}") from None
        if parts.scheme != "spool":
            raise InvalidURL(f"not a spool:// URL: {url!r}")
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidURL(
                f"{url!r} does not name a local directory (expected spool:///absolute/path)"
            )
        settings = dict(parse_qsl(parts.query, keep_blank_values=True))
        settings.update(options)
        unknown = sorted(set(settings) - {"poll_interval"})
        if unknown:
            raise InvalidURL(f"{url!r}: unknown option(s) {unknown}; known: poll_interval")
        try:
            poll = float(settings.get("poll_interval", DEFAULT_POLL_INTERVAL))
        except (TypeError, ValueError):
            raise ConfigurationError("poll_interval must be a number of seconds") from None
        if not 0 < poll <= 10:
            raise ConfigurationError(f"poll_interval must be in (0, 10] seconds, got {poll}")
        return cls(Path(parts.path), poll)

    def _prepare(self, exchange: Exchange) -> None:
        if self._closed:
            raise ConnectionLost(f"spool transport for {self.spool.root} is closed")
        if exchange.type not in CAPABILITIES.exchange_types:
            raise UnsupportedOperation(f"spool:// has no exchange type {exchange.type!r}")
        if not self._ready:
            _mapped(f"opening spool {self.spool.root}", self.spool.ensure)
            self._ready = True
        _mapped(
            f"declaring exchange {exchange.name!r}",
            lambda: self.spool.declare_exchange(exchange.name, exchange.type),
        )

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        self._prepare(exchange)
        _mapped(
            f"publishing to {exchange.name!r}",
            lambda: self.spool.publish(exchange.name, exchange.type, messages),
        )

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> SpoolSubscription:
        self._prepare(exchange)
        lock_fd = _mapped(
            f"opening queue {queue.name!r}",
            lambda: self.spool.open_queue(queue.name, queue.exclusive),
        )
        subscription = SpoolSubscription(self, queue, lock_fd)
        try:
            _mapped(
                f"binding queue {queue.name!r}",
                lambda: self.spool.bind(exchange.name, queue.name, binding_key),
            )
        except BaseException:
            subscription.close()
            raise
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def _forget(self, subscription: SpoolSubscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()

    def __repr__(self) -> str:
        return f"<SpoolTransport spool://{self.spool.root}>"
