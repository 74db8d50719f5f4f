"""The publishing half of the AMQP transport: one lazily opened connection and channel.

The connection is evcore's own (:mod:`evcore_amqp.wire`): a batch is encoded from cached
templates (:mod:`evcore_amqp.frames`) and written in one piece, so it costs no round trip
and no flush per message; with publisher confirms the whole batch waits for its acks once.
A message the templates do not cover is encoded with pamqp instead, in its place.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evcore.errors import ChannelError, ConnectionLost
from evcore.transport import Exchange, OutgoingMessage
from evcore_amqp.options import AMQPOptions
from evcore_amqp.wire import PublishConnection, load_pamqp

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
    #: Messages refused before sending because AMQP cannot carry them (a routing key over
    #: 255 bytes, a header value of no AMQP type...).
    unencodable: int = 0
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

    def on_confirm(self, tag: int, multiple: bool, nacked: bool) -> None:
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
        if nacked:
            self.nacked += settled


class Publisher:
    """Publishes batches on one connection, reconnecting lazily after a loss."""

    def __init__(self, options: AMQPOptions) -> None:
        self.options = options
        self.connection_name = f"{options.connection_name}/publisher"
        self.stats = PublishStats()
        self._lock = threading.Lock()
        self._connection: PublishConnection | None = None
        self._confirms: _Confirms | None = None
        self._declared: set[Exchange] = set()
        self._properties: dict[tuple[Any, ...], Any] = {}
        self._commands = load_pamqp().commands
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
                oversized, unencodable, nacked = self._publish(exchange, messages)
            except ChannelError:
                connection = self._connection
                if connection is None or not connection.channel:  # the broker closed it
                    self.stats.channel_errors += 1
                    self._forget_channel()
                raise
            except ConnectionLost:
                self._drop_connection()
                raise
        if nacked:
            raise ChannelError(f"the broker refused (nacked) {nacked} published message(s)")
        refused = []
        if oversized:
            refused.append(f"{oversized} exceed max_message_bytes={self.options.max_message_bytes}")
        if unencodable:
            refused.append(
                f"{unencodable} cannot be encoded in AMQP (a routing key over 255 bytes, a "
                "header value of no AMQP type...)"
            )
        if refused:
            raise ChannelError(
                f"{oversized + unencodable} of {len(messages)} message(s) to exchange "
                f"{exchange.name!r} were not published ({'; '.join(refused)}); the others were"
            )

    def close(self) -> None:
        """Close the connection; later publishes raise ConnectionLost."""
        with self._lock:
            self._closed = True
            self._drop_connection()

    # -- internals ------------------------------------------------------------------------

    def _publish(
        self, exchange: Exchange, messages: Sequence[OutgoingMessage]
    ) -> tuple[int, int, int]:
        """Send the batch; returns how many were oversized, unencodable and nacked."""
        connection = self._ready()
        name = exchange.name
        if exchange not in self._declared:
            if name:  # the default exchange "" cannot be declared
                connection.declare(exchange)
            self._declared.add(exchange)
        encoder = connection.encoder
        assert encoder is not None
        encode = encoder.encode
        limit = self.options.max_message_bytes
        frames: list[bytes] = []
        sent = oversized = unencodable = 0
        for message in messages:
            if len(message.body) > limit:
                oversized += 1
                continue
            if not encode(name, message, frames):
                try:
                    frames += self._encode_with_pamqp(connection, name, message)
                except (ValueError, TypeError, OverflowError, struct.error):
                    unencodable += 1
                    continue
            sent += 1
        self.stats.oversized += oversized
        self.stats.unencodable += unencodable
        nacked = 0
        if sent:
            confirms = self._confirms
            if confirms is not None:
                confirms.expect(sent)
            connection.publish_frames(frames, f"publishing to exchange {name!r}")
            if confirms is not None:
                nacked = self._wait_for_confirms(connection, confirms)
            self.stats.published += sent
            self.stats.batches += 1
        return oversized, unencodable, nacked

    def _ready(self) -> PublishConnection:
        connection = self._connection
        if connection is None or not connection.is_open:
            connection = PublishConnection(self.options, self.connection_name)
            connection.open()
            self._connection = connection
            self._declared.clear()
            self.stats.connections += 1
        if not connection.channel:
            self._declared.clear()
            self._confirms = None
            connection.open_channel()
            if self.options.confirm_publish:
                confirms = _Confirms()
                connection.on_confirm = confirms.on_confirm
                connection.select_confirms()
                self._confirms = confirms
        return connection

    def _wait_for_confirms(self, connection: PublishConnection, confirms: _Confirms) -> int:
        """Wait for the batch's confirms; how many were nacks."""
        timeout = self.options.confirm_timeout
        if not connection.wait(lambda: not confirms.pending, timeout):
            missing = len(confirms.pending)
            self._drop_connection()
            raise ConnectionLost(
                f"the broker confirmed none of the last {missing} message(s) within "
                f"{timeout} s; they may not have been published"
            )
        nacked, confirms.nacked = confirms.nacked, 0
        self.stats.nacked += nacked
        return nacked

    def _encode_with_pamqp(
        self, connection: PublishConnection, name: str, message: OutgoingMessage
    ) -> list[bytes]:
        commands = self._commands
        method = commands.Basic.Publish(exchange=name, routing_key=message.routing_key)
        frames = [connection.encode_method(method)]
        frames += connection.encode_content(self._properties_of(message), message.body)
        return frames

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
            return _properties(message, self._commands)
        if len(cache) >= _PROPERTIES_CACHE_SIZE:
            cache.clear()
        properties = cache[key] = _properties(message, self._commands)
        return properties

    def _forget_channel(self) -> None:
        """After a refusal the broker closed the channel: the next publish opens one."""
        self._declared.clear()
        self._confirms = None

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._confirms = None
        self._declared.clear()
        if connection is not None:
            connection.close()


def _properties(message: OutgoingMessage, commands: Any) -> Any:
    return commands.Basic.Properties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        headers=dict(message.headers) or None,
    )
