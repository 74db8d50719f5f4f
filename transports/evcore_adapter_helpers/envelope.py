"""kombu's virtual-transport envelope, as Redis (and kombu's memory transport) carry it.

A JSON document holding the base64 body, ``content-type``, ``content-encoding``,
``headers`` and ``properties`` with ``delivery_info`` and a fresh ``delivery_tag``. Adapters
for virtual transports use :func:`pack` and :func:`unpack` so that every message they carry
is exactly what kombu writes and reads.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from evcore.codec import dumps, loads
from evcore.errors import MessageRejected
from evcore.transport import IncomingMessage, OutgoingMessage


def pack(exchange: str, message: OutgoingMessage) -> bytes:
    """Encode ``message`` as kombu's JSON envelope for ``exchange``."""
    return pack_many(exchange, (message,))[0]


def pack_many(exchange: str, messages: Sequence[OutgoingMessage]) -> list[bytes]:
    """Encode each of ``messages`` as :func:`pack` does, drawing their random delivery
    tags from one read of the system's random source.

    The JSON around the body, the headers and the tag depends only on the exchange and the
    message's metadata, so it is encoded once per combination and reused.
    """
    entropy = os.urandom(16 * len(messages)).hex()
    b64encode = base64.b64encode
    frames = _FRAMES
    packed = []
    for index, message in enumerate(messages):
        key = (
            exchange,
            message.routing_key,
            message.content_type,
            message.content_encoding,
            message.delivery_mode,
            message.priority,
        )
        frame = frames.get(key) or _frame_for(key)
        digits = entropy[32 * index : 32 * index + 32]
        packed.append(
            b"".join(
                (
                    b'{"body":"',
                    b64encode(message.body),
                    frame[0],
                    dumps(dict(message.headers)),
                    frame[1],
                    _uuid4_digits(digits).encode("ascii"),
                    b'"}}',
                )
            )
        )
    return packed


#: Encoded envelope pieces by (exchange, routing key, content type, encoding, delivery
#: mode, priority); bounded, since routing keys come from event types.
_FRAMES: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
_MAX_FRAMES = 1024


def _frame_for(key: tuple[Any, ...]) -> tuple[bytes, bytes]:
    """The JSON between the body and the headers, and between the headers and the tag."""
    exchange, routing_key, content_type, content_encoding, delivery_mode, priority = key
    before_headers = b"".join(
        (
            b'","content-encoding":',
            dumps(content_encoding),
            b',"content-type":',
            dumps(content_type),
            b',"headers":',
        )
    )
    before_tag = b"".join(
        (
            b',"properties":{"delivery_mode":',
            dumps(delivery_mode),
            b',"delivery_info":{"exchange":',
            dumps(exchange),
            b',"routing_key":',
            dumps(routing_key),
            b'},"priority":',
            dumps(priority),
            b',"body_encoding":"base64","delivery_tag":"',
        )
    )
    frame = (before_headers, before_tag)
    if len(_FRAMES) >= _MAX_FRAMES:
        _FRAMES.clear()
    _FRAMES[key] = frame
    return frame


#: The variant nibble of an RFC 4122 UUID for each possible random nibble (10xx in binary).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid4_text(random16: bytes) -> str:
    """The text of the version 4 UUID made from 16 random bytes, as ``str(uuid.uuid4())``
    would give for them."""
    return _uuid4_digits(random16.hex())


def _uuid4_digits(digits: str) -> str:
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"
    )


def unpack(payload: bytes | str, default_routing_key: str = "") -> IncomingMessage:
    """Decode a kombu envelope; raise :class:`~evcore.errors.MessageRejected` if malformed."""
    try:
        envelope = loads(payload)
    except (ValueError, RecursionError):
        raise MessageRejected("malformed", "envelope is not valid JSON") from None
    # Decoded JSON holds only exact dicts, lists and strs, so checking the class is enough
    # (and cheaper than isinstance, once per received message).
    if envelope.__class__ is not dict:
        raise MessageRejected("malformed", "envelope is not a JSON object")
    properties = envelope.get("properties")
    if properties.__class__ is not dict:
        properties = {}
    body: Any = envelope.get("body")
    if properties.get("body_encoding") == "base64":
        if body.__class__ is not str:
            raise MessageRejected("malformed", "base64 body is not a string")
        try:
            raw = _b64decode(body)
        except (binascii.Error, ValueError):
            raise MessageRejected("malformed", "body is not valid base64") from None
    elif body.__class__ is str:
        raw = body.encode("utf-8")
    else:
        raise MessageRejected("malformed", "envelope has no body")
    info = properties.get("delivery_info")
    if info.__class__ is not dict:
        info = {}
    routing_key = info.get("routing_key", default_routing_key)
    exchange = info.get("exchange", "")
    headers = envelope.get("headers")
    content_type = envelope.get("content-type")
    content_encoding = envelope.get("content-encoding")
    return IncomingMessage(
        raw,
        routing_key if routing_key.__class__ is str else str(routing_key),
        exchange if exchange.__class__ is str else str(exchange),
        content_type if content_type.__class__ is str else None,
        content_encoding if content_encoding.__class__ is str else None,
        headers if headers.__class__ is dict else {},
    )


_b64decode: Callable[[str], bytes]

if sys.version_info >= (3, 11):
    #: Strict base64: only the alphabet, with correct padding (raises binascii.Error).
    _b64decode = partial(binascii.a2b_base64, strict_mode=True)

else:  # pragma: no cover - Python 3.10

    def _b64decode(text: str) -> bytes:
        """Strict base64: only the alphabet, with correct padding (raises binascii.Error)."""
        return base64.b64decode(text, validate=True)
