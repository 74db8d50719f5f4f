"""How one evcore message is carried by one NATS message: the body as the payload, the
properties in NATS headers.

``Content-Type`` and ``Content-Encoding`` are plain headers; the message's own headers
(any JSON values, Celery's ``hostname`` among them) travel as one ASCII JSON object in
``Evcore-Headers``, since NATS header values are single-line text. A message without those
headers (from a foreign publisher) reads as JSON in UTF-8 without headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from evcore.codec import loads
from evcore.transport import IncomingMessage, OutgoingMessage

__all__ = ["HEADERS", "header_bytes", "incoming", "nats_headers"]

CONTENT_TYPE = "Content-Type"
CONTENT_ENCODING = "Content-Encoding"
HEADERS = "Evcore-Headers"

#: What a property must look like to travel as a header value as is.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
#: ``NATS/1.0\r\n`` and the blank line that ends a header block.
_HEADER_FRAME = 12
_JSON_HEADERS: dict[str, Any] = {"ensure_ascii": True, "separators": (",", ":")}


def nats_headers(message: OutgoingMessage) -> dict[str, str]:
    """The NATS headers of ``message``; ValueError when a property cannot be carried."""
    for value in (message.content_type, message.content_encoding):
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"content property {value[:80]!r} is not printable ASCII text")
    headers = {CONTENT_TYPE: message.content_type, CONTENT_ENCODING: message.content_encoding}
    if message.headers:
        try:
            headers[HEADERS] = json.dumps(dict(message.headers), **_JSON_HEADERS)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"headers are not JSON: {exc}") from None
    return headers


def header_bytes(headers: Mapping[str, str]) -> int:
    """How many bytes the header block takes on the wire (counted in ``max_payload``)."""
    return _HEADER_FRAME + sum(len(key) + len(value) + 4 for key, value in headers.items())


def incoming(
    body: bytes,
    routing_key: str,
    exchange: str,
    headers: Mapping[str, str] | None,
) -> IncomingMessage:
    """Rebuild the message a publisher sent; a broken ``Evcore-Headers`` makes it rejected."""
    if not headers:
        return IncomingMessage(body, routing_key, exchange, headers={})
    own: Any = {}
    raw = headers.get(HEADERS)
    if raw is not None:
        try:
            own = loads(raw)
        except ValueError:
            own = None
        if not isinstance(own, dict):
            return IncomingMessage(body, routing_key, exchange, headers={}, rejected="malformed")
    return IncomingMessage(
        body,
        routing_key,
        exchange,
        content_type=headers.get(CONTENT_TYPE, "application/json"),
        content_encoding=headers.get(CONTENT_ENCODING, "utf-8"),
        headers=own,
    )
