"""Deliveries read straight from the consuming connection's bytes, ahead of pika's frames.

For every delivered message pika builds three frame objects, runs each through its
callback registry, reassembles the content, and ``BlockingChannel`` queues the result as
an event dispatched later: most of a Receiver's time on RabbitMQ. A
:class:`DeliveryReader` sits in front of pika's frame parser on one consuming
connection. ``basic.deliver`` frames on the consuming channel, with their content header
and body frames, become :class:`~evcore.transport.IncomingMessage` here, with the values
pika's decoder would give; every other frame (heartbeats, channel and connection methods,
a consumer cancelled by the broker) is handed to pika unchanged and in order.

Part of the opt-in fast path (:mod:`evcore_amqp.fastpath`, which lists the pika internals
it uses and the pika versions it runs on). :func:`install` returns None when pika already
holds unparsed bytes of the connection; the subscription then consumes through pika's
callbacks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from evcore.transport import IncomingMessage
from evcore_amqp.connection import load_pika

__all__ = ["DeliveryReader", "install"]

_METHOD_FRAME, _HEADER_FRAME, _BODY_FRAME = 1, 2, 3
_FRAME_END = 0xCE
#: basic.deliver: class 60, method 60.
_BASIC_DELIVER = b"\x00\x3c\x00\x3c"
#: Property flags this reader decodes itself; any other flag goes to pika's decoder.
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS = 1 << 15, 1 << 14, 1 << 13
_OTHER_FLAGS = 0xFFFF & ~(_CONTENT_TYPE | _CONTENT_ENCODING | _HEADERS | 1 << 12 | 1 << 11)

_frame_start = struct.Struct(">BHI").unpack_from
_body_size = struct.Struct(">Q").unpack_from
_flags = struct.Struct(">H").unpack_from
_long = struct.Struct(">I").unpack_from
_int32 = struct.Struct(">i").unpack_from


class _Unsupported(Exception):
    """A header table value this reader leaves to pika's decoder."""


def _text(raw: bytes) -> str | bytes:
    """pika's rule for strings: UTF-8 text, or the raw bytes when they are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _short_string(data: bytes, offset: int) -> tuple[str | bytes, int]:
    end = offset + 1 + data[offset]
    return _text(data[offset + 1 : end]), end


def _table(data: bytes, offset: int) -> tuple[dict[Any, Any], int]:
    """A headers table holding strings, 32-bit integers and booleans (what event
    senders put there); raises _Unsupported for any other value type."""
    end = offset + 4 + _long(data, offset)[0]
    offset += 4
    table: dict[Any, Any] = {}
    while offset < end:
        key, offset = _short_string(data, offset)
        kind = data[offset]
        offset += 1
        if kind == 0x53:  # S: long string
            size = _long(data, offset)[0]
            offset += 4
            table[key] = _text(data[offset : offset + size])
            offset += size
        elif kind == 0x49:  # I: signed 32-bit integer
            table[key] = _int32(data, offset)[0]
            offset += 4
        elif kind == 0x74:  # t: boolean
            table[key] = bool(data[offset])
            offset += 1
        else:
            raise _Unsupported
    return table, end


class DeliveryReader:
    """Turns the deliveries of one consuming channel into IncomingMessages.

    ``feed(data)`` takes the bytes read from the socket; messages go to ``on_message``
    in arrival order, other frames to ``pass_on`` (pika's own parser), one whole frame at
    a time. ``decode_properties`` is pika's decoder, used for property shapes this reader
    does not decode itself.
    """

    def __init__(
        self,
        channel_number: int,
        on_message: Callable[[IncomingMessage], None],
        pass_on: Callable[[bytes], None],
        decode_properties: Callable[[bytes], tuple[Any, Any, Any]],
    ) -> None:
        self.channel_number = channel_number
        self._on_message = on_message
        self._pass_on = pass_on
        self._decode_properties = decode_properties
        self._buffer = b""
        #: The delivery being assembled: (routing key, exchange), then its properties.
        self._delivery: tuple[Any, Any] | None = None
        self._properties: tuple[Any, Any, Any] | None = None
        self._body_size = 0
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        #: Messages completed, and the bytes and frames consumed here (for pika's counters).
        self.messages = 0
        self.bytes_read = 0
        self.frames_read = 0

    def feed(self, data: bytes) -> None:
        """Process the bytes read from the socket; a partial frame is kept for later."""
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        offset = 0
        channel = self.channel_number
        while size - offset >= 8:
            kind, number, length = _frame_start(buffer, offset)
            end = offset + 8 + length
            if end > size:
                break
            if (
                number == channel
                and buffer[end - 1] == _FRAME_END
                and self._take(kind, buffer, offset + 7, end - 1)
            ):
                self.bytes_read += end - offset
                self.frames_read += 1
            else:  # pika's own parser checks it and raises on a malformed frame
                self._pass_on(buffer[offset:end])
            offset = end
        self._buffer = buffer[offset:] if offset < size else b""

    def _take(self, kind: int, data: bytes, start: int, end: int) -> bool:
        """Handle one frame of the consuming channel; False leaves it to pika."""
        if kind == _METHOD_FRAME:
            if self._delivery is not None or data[start : start + 4] != _BASIC_DELIVER:
                return False
            offset = start + 4
            offset += 1 + data[offset]  # consumer tag
            offset += 9  # delivery tag and the redelivered bit
            exchange, offset = _short_string(data, offset)
            routing_key, offset = _short_string(data, offset)
            self._delivery = (routing_key, exchange)
            self._properties = None
            return True
        if self._delivery is None:
            return False
        if kind == _HEADER_FRAME and self._properties is None:
            self._body_size = _body_size(data, start + 4)[0]
            self._properties = self._decode(data[start + 12 : end])
            self._fragments = []
            self._fragments_size = 0
            if not self._body_size:
                self._complete(b"")
            return True
        if kind == _BODY_FRAME and self._properties is not None:
            fragment = data[start:end]
            if not self._fragments and len(fragment) == self._body_size:
                self._complete(fragment)
                return True
            self._fragments.append(fragment)
            self._fragments_size += len(fragment)
            if self._fragments_size >= self._body_size:
                self._complete(b"".join(self._fragments))
            return True
        return False

    def _decode(self, data: bytes) -> tuple[Any, Any, Any]:
        """content_type, content_encoding and headers of a content header's properties."""
        flags = _flags(data, 0)[0]
        if flags & _OTHER_FLAGS or flags & 1:
            return self._decode_properties(data)
        offset = 2
        content_type = content_encoding = headers = None
        if flags & _CONTENT_TYPE:
            content_type, offset = _short_string(data, offset)
        if flags & _CONTENT_ENCODING:
            content_encoding, offset = _short_string(data, offset)
        if flags & _HEADERS:
            try:
                headers, offset = _table(data, offset)
            except _Unsupported:
                return self._decode_properties(data)
        return content_type, content_encoding, headers

    def _complete(self, body: bytes) -> None:
        assert self._delivery is not None and self._properties is not None
        routing_key, exchange = self._delivery
        content_type, content_encoding, headers = self._properties
        self._delivery = self._properties = None
        self._fragments = []
        self.messages += 1
        self._on_message(
            IncomingMessage(
                body, routing_key, exchange, content_type, content_encoding, headers or {}
            )
        )


def install(
    connection: Any, channel: Any, on_message: Callable[[IncomingMessage], None]
) -> DeliveryReader | None:
    """Put a :class:`DeliveryReader` in front of pika's parser on ``connection`` (a
    ``BlockingConnection``) for ``channel`` (its ``BlockingChannel``), before the consumer
    starts; None (nothing changed) when pika holds bytes it has not parsed yet."""
    pika = load_pika()
    impl = connection._impl
    if impl._frame_buffer:
        return None
    parse = impl._on_data_available
    request_dispatch = connection._request_channel_dispatch
    number = channel.channel_number

    def decode_properties(data: bytes) -> tuple[Any, Any, Any]:
        properties = pika.spec.BasicProperties()
        properties.decode(data)
        return properties.content_type, properties.content_encoding, properties.headers

    reader = DeliveryReader(number, on_message, parse, decode_properties)

    def on_data_available(data: bytes) -> None:
        before = reader.bytes_read, reader.frames_read, reader.messages
        reader.feed(data)
        impl.bytes_received += reader.bytes_read - before[0]
        impl.frames_received += reader.frames_read - before[1]
        if reader.messages != before[2]:
            request_dispatch(-number)  # let process_data_events return

    impl._on_data_available = on_data_available
    return reader
