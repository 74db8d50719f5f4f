"""The publishing half of the AMQP transport: one lazily opened connection and channel.

By default every message goes through pika's public ``BlockingChannel.basic_publish``,
which flushes the socket after each message and, with publisher confirms, waits for each
ack in turn. With the fast path (see :mod:`evcore_amqp.fastpath`) a batch is encoded by
:mod:`evcore_amqp.frames`, queued as one buffer and flushed once, so it costs no round trip
per message, and with confirms the whole batch waits for its acks once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evcore.errors import ChannelError, ConnectionLost
from evcore.transport import Exchange, OutgoingMessage
from evcore_amqp.connection import load_pika, open_connection
from evcore_amqp.failures import channel_level, translate
from evcore_amqp.fastpath import fast_path_enabled
from evcore_amqp.frames import RawOutput, raw_output
from evcore_amqp.options import AMQPOptions

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import (  # type: ignore[import-untyped]
        BlockingChannel,
        BlockingConnection,
    )

__all__ = ["PublishStats", "Publisher"]

_PROPERTIES_CACHE_SIZE = 256


@dataclass
class PublishStats:
    """Counters of the publishing connection."""

    #: Messages handed to the broker.
    published: int = 0
    #: Calls to ``publish()`` that sent at least one message.
    batches: int = 0
    #: Messages refused before sending because they exceed ``max_message_bytes``.
    oversized: int = 0
    #: Messages the broker negatively acknowledged (``confirm_publish`` only).
    nacked: int = 0
    #: Connections opened (the first one included).
    connections: int = 0
    #: Channels the broker closed with an error.
    channel_errors: int = 0


class _Confirms:
    """Delivery tags published on a confirm-mode channel and not yet acked or nacked."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.next_tag = 1
        self.nacked = 0

    def expect(self, count: int) -> None:
        self.pending.extend(range(self.next_tag, self.next_tag + count))
        self.next_tag += count

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        settled = 0
        pending = self.pending
        if multiple:
            while pending and (tag == 0 or pending[0] <= tag):
                pending.popleft()
                settled += 1
        elif pending and pending[0] == tag:
            pending.popleft()
            settled = 1
        elif tag in pending:
            pending.remove(tag)
            settled = 1
        if type(method).__name__ == "Nack":
            self.nacked += settled


class Publisher:
    """Publishes batches on one connection, reconnecting lazily after a loss."""

    def __init__(self, options: AMQPOptions) -> None:
        self.options = options
        self.connection_name = f"{options.connection_name}/publisher"
        self.stats = PublishStats()
        self._lock = threading.Lock()
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._raw: RawOutput | None = None
        self._confirms: _Confirms | None = None
        self._declared: set[Exchange] = set()
        self._properties: dict[tuple[Any, ...], Any] = {}
        pika = load_pika()
        self._basic_properties: Callable[..., Any] = pika.BasicProperties
        self._nack_error: type[Exception] = pika.exceptions.NackError
        #: Whether batches take the fast path (asked for, and a tested pika version).
        self.fast_path = fast_path_enabled(options.fast_path)
        self._closed = False

    # -- public ---------------------------------------------------------------------------

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` in order; see :meth:`AMQPTransport.publish`."""
        with self._lock:
            if self._closed:
                raise ConnectionLost("the AMQP transport is closed")
            if not messages:
                return
            try:
                oversized = self._publish(exchange, messages)
            except Exception as exc:
                error = translate(exc, f"publishing to exchange {exchange.name!r}")
                if error is None or error is exc:  # a bug, or an error raised here
                    raise
                self._recover(exc)
                raise error from exc
        if oversized:
            raise ChannelError(
                f"{oversized} of {len(messages)} message(s) to exchange {exchange.name!r} "
                f"exceed max_message_bytes={self.options.max_message_bytes} and were not "
                "published; the others were"
            )

    def close(self) -> None:
        """Close the connection; later publishes raise ConnectionLost."""
        with self._lock:
            self._closed = True
            self._drop_connection()

    # -- internals ------------------------------------------------------------------------

    def _publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> int:
        channel = self._channel
        if channel is None or not channel.is_open:
            channel = self._ready_channel()
        if exchange not in self._declared:
            self._declare(channel, exchange)
        if self.fast_path:
            assert self._raw is not None
            sent, oversized = self._publish_raw(channel, self._raw, exchange.name, messages)
        else:
            sent, oversized = self._publish_public(channel, exchange.name, messages)
        self.stats.oversized += oversized
        if sent:
            if self._confirms is not None:
                self._confirms.expect(sent)
                self._wait_for_confirms(channel, self._confirms)
            elif self.fast_path:
                channel._flush_output()
            self.stats.published += sent
            self.stats.batches += 1
        return oversized

    def _publish_public(
        self, channel: BlockingChannel, name: str, messages: Sequence[OutgoingMessage]
    ) -> tuple[int, int]:
        """Publish through ``BlockingChannel.basic_publish``, which flushes (and, with
        confirms, waits for the ack) per message; nacks are counted, then raised."""
        limit = self.options.max_message_bytes
        send = channel.basic_publish
        properties_of = self._properties_of
        sent = oversized = nacked = 0
        for message in messages:
            body = message.body
            if len(body) > limit:
                oversized += 1
                continue
            try:
                send(name, message.routing_key, body, properties_of(message))
            except self._nack_error:
                nacked += 1
            sent += 1
        if nacked:
            self.stats.published += sent
            self.stats.batches += 1
            self.stats.oversized += oversized
            self.stats.nacked += nacked
            raise ChannelError(f"the broker refused (nacked) {nacked} published message(s)")
        return sent, oversized

    def _publish_raw(
        self,
        channel: BlockingChannel,
        raw: RawOutput,
        name: str,
        messages: Sequence[OutgoingMessage],
    ) -> tuple[int, int]:
        """Encode the batch here and queue it as one write (see :mod:`evcore_amqp.frames`);
        a message the encoder leaves to pika goes through the asynchronous channel's
        ``basic_publish``, in order. The caller flushes."""
        limit = self.options.max_message_bytes
        encode = raw.encoder.encode
        frames: list[bytes] = []
        sent = oversized = 0
        for message in messages:
            if len(message.body) > limit:
                oversized += 1
                continue
            if not encode(name, message, frames):
                if frames:
                    raw.write(frames)
                    frames = []
                channel._impl.basic_publish(
                    name, message.routing_key, message.body, self._properties_of(message)
                )
            sent += 1
        if frames:
            raw.write(frames)
        return sent, oversized

    def _ready_channel(self) -> BlockingChannel:
        connection = self._connection
        if connection is None or not connection.is_open:
            # Nothing services an idle publishing connection between publishes, so it
            # negotiates no heartbeat: the broker would otherwise close it when idle.
            connection = open_connection(
                self.options,
                self.connection_name,
                heartbeat=0,
                blocked_connection_timeout=self.options.blocked_connection_timeout,
            )
            self._connection, self._channel = connection, None
            self.stats.connections += 1
        channel = self._channel
        if channel is None or not channel.is_open:
            channel = connection.channel()
            self._raw = raw_output(channel) if self.fast_path else None
            self._confirms = None
            if self.options.confirm_publish:
                if self.fast_path:
                    self._confirms = self._enable_confirms(channel)
                else:
                    channel.confirm_delivery()
            self._channel = channel
            self._declared.clear()
        return channel

    def _enable_confirms(self, channel: BlockingChannel) -> _Confirms:
        confirms = _Confirms()
        selected: list[bool] = []
        channel._impl.confirm_delivery(
            ack_nack_callback=confirms.on_confirm,
            callback=lambda _frame: selected.append(True),
        )
        channel._flush_output(lambda: bool(selected))
        return confirms

    def _wait_for_confirms(self, channel: BlockingChannel, confirms: _Confirms) -> None:
        timeout = self.options.confirm_timeout
        deadline = time.monotonic() + timeout
        connection = channel.connection
        wake = connection.call_later(timeout, _nothing)  # ends the wait at the deadline
        try:
            channel._flush_output(lambda: not confirms.pending or time.monotonic() >= deadline)
        finally:
            connection.remove_timeout(wake)
        if confirms.pending:
            missing = len(confirms.pending)
            self._drop_connection()
            raise ConnectionLost(
                f"the broker confirmed none of the last {missing} message(s) within "
                f"{timeout} s; they may not have been published"
            )
        if confirms.nacked:
            nacked, confirms.nacked = confirms.nacked, 0
            self.stats.nacked += nacked
            raise ChannelError(f"the broker refused (nacked) {nacked} published message(s)")

    def _declare(self, channel: BlockingChannel, exchange: Exchange) -> None:
        if exchange.name:  # the default exchange "" cannot be declared
            channel.exchange_declare(
                exchange.name,
                exchange.type,
                durable=exchange.durable,
                auto_delete=exchange.auto_delete,
            )
        self._declared.add(exchange)

    def _properties_of(self, message: OutgoingMessage) -> Any:
        headers = message.headers
        key = (
            message.content_type,
            message.content_encoding,
            message.delivery_mode,
            message.priority,
            tuple(headers.items()) if headers else (),
        )
        cache = self._properties
        try:
            return cache[key]
        except KeyError:
            pass
        except TypeError:  # a header value that cannot be hashed: build it every time
            return self._build_properties(message)
        if len(cache) >= _PROPERTIES_CACHE_SIZE:
            cache.clear()
        properties = cache[key] = self._build_properties(message)
        return properties

    def _build_properties(self, message: OutgoingMessage) -> Any:
        return self._basic_properties(
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=message.delivery_mode,
            priority=message.priority,
            headers=dict(message.headers),
        )

    def _recover(self, exc: BaseException) -> None:
        """After a failure, keep the connection if only the channel went away."""
        only_channel, refused = channel_level(exc)
        if refused:
            self.stats.channel_errors += 1
        connection = self._connection
        if only_channel and connection is not None and connection.is_open:
            self._drop_channel()
        else:
            self._drop_connection()

    def _drop_channel(self) -> None:
        channel, self._channel, self._confirms = self._channel, None, None
        self._raw = None
        self._declared.clear()
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except Exception as exc:
                if translate(exc) is None:
                    raise

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._channel, self._confirms, self._raw = None, None, None
        self._declared.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception as exc:
                if translate(exc) is None:
                    raise


def _nothing() -> None:
    """A timer callback whose only job is to wake the I/O loop."""
