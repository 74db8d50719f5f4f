"""basic.publish frames encoded from templates cached per property shape.

A general encoder (pika's, pamqp's) builds every published message's properties and frames
afresh. For events that per-message cost is most of the publishing time: the properties
change with every message (the ``evcore-seq`` header), so they cannot be cached whole.
:class:`PublishEncoder` writes the same bytes (AMQP 0-9-1; checked against pika's and
pamqp's encoders in ``tests/test_amqp_frames.py``) from templates cached per property
shape, with only the body size and the integer header values filled in per message; the
publishing connection (:mod:`evcore_amqp.wire`) writes a whole batch in one piece.

A message whose properties this encoder does not cover (a header value other than a string
or an integer, strings too long for a short string, ...) is left to pamqp.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from evcore.transport import OutgoingMessage

__all__ = ["PublishEncoder"]

_METHOD_FRAME, _HEADER_FRAME, _BODY_FRAME = 1, 2, 3
_FRAME_END = b"\xce"
#: Frame type, channel and size in front of every frame, and the frame-end octet after it.
_FRAME_OVERHEAD = 8
#: basic.publish: class 60, method 40.
_BASIC_PUBLISH = 0x003C0028
_BASIC_CLASS = 60
#: Property flags of ``basic`` content (the first flag word).
_FLAG_CONTENT_TYPE = 1 << 15
_FLAG_CONTENT_ENCODING = 1 << 14
_FLAG_HEADERS = 1 << 13
_FLAG_DELIVERY_MODE = 1 << 12
_FLAG_PRIORITY = 1 << 11

_frame_start = struct.Struct(">BHI").pack
#: The start of a content-header frame: frame start, class id, weight, body size.
_header_start = struct.Struct(">BHIHHQ").pack
_long = struct.Struct(">I").pack
_int32_field = struct.Struct(">ci").pack
_int64_field = struct.Struct(">cq").pack
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: Bounds on the template caches (routing keys and header values come from events).
_MAX_METHODS = 1024
_MAX_HEADERS = 256


def _short_string(text: Any) -> bytes | None:
    """An AMQP short string, or None when ``text`` is not a str or too long for one."""
    if text.__class__ is not str:
        return None
    data = text.encode("utf-8")
    if len(data) > 255:
        return None
    return bytes((len(data),)) + data


def _int_field(value: int) -> bytes | None:
    """A table value for an integer, typed as pika types it (``I`` or ``l``)."""
    if _INT32_MIN <= value <= _INT32_MAX:
        return _int32_field(b"I", value)
    if _INT64_MIN <= value <= _INT64_MAX:
        return _int64_field(b"l", value)
    return None


class _HeaderTemplate:
    """The constant parts of one property shape's content-header frame.

    The headers table is split at each integer value: ``table_parts`` has one more
    element than there are integers, and the integers' encodings go in between.
    """

    __slots__ = ("after_table", "before_table", "fixed_size", "table_parts", "table_size")

    def __init__(self, before_table: bytes, table_parts: list[bytes], after_table: bytes):
        self.before_table = before_table
        self.table_parts = table_parts
        self.after_table = after_table
        self.table_size = sum(len(part) for part in table_parts)
        # Class id, weight and body size, the properties, the table's length and table.
        self.fixed_size = 12 + len(before_table) + 4 + self.table_size + len(after_table)


def _build_template(
    content_type: Any,
    content_encoding: Any,
    delivery_mode: Any,
    priority: Any,
    shape: tuple[Any, ...],
) -> _HeaderTemplate | None:
    flags = _FLAG_HEADERS
    properties: list[bytes] = []
    for flag, text in (
        (_FLAG_CONTENT_TYPE, content_type),
        (_FLAG_CONTENT_ENCODING, content_encoding),
    ):
        if text is not None:
            encoded = _short_string(text)
            if encoded is None:
                return None
            flags |= flag
            properties.append(encoded)
    after: list[bytes] = []
    for flag, octet in ((_FLAG_DELIVERY_MODE, delivery_mode), (_FLAG_PRIORITY, priority)):
        if octet is not None:
            if octet.__class__ is not int or not 0 <= octet <= 255:
                return None
            flags |= flag
            after.append(bytes((octet,)))
    parts: list[bytes] = []
    current = bytearray()
    for entry in shape:
        if entry.__class__ is tuple:  # (name, string value)
            name, value = entry
            key = _short_string(name)
            if key is None:
                return None
            data = value.encode("utf-8")
            current += key + b"S" + _long(len(data)) + data
        else:  # the name of an integer value, filled in per message
            key = _short_string(entry)
            if key is None:
                return None
            current += key
            parts.append(bytes(current))
            current = bytearray()
    parts.append(bytes(current))
    before = struct.pack(">H", flags) + b"".join(properties)
    return _HeaderTemplate(before, parts, b"".join(after))


def _header_shape(headers: Mapping[str, Any]) -> tuple[tuple[Any, ...], list[int]] | None:
    """The headers as a cache key (strings kept, integers replaced by their name) and
    the integer values in order; None if a value is neither a str nor an int."""
    shape: list[Any] = []
    integers: list[int] = []
    for name, value in headers.items():
        kind = value.__class__
        if kind is str:
            shape.append((name, value))
        elif kind is int:
            shape.append(name)
            integers.append(value)
        else:
            return None
    return tuple(shape), integers


class PublishEncoder:
    """Encodes basic.publish (method, content header and body frames) for one channel,
    byte for byte as pika 1.x does."""

    def __init__(self, channel_number: int, frame_max: int) -> None:
        self.channel_number = channel_number
        #: The largest body fragment one body frame carries.
        self.body_max = frame_max - _FRAME_OVERHEAD
        self._methods: dict[tuple[str, str], bytes] = {}
        self._headers: dict[tuple[Any, ...], _HeaderTemplate | None] = {}

    def encode(self, exchange: str, message: OutgoingMessage, out: list[bytes]) -> bool:
        """Append the frames publishing ``message`` to ``out``; False (and nothing
        appended) when the message has properties that pika must encode itself."""
        method = self._methods.get((exchange, message.routing_key))
        if method is None:
            method = self._method_frame(exchange, message.routing_key)
            if method is None:
                return False
        split = _header_shape(message.headers)
        if split is None:
            return False
        shape, integers = split
        key = (
            message.content_type,
            message.content_encoding,
            message.delivery_mode,
            message.priority,
            shape,
        )
        try:
            template = self._headers[key]
        except KeyError:
            template = self._header_template(key)
        if template is None:
            return False
        table_parts = template.table_parts
        filled: list[bytes] = []
        extra = 0
        for index, value in enumerate(integers):
            field = _int_field(value)
            if field is None:
                return False
            filled.append(table_parts[index])
            filled.append(field)
            extra += len(field)
        filled.append(table_parts[-1])
        body = message.body
        size = len(body)
        channel = self.channel_number
        out.append(method)
        out.append(
            _header_start(
                _HEADER_FRAME, channel, template.fixed_size + extra, _BASIC_CLASS, 0, size
            )
        )
        out.append(template.before_table)
        out.append(_long(template.table_size + extra))
        out.extend(filled)
        out.append(template.after_table)
        out.append(_FRAME_END)
        if size <= self.body_max:
            if size:
                out.append(_frame_start(_BODY_FRAME, channel, size))
                out.append(body)
                out.append(_FRAME_END)
        else:
            self._split_body(body, out)
        return True

    def _split_body(self, body: bytes, out: list[bytes]) -> None:
        step = self.body_max
        view = memoryview(body)
        for start in range(0, len(body), step):
            fragment = view[start : start + step]
            out.append(_frame_start(_BODY_FRAME, self.channel_number, len(fragment)))
            out.append(bytes(fragment))
            out.append(_FRAME_END)

    def _method_frame(self, exchange: str, routing_key: str) -> bytes | None:
        name, key = _short_string(exchange), _short_string(routing_key)
        if name is None or key is None:
            return None
        # Method id, ticket 0, exchange, routing key, and the mandatory/immediate bits.
        payload = _long(_BASIC_PUBLISH) + b"\x00\x00" + name + key + b"\x00"
        frame = _frame_start(_METHOD_FRAME, self.channel_number, len(payload)) + payload
        frame += _FRAME_END
        if len(self._methods) >= _MAX_METHODS:
            self._methods.clear()
        self._methods[(exchange, routing_key)] = frame
        return frame

    def _header_template(self, key: tuple[Any, ...]) -> _HeaderTemplate | None:
        template = _build_template(*key)
        if len(self._headers) >= _MAX_HEADERS:
            self._headers.clear()
        self._headers[key] = template
        return template
