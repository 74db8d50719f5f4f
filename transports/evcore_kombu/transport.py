"""The kombu bridge: evcore's Transport protocol over a kombu ``Connection``."""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from evcore.errors import (
    ChannelError,
    ConfigurationError,
    ConnectionLost,
    EvcoreError,
    InvalidURL,
    MissingDependency,
    UnsupportedOperation,
)
from evcore.transport import Exchange, IncomingMessage, OutgoingMessage, QueueOptions
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_kombu.errors import INSTALL_HINT, import_kombu, translate
from evcore_kombu.support import KombuSupport, inspect_transport

__all__ = ["KombuSubscription", "KombuTransport"]

logger = logging.getLogger(__name__)

SCHEME_PREFIX = "kombu+"

#: Longest single wait inside ``receive()``, so ``close()`` from another thread is seen
#: within about this many seconds.
WAIT_SLICE = 0.2

#: Most messages one ``receive()`` hands back; the rest wait for the next call.
MAX_BATCH = 1000

#: kombu ``Connection`` arguments that may not be passed as options.
_RESERVED_OPTIONS = frozenset({"self", "hostname", "transport", "uri_prefix", "kwargs"})

#: What kombu calls raw bytes with no declared type.
_RAW_CONTENT_TYPE = "application/data"


class KombuTransport:
    """Carry evcore events over any broker kombu supports.

    Built from ``kombu+<kombu url>`` (``kombu+redis://127.0.0.1:6379/0``,
    ``kombu+sqla+sqlite:////tmp/x.db``, ``kombu+memory://``) or around an existing
    ``kombu.Connection``: ``KombuTransport(connection=conn)``. The transport opens its own
    connections from that one's settings (``conn.clone()``), one for publishing and one
    per subscription, and never closes ``conn`` itself.

    ``driver_type`` is kombu's, so the core's exchange rules apply as in Celery. A broker
    over which kombu cannot broadcast (SQS, SQL, ...) is refused with
    :class:`~evcore.errors.UnsupportedOperation` on publish and subscribe.
    """

    def __init__(self, connection: Any, *, owns_connection: bool = False) -> None:
        kombu = import_kombu()
        if not isinstance(connection, kombu.Connection):
            raise ConfigurationError(
                f"KombuTransport needs a kombu.Connection, got {type(connection).__name__}"
            )
        self._template = connection
        self._owns_template = owns_connection
        self.support: KombuSupport = inspect_transport(type(_kombu_transport_of(connection)))
        self.driver_type = self.support.driver_type
        self.capabilities = self.support.capabilities
        self._lock = threading.Lock()
        self._publisher: _Publisher | None = None
        self._subscriptions: OpenSubscriptions[KombuSubscription] = OpenSubscriptions()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KombuTransport:
        """Open ``kombu+<kombu url>``; ``options`` are ``kombu.Connection`` arguments
        (``transport_options``, ``ssl``, ``connect_timeout``, ``heartbeat``...)."""
        if not isinstance(url, str) or not url.lower().startswith(SCHEME_PREFIX):
            raise InvalidURL(
                f"not a kombu bridge URL: {url!r} (expected kombu+<kombu url>, "
                "e.g. kombu+redis://127.0.0.1:6379/0)"
            )
        kombu_url = url[len(SCHEME_PREFIX) :]
        if "://" not in kombu_url or kombu_url.startswith("://"):
            raise InvalidURL(
                f"{url!r} does not wrap a kombu URL (expected kombu+<kombu url>, "
                "e.g. kombu+memory://)"
            )
        kombu = import_kombu()
        allowed = set(inspect.signature(kombu.Connection).parameters) - _RESERVED_OPTIONS
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigurationError(
                f"unknown kombu connection option(s) {unknown}; "
                f"accepted: {', '.join(sorted(allowed))}"
            )
        try:
            connection = kombu.Connection(kombu_url, **options)
        except ValueError as exc:
            raise InvalidURL(f"kombu cannot parse {url!r}: {exc}") from exc
        except (KeyError, ImportError) as exc:
            raise _lookup_error(exc, kombu_url.split("://", 1)[0]) from exc
        transport = cls(connection, owns_connection=True)
        if not connection.hostname:
            # Spell out kombu's default host (memory://, filesystem://), or kombu warns
            # "No hostname was supplied" on every clone.
            defaults = connection.transport.default_connection_params
            connection.hostname = defaults.get("hostname")
        return transport

    # -- publishing -----------------------------------------------------------------------

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` in order with kombu's Producer, bodies passed as bytes."""
        self._refuse_unless_broadcast(exchange)
        with self._lock:
            if self._closed:
                raise ConnectionLost("kombu transport is closed")
            try:
                if self._publisher is None:
                    self._publisher = _Publisher(self._template)
                self._publisher.publish(exchange, messages)
            except Exception as exc:
                publisher, self._publisher = self._publisher, None
                if publisher is not None:
                    publisher.discard()
                raise translate(exc, self._template, f"publishing to {exchange.name!r}") from exc

    # -- subscribing ----------------------------------------------------------------------

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> KombuSubscription:
        """Declare ``queue``, bind it to ``exchange`` and start consuming with ``no_ack``."""
        self._refuse_unless_broadcast(exchange)
        if self._closed:
            raise ConnectionLost("kombu transport is closed")
        if self.support.virtual and binding_key != "#" and "#" in binding_key:
            # kombu's virtual topics differ from AMQP on '#' ('worker.#' misses 'worker'):
            # take everything and let the core filter (exact_routing is False here).
            binding_key = "#"
        subscription = KombuSubscription(self, self._template.clone())
        subscription.start(exchange, binding_key, queue, warm_up=self.support.virtual)
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("kombu transport is closed")
        return subscription

    def _refuse_unless_broadcast(self, exchange: Exchange) -> None:
        reason = self.support.refusal(exchange.type)
        if reason is not None:
            raise UnsupportedOperation(reason)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every subscription and the publishing connection. Safe to call twice."""
        with self._lock:
            self._closed = True
            publisher, self._publisher = self._publisher, None
        for subscription in self._subscriptions.close():
            subscription.close()
        if publisher is not None:
            publisher.close()
        if self._owns_template:
            _quietly(self._template.release, "releasing the kombu connection")

    def __repr__(self) -> str:
        return f"<KombuTransport {SCHEME_PREFIX}{self._template.as_uri()}>"


class KombuSubscription:
    """A queue consumed through a kombu ``Consumer`` on a connection of its own."""

    def __init__(self, transport: KombuTransport, connection: Any) -> None:
        self._transport = transport
        self._connection = connection
        self._consumer: Any = None
        self._pending: list[IncomingMessage] = []
        #: Held while waiting on the connection; ``close()`` takes it before tearing down.
        self._io = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        #: Why the connection died; every later ``receive()`` raises ConnectionLost.
        self._lost: str | None = None
        #: A failure met after messages had arrived, raised by the next ``receive()``.
        self._failure: EvcoreError | None = None

    def start(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions, warm_up: bool
    ) -> None:
        """Declare and bind the queue, and start consuming."""
        kombu = import_kombu()
        try:
            channel = self._connection.channel()
            if hasattr(channel, "auto_decode"):
                channel.auto_decode = False  # py-amqp would decode bodies to str
            kombu_exchange = _declare_exchange(
                kombu, channel, exchange, self._connection.channel_errors
            )
            kombu_queue = kombu.Queue(
                queue.name,
                exchange=kombu_exchange,
                routing_key=binding_key,
                channel=channel,
                durable=queue.durable,
                exclusive=queue.exclusive,
                auto_delete=queue.auto_delete,
                message_ttl=queue.message_ttl,
                expires=queue.expires,
                max_length=queue.max_length,
            )
            # accept=[] lets kombu deserialise nothing; on_message gets the raw message.
            self._consumer = kombu.Consumer(
                channel,
                queues=[kombu_queue],
                no_ack=True,
                accept=[],
                on_message=self._arrived,
            )
            self._consumer.consume()
            if warm_up:
                # Virtual transports subscribe lazily, on the first wait (Redis sends its
                # PSUBSCRIBE then): wait once now so events sent after subscribe() arrive.
                self._drain(0)
        except Exception as exc:
            error = translate(exc, self._connection, f"subscribing to {exchange.name!r}")
            _quietly(self._connection.collect, "discarding a failed connection")
            raise error from exc

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        """What arrived, waiting up to ``timeout`` seconds (``None``: until something does
        or the subscription is closed) for the first message."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._io:
            if self._closing.is_set():
                return []
            if self._lost is not None:
                raise ConnectionLost(self._lost)
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            while not self._pending and not self._closing.is_set():
                wait = WAIT_SLICE
                if deadline is not None:
                    wait = min(wait, max(deadline - time.monotonic(), 0.0))
                self._drain(wait)
                if deadline is not None and time.monotonic() >= deadline:
                    break
            if self._closing.is_set() or not self._pending:
                return []
            try:
                while len(self._pending) < MAX_BATCH and self._drain(0):
                    pass
            except EvcoreError as exc:
                self._failure = exc  # hand over what arrived first; raise it next time
            arrived = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            return arrived

    def _drain(self, timeout: float) -> bool:
        """Let kombu deliver one message to ``_arrived``; False if none came in time."""
        try:
            self._connection.drain_events(timeout=timeout)
        except TimeoutError:  # socket.timeout: nothing arrived in time
            return False
        except Exception as exc:
            error = translate(exc, self._connection, "receiving")
            if isinstance(error, ConnectionLost):
                self._lost = str(error)
            raise error from exc
        return True

    def _arrived(self, message: Any) -> None:
        info = message.delivery_info or {}
        self._pending.append(
            IncomingMessage(
                body=_raw_body(message.body, message.content_encoding),
                routing_key=str(info.get("routing_key") or ""),
                exchange=str(info.get("exchange") or ""),
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=dict(message.headers or {}),
            )
        )

    def close(self) -> None:
        """Cancel the consumer (an auto-delete queue goes with it) and close the
        connection. Safe to call twice, and from another thread than ``receive()``."""
        self._closing.set()
        with self._io:
            if self._closed:
                return
            self._closed = True
            if self._lost is None and self._consumer is not None:
                _quietly(self._consumer.cancel, "cancelling a kombu consumer")
                _quietly(self._connection.release, "closing a kombu connection")
            else:
                _quietly(self._connection.collect, "discarding a lost kombu connection")
            self._pending.clear()
        self._transport._subscriptions.forget(self)


class _Publisher:
    """A connection of its own, its channel and a Producer, remembering what it declared."""

    def __init__(self, template: Any) -> None:
        self._kombu = import_kombu()
        self.connection = template.clone()
        try:
            self.channel = self.connection.channel()
        except Exception:
            self.discard()
            raise
        self.producer = self._kombu.Producer(self.channel, auto_declare=False)
        self.declared: set[Exchange] = set()

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        if exchange not in self.declared:
            _declare_exchange(self._kombu, self.channel, exchange, self.connection.channel_errors)
            self.declared.add(exchange)
        for message in messages:
            # A content type makes kombu send the bytes as they are, never serialising.
            self.producer.publish(
                message.body,
                routing_key=message.routing_key,
                exchange=exchange.name,
                content_type=message.content_type or _RAW_CONTENT_TYPE,
                content_encoding=message.content_encoding or "binary",
                headers=dict(message.headers),
                delivery_mode=message.delivery_mode,
                priority=message.priority,
                retry=False,
            )

    def close(self) -> None:
        _quietly(self.connection.release, "closing the publishing connection")

    def discard(self) -> None:
        _quietly(self.connection.collect, "discarding a failed publishing connection")


def _declare_exchange(
    kombu: Any, channel: Any, exchange: Exchange, channel_errors: tuple[type[Exception], ...]
) -> Any:
    """Declare ``exchange`` on ``channel``; a clash with an existing one is a ChannelError
    naming the exchange and both types."""
    bound = kombu.Exchange(
        exchange.name,
        type=exchange.type,
        durable=exchange.durable,
        auto_delete=exchange.auto_delete,
    )(channel)
    try:
        bound.declare()
    except kombu.transport.virtual.base.NotEquivalentError as exc:
        existing = _virtual_exchange_type(channel, exchange.name)
        raise ChannelError(
            f"exchange {exchange.name!r} is already declared as {existing!r}, "
            f"cannot declare it as {exchange.type!r} (durable={exchange.durable}, "
            f"auto_delete={exchange.auto_delete})"
        ) from exc
    except channel_errors as exc:
        raise ChannelError(
            f"broker refused to declare exchange {exchange.name!r} as {exchange.type!r}: {exc}"
        ) from exc
    return bound


def _virtual_exchange_type(channel: Any, name: str) -> str:
    with contextlib.suppress(Exception):
        return str(channel.state.exchanges[name]["type"])
    return "another type"


def _raw_body(body: Any, encoding: str | None) -> bytes:
    """The body as bytes: virtual transports may hand back text from a foreign envelope."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    text = str(body)
    try:
        return text.encode(encoding or "utf-8")
    except (LookupError, UnicodeError):
        return text.encode("utf-8", "surrogatepass")


def _kombu_transport_of(connection: Any) -> Any:
    """``connection.transport``, with kombu's lookup failures made evcore errors."""
    try:
        return connection.transport
    except (KeyError, ImportError) as exc:
        raise _lookup_error(exc, str(connection.transport_cls)) from exc


def _lookup_error(exc: KeyError | ImportError, name: str) -> EvcoreError:
    """kombu's failure to find or load the transport called ``name``, as an evcore error."""
    if isinstance(exc, KeyError):
        return InvalidURL(f"kombu has no transport {name!r}: {exc.args[0] if exc.args else exc}")
    return MissingDependency(
        f"kombu's {name!r} transport needs a client library that is not installed ({exc}): "
        f"install it (kombu's extra for that broker) alongside {INSTALL_HINT}"
    )


def _quietly(action: Any, doing: str) -> None:
    """Run a best-effort cleanup step; failures are logged, never raised."""
    try:
        action()
    except Exception as exc:
        logger.debug("ignored a failure while %s: %r", doing, exc)
