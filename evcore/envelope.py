"""kombu's virtual-transport envelope, as Redis (and kombu's memory transport) carry it.

A JSON document holding the base64 body, ``content-type``, ``content-encoding``,
``headers`` and ``properties`` with ``delivery_info`` and a fresh ``delivery_tag``. Adapters
for virtual transports use :func:`pack` and :func:`unpack` so that every message they carry
is exactly what kombu writes and reads.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from evcore.codec import dumps, loads
from evcore.errors import MessageRejected
from evcore.transport import IncomingMessage, OutgoingMessage


def pack(exchange: str, message: OutgoingMessage) -> bytes:
    """Encode ``message`` as kombu's JSON envelope for ``exchange``."""
    envelope = {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": dict(message.headers),
        "properties": {
            "delivery_mode": message.delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": message.routing_key},
            "priority": message.priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return dumps(envelope)


def unpack(payload: bytes | str, default_routing_key: str = "") -> IncomingMessage:
    """Decode a kombu envelope; raise :class:`~evcore.errors.MessageRejected` if malformed."""
    try:
        envelope = loads(payload)
    except (ValueError, RecursionError):
        raise MessageRejected("malformed", "envelope is not valid JSON") from None
    if not isinstance(envelope, dict):
        raise MessageRejected("malformed", "envelope is not a JSON object")
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    body: Any = envelope.get("body")
    if properties.get("body_encoding") == "base64":
        if not isinstance(body, str):
            raise MessageRejected("malformed", "base64 body is not a string")
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MessageRejected("malformed", "body is not valid base64") from None
    elif isinstance(body, str):
        raw = body.encode("utf-8")
    elif isinstance(body, bytes):
        raw = body
    else:
        raise MessageRejected("malformed", "envelope has no body")
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        info = {}
    headers = envelope.get("headers")
    content_type = envelope.get("content-type")
    content_encoding = envelope.get("content-encoding")
    return IncomingMessage(
        body=raw,
        routing_key=str(info.get("routing_key", default_routing_key)),
        exchange=str(info.get("exchange", "")),
        content_type=content_type if isinstance(content_type, str) else None,
        content_encoding=content_encoding if isinstance(content_encoding, str) else None,
        headers=headers if isinstance(headers, dict) else {},
    )
