"""Celery's events through any evcore transport: ``Celery(..., events="evcore.celery:Events")``.

The application's workers and clients then publish their events through the transport named
by the ``evcore_events_url`` setting (falling back to the broker URL), and
``app.events.Receiver`` (so ``celery events`` and Flower) reads them from there.
``app.events.State`` stays Celery's own. See ``docs/celery.md``.

Needs Celery (``pip install 'evcore[celery]'``); the rest of evcore never imports it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from evcore.dispatcher import Dispatcher as EvcoreDispatcher
from evcore.errors import ConfigurationError, MissingDependency, TransportNotFound
from evcore.nodename import utcoffset as local_utcoffset
from evcore.receiver import Handler
from evcore.receiver import Receiver as EvcoreReceiver

try:
    from celery import current_app
    from celery.app.events import Events as CeleryEvents
    from celery.events.receiver import EventReceiver as CeleryReceiver
except ImportError as exc:  # pragma: no cover - exercised without Celery installed
    raise MissingDependency(
        f"evcore.celery needs Celery: pip install 'evcore[celery]' ({exc})"
    ) from exc

__all__ = ["SETTING", "Dispatcher", "Events", "Receiver", "events_url"]

logger = logging.getLogger(__name__)

#: The Celery setting naming the evcore transport events go through.
SETTING = "evcore_events_url"


def events_url(app: Any) -> str:
    """The URL events go through: ``evcore_events_url``, else the broker's URL."""
    conf = app.conf
    url = conf.get(SETTING) or conf.broker_write_url or conf.broker_url
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"set app.conf.{SETTING} to an evcore transport URL")
    return url


def _open_failed(app: Any, exc: TransportNotFound) -> ConfigurationError:
    source = SETTING if app.conf.get(SETTING) else "broker_url (no evcore_events_url set)"
    return ConfigurationError(f"{source}: {exc}; set app.conf.{SETTING} to an evcore URL")


class Dispatcher:
    """Celery's ``EventDispatcher`` interface over an evcore :class:`~evcore.Dispatcher`.

    Takes Celery's arguments; the kombu ``connection``/``channel`` and a ``producer`` given
    to :meth:`publish` are not used: events go through ``evcore_events_url``.
    """

    #: Set by ``app.subclass_with_self`` on the class ``app.events.Dispatcher`` returns.
    app: Any = None

    def __init__(
        self,
        connection: Any = None,
        hostname: str | None = None,
        enabled: bool = True,
        channel: Any = None,
        buffer_while_offline: bool = True,
        app: Any = None,
        serializer: str | None = None,
        groups: Iterable[str] | None = None,
        delivery_mode: int = 1,
        buffer_group: Iterable[str] | None = None,
        buffer_limit: int = 24,
        on_send_buffered: Callable[[], None] | None = None,
    ) -> None:
        self.app = app or self.app or current_app
        #: Celery's code looks for a broker connection here (heartbeats, closing): none.
        self.connection = None
        conf = self.app.conf
        self._options: dict[str, Any] = {
            "hostname": hostname,
            "groups": groups,
            "buffer_while_offline": buffer_while_offline,
            "buffer_group": buffer_group,
            "buffer_limit": buffer_limit,
            "on_send_buffered": on_send_buffered,
            "serializer": serializer or conf.event_serializer,
            "delivery_mode": delivery_mode,
        }
        self.url = events_url(self.app)
        self.dispatcher = self._open(self.url, enabled)
        self._reopening = threading.Lock()
        events = self.app.events
        if isinstance(events, Events):
            events.opened(self)

    def _open(self, url: str, enabled: bool) -> EvcoreDispatcher:
        try:
            return EvcoreDispatcher(
                url, enabled=enabled, exchange=self.app.conf.event_exchange, **self._options
            )
        except TransportNotFound as exc:
            raise _open_failed(self.app, exc) from exc

    # Celery's code reads and changes these on the dispatcher itself.
    @property
    def hostname(self) -> str:
        return self.dispatcher.hostname

    @property
    def enabled(self) -> bool:
        return self.dispatcher.enabled

    @property
    def groups(self) -> set[str]:
        """The groups sent (empty: all); remote control commands change it in place."""
        return self.dispatcher.groups

    @property
    def on_enabled(self) -> set[Callable[[], None]]:
        return self.dispatcher.on_enabled

    @property
    def on_disabled(self) -> set[Callable[[], None]]:
        return self.dispatcher.on_disabled

    def send(
        self,
        type: str,
        blind: bool = False,
        utcoffset: Callable[[], float] = local_utcoffset,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
        Event: Any = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Send an event (Celery's ``send``; ``Event`` is ignored)."""
        return self.dispatcher.send(
            type, blind=blind, utcoffset=utcoffset, retry=retry, retry_policy=retry_policy,
            **fields,
        )

    def publish(
        self,
        type: str,
        fields: Mapping[str, Any],
        producer: Any = None,
        blind: bool = False,
        Event: Any = None,
        retry: bool = False,
        retry_policy: Mapping[str, float] | None = None,
        utcoffset: Callable[[], float] = local_utcoffset,
        **options: Any,
    ) -> dict[str, Any] | None:
        """Publish one event at once (how clients send ``task-sent``); ``producer`` unused.

        As with Celery's, this works after :meth:`close` too: the app's client dispatcher
        lives as long as the app, so it opens its transport again when it was closed or
        when ``evcore_events_url`` changed (as tests do, one bus per test).
        """
        url = events_url(self.app)
        if url != self.url or self.dispatcher.closed:
            with self._reopening:
                if url != self.url or self.dispatcher.closed:
                    groups = self.dispatcher.groups
                    self.dispatcher.close()
                    self.url, self.dispatcher = url, self._open(url, enabled=False)
                    self.dispatcher.groups = groups
        return self.dispatcher.publish(
            type, fields, blind=blind, retry=retry, retry_policy=retry_policy,
            utcoffset=utcoffset,
        )

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        self.dispatcher.flush(errors=errors, groups=groups)

    def extend_buffer(self, other: Dispatcher) -> None:
        self.dispatcher.extend_buffer(other.dispatcher)

    def enable(self) -> None:
        self.dispatcher.enable()

    def disable(self) -> None:
        self.dispatcher.disable()

    def close(self) -> None:
        self.dispatcher.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<evcore.celery.Dispatcher {self.dispatcher!r}>"


class Receiver:
    """Celery's ``EventReceiver`` interface over an evcore :class:`~evcore.Receiver`.

    Events are read from ``evcore_events_url``; the kombu connection Celery passes is kept
    only for the worker's gossip, which consumes from the broker with kombu through
    :attr:`queue`, :attr:`accept` and :meth:`event_from_message` (Celery's own receiver).
    The evcore receiver subscribes on the first :meth:`capture` or :meth:`itercapture`.
    """

    app: Any = None

    def __init__(
        self,
        channel: Any = None,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str = "#",
        node_id: str | None = None,
        app: Any = None,
        queue_prefix: str | None = None,
        accept: Iterable[str] | None = None,
        queue_ttl: float | None = None,
        queue_expires: float | None = None,
    ) -> None:
        self.app = app or self.app or current_app
        conf = self.app.conf
        self.channel = channel
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.routing_key = routing_key
        self.node_id = node_id
        self.queue_prefix = queue_prefix or conf.event_queue_prefix
        self.queue_ttl = conf.event_queue_ttl if queue_ttl is None else queue_ttl
        self.queue_expires = conf.event_queue_expires if queue_expires is None else queue_expires
        self._accept = accept
        self._receiver: EvcoreReceiver | None = None
        self._celery_receiver: Any = None
        self._stop_requested = False

    @property
    def receiver(self) -> EvcoreReceiver:
        """The evcore receiver, subscribed on first use."""
        if self._receiver is None:
            try:
                self._receiver = EvcoreReceiver(
                    events_url(self.app),
                    handlers=self.handlers,
                    routing_key=self.routing_key,
                    node_id=self.node_id,
                    queue_prefix=self.queue_prefix,
                    queue_ttl=self.queue_ttl,
                    queue_expires=self.queue_expires,
                    exchange=self.app.conf.event_exchange,
                    localize=True,  # Celery's receiver localizes timestamps by default
                )
            except TransportNotFound as exc:
                raise _open_failed(self.app, exc) from exc
            self._receiver.handlers = self.handlers  # one dict: later changes apply
            self._receiver.should_stop = self._stop_requested
        return self._receiver

    def subscribe(self) -> EvcoreReceiver:
        """Subscribe now rather than on the first capture, so no event sent from here on
        is missed; return the evcore receiver."""
        return self.receiver

    @property
    def should_stop(self) -> bool:
        return self._receiver.should_stop if self._receiver else self._stop_requested

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._stop_requested = value
        if self._receiver is not None:
            self._receiver.should_stop = value

    def capture(
        self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True
    ) -> int:
        """Handle events as evcore's ``capture`` does (``limit`` counts events; running
        out of ``timeout`` returns); ``wakeup`` first asks workers for a heartbeat."""
        receiver = self.receiver
        if wakeup:
            self.wakeup_workers()
        return receiver.capture(limit=limit, timeout=timeout)

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True
    ) -> Iterator[dict[str, Any]]:
        receiver = self.receiver
        if wakeup:
            self.wakeup_workers()
        yield from receiver.itercapture(limit=limit, timeout=timeout)

    def wakeup_workers(self, channel: Any = None) -> None:
        """Ask every worker for a ``worker-heartbeat`` (a broadcast over the broker)."""
        try:
            self.app.control.broadcast("heartbeat", channel=channel, reply=False)
        except Exception as exc:  # a monitor still starts when the broker is away
            logger.warning("could not ask workers for a heartbeat: %s", exc)

    def process(self, type: str, event: dict[str, Any]) -> None:
        self.receiver.process(type, event)

    # -- what Celery's worker gossip uses: Celery's own receiver on the broker ------------

    def _celery(self) -> Any:
        if self._celery_receiver is None:
            self._celery_receiver = CeleryReceiver(
                self.channel,
                handlers=self.handlers,
                routing_key=self.routing_key,
                node_id=self.node_id,
                app=self.app,
                queue_prefix=self.queue_prefix,
                accept=self._accept,
                queue_ttl=self.queue_ttl,
                queue_expires=self.queue_expires,
            )
        return self._celery_receiver

    @property
    def queue(self) -> Any:
        """The kombu queue on the broker's event exchange (for Celery's gossip)."""
        return self._celery().queue

    @property
    def accept(self) -> Any:
        return self._celery().accept

    def event_from_message(
        self, body: dict[str, Any], localize: bool = True, now: Callable[[], float] = time.time
    ) -> Any:
        """Celery's decoding of a kombu message body (gossip's path)."""
        return self._celery().event_from_message(body, localize=localize, now=now)

    def close(self) -> None:
        self.should_stop = True
        if self._receiver is not None:
            self._receiver.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Events(CeleryEvents):  # type: ignore[misc]
    """``app.events`` for ``Celery(..., events="evcore.celery:Events")``.

    Dispatchers and receivers go through ``evcore_events_url``; ``State`` is Celery's.
    """

    dispatcher_cls = "evcore.celery:Dispatcher"
    receiver_cls = "evcore.celery:Receiver"

    def __init__(self, app: Any = None) -> None:
        super().__init__(app)
        self._dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()

    @property
    def url(self) -> str:
        """The evcore URL this app's events go through."""
        return events_url(self.app)

    def opened(self, dispatcher: Dispatcher) -> None:
        """Remember a dispatcher of this app, so :meth:`close` can close it."""
        self._dispatchers.add(dispatcher)

    @contextmanager
    def default_dispatcher(
        self, hostname: str | None = None, enabled: bool = True,
        buffer_while_offline: bool = False,
    ) -> Iterator[Dispatcher]:
        """A dispatcher for one use (``Task.send_event``), closed afterwards; unlike
        Celery's, it takes no connection from the broker's producer pool."""
        with self.Dispatcher(
            hostname=hostname, enabled=enabled, buffer_while_offline=buffer_while_offline
        ) as dispatcher:
            yield dispatcher

    def close(self) -> None:
        """Close every dispatcher of this app still open (the client's ``task-sent``
        dispatcher lives as long as the app otherwise)."""
        for dispatcher in list(self._dispatchers):
            dispatcher.close()
