"""The consuming half of the AMQP transport: one connection, queue and consumer per
subscription, read with ``no_ack`` as Celery's receiver does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evcore.errors import ChannelError, ConnectionLost
from evcore.transport import Exchange, IncomingMessage, QueueOptions
from evcore_amqp.connection import open_connection
from evcore_amqp.delivery import DeliveryReader, install
from evcore_amqp.failures import RESOURCE_LOCKED, reply_code, translate, translated
from evcore_amqp.options import AMQPOptions, queue_arguments

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import (  # type: ignore[import-untyped]
        BlockingChannel,
        BlockingConnection,
    )

__all__ = ["AMQPSubscription"]

#: Longest single wait inside ``receive()``; ``close()`` wakes it earlier anyway.
_SLICE = 1.0
#: How long ``close()`` from another thread waits for a running ``receive()`` to let go.
_CLOSE_WAIT = 5.0


class AMQPSubscription:
    """A private queue bound to an exchange, consumed on a connection of its own.

    ``receive()`` runs pika's I/O loop, so heartbeats are answered while it waits.
    ``close()`` may be called from another thread: a ``receive()`` in progress returns
    an empty list promptly and the connection (and with it the exclusive queue) goes.
    """

    def __init__(
        self,
        options: AMQPOptions,
        exchange: Exchange,
        binding_key: str,
        queue: QueueOptions,
        on_close: Callable[[AMQPSubscription], None] | None = None,
        *,
        stale_queue: bool = False,
        fast_path: bool = False,
    ) -> None:
        self.exchange = exchange
        self.binding_key = binding_key
        self.queue = queue
        self.connection_name = f"{options.connection_name}/{queue.name}"
        #: Messages handed out by ``receive()``.
        self.received = 0
        self._on_close = on_close
        self._inbox: list[IncomingMessage] = []
        self._reader: DeliveryReader | None = None
        self._lock = threading.Lock()
        self._receiving = False
        self._released = threading.Event()
        self._teardown_lock = threading.Lock()
        self._closed = False
        self._lost: str | None = None
        self._fast_path = fast_path
        arguments = queue_arguments(queue)
        connection = open_connection(options, self.connection_name, heartbeat=options.heartbeat)
        self._connection: BlockingConnection = connection
        try:
            self._channel: BlockingChannel = self._setup(options, arguments, stale_queue)
        except BaseException:
            self._teardown()
            raise

    @property
    def lost(self) -> bool:
        """Whether the connection or the consumer went away (the subscription is dead)."""
        return self._lost is not None

    def _setup(
        self, options: AMQPOptions, arguments: dict[str, Any], stale_queue: bool
    ) -> BlockingChannel:
        exchange, queue = self.exchange, self.queue
        with translated(f"declaring exchange {exchange.name!r}"):
            channel = self._connection.channel()
            if exchange.name:
                channel.exchange_declare(
                    exchange.name,
                    exchange.type,
                    durable=exchange.durable,
                    auto_delete=exchange.auto_delete,
                )
        try:
            with translated(f"declaring queue {queue.name!r}"):
                channel.queue_declare(
                    queue.name,
                    durable=queue.durable,
                    exclusive=queue.exclusive,
                    auto_delete=queue.auto_delete,
                    arguments=arguments,
                )
        except ChannelError as exc:
            if stale_queue and reply_code(exc.__cause__) == RESOURCE_LOCKED:
                # Our own earlier connection, lost on our side, may still hold the queue
                # until the broker notices: that passes, so let the caller retry.
                raise ConnectionLost(
                    f"queue {queue.name!r} is still held by the connection that was lost; "
                    "the broker releases it when it notices"
                ) from exc
            raise
        with translated(f"binding queue {queue.name!r} to exchange {exchange.name!r}"):
            if exchange.name:
                channel.queue_bind(queue.name, exchange.name, routing_key=self.binding_key)
            if options.prefetch_count:
                channel.basic_qos(prefetch_count=options.prefetch_count)
            channel.add_on_cancel_callback(self._on_cancelled)
            # On the fast path deliveries are read ahead of pika's frame handling (see
            # evcore_amqp.delivery); otherwise pika calls _on_message.
            if self._fast_path:
                self._reader = install(self._connection, channel, self._on_delivery)
            channel.basic_consume(queue.name, self._on_message, auto_ack=True)
        return channel

    # -- pika callbacks (run inside process_data_events, in the receiving thread) ---------

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._inbox.append(
            IncomingMessage(
                body=body,
                routing_key=method.routing_key,
                exchange=method.exchange,
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
                headers=properties.headers or {},
            )
        )

    def _on_delivery(self, message: IncomingMessage) -> None:
        self._inbox.append(message)

    def _on_cancelled(self, _frame: Any) -> None:
        self._lost = f"the broker cancelled the consumer of queue {self.queue.name!r}"

    # -- public ---------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Every message that has arrived, waiting up to ``timeout`` seconds for the first
        (``None``: until one arrives or the subscription is closed); ``[]`` on timeout.

        Raises ConnectionLost when the connection or the consumer is gone; the
        subscription is then dead and the caller subscribes again.
        """
        with self._lock:
            if self._closed:
                return []
            self._receiving = True
            self._released.clear()
        try:
            return self._receive(timeout)
        except Exception as exc:
            error = translate(exc, f"consuming from queue {self.queue.name!r}")
            if error is None:
                raise
            self._lost = self._lost or str(error)
            if error is exc:
                raise
            raise error from exc
        finally:
            with self._lock:
                self._receiving = False
                closing = self._closed or self._lost is not None
            if closing:
                self._teardown()
            self._released.set()

    def _receive(self, timeout: float | None) -> list[IncomingMessage]:
        if self._lost is not None:
            raise ConnectionLost(self._lost)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        process = self._connection.process_data_events
        while True:
            wait = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            process(time_limit=max(wait, 0.0))
            if self._closed:
                return []
            if self._inbox:
                messages, self._inbox = self._inbox, []
                self.received += len(messages)
                return messages
            if self._lost is not None:
                raise ConnectionLost(self._lost)
            if not self._channel.is_open:
                raise ConnectionLost(f"the channel consuming queue {self.queue.name!r} closed")
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def close(self) -> None:
        """Stop consuming and close the connection; safe to call twice, from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            receiving = self._receiving
        if receiving:
            # pika is not thread-safe: wake the receiving thread, which tears down itself.
            try:
                self._connection.add_callback_threadsafe(_nothing)
            except Exception as exc:
                if translate(exc) is None:
                    raise
            self._released.wait(_CLOSE_WAIT)
        else:
            self._teardown()
        if self._on_close is not None:
            self._on_close(self)

    def _teardown(self) -> None:
        with self._teardown_lock:
            if not self._connection.is_open:
                return
            try:
                self._connection.close()
            except Exception as exc:
                if translate(exc) is None:
                    raise

    def __repr__(self) -> str:
        return (
            f"<AMQPSubscription queue={self.queue.name!r} exchange={self.exchange.name!r} "
            f"binding_key={self.binding_key!r}>"
        )


def _nothing() -> None:
    """A thread-safe callback whose only job is to wake the I/O loop."""
