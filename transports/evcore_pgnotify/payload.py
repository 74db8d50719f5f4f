"""Channel names and the text payload of one notification (pure: no psycopg here).

A NOTIFY payload is text of at most 7999 bytes, with no NUL. A message travels as one line
of JSON metadata, a newline, then the body: as it is when it is UTF-8 text without NUL
(every JSON event), else in base64 (flagged in the metadata). Event bodies therefore cost
no inflation, and the metadata line never holds a raw newline (JSON escapes it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from evcore.codec import dumps, loads
from evcore.errors import MessageRejected
from evcore.transport import IncomingMessage, OutgoingMessage

__all__ = ["MAX_BODY_SIZE", "MAX_PAYLOAD", "channel_for", "decode", "encode"]

#: PostgreSQL refuses a payload of 8000 bytes or more (``payload string too long``).
MAX_PAYLOAD = 7999
#: The body size the transport promises to carry (capabilities.max_body_size): text bodies
#: up to it fit with about a kilobyte left for the routing key and headers.
MAX_BODY_SIZE = 7000
#: Longest channel name: an identifier of NAMEDATALEN - 1 bytes; longer ones are truncated
#: by the server, so they are replaced by a digest instead.
MAX_CHANNEL = 63


def channel_for(exchange: str) -> str:
    """The notification channel of ``exchange``: its name when PostgreSQL keeps it whole
    (1 to 63 bytes, no NUL), else ``evcore.`` and a digest of the name."""
    raw = exchange.encode("utf-8", "surrogatepass")
    if 0 < len(raw) <= MAX_CHANNEL and b"\x00" not in raw:
        return exchange
    return "evcore." + hashlib.sha256(raw).hexdigest()[:48]


def encode(message: OutgoingMessage, nonce: int, utf8_server: bool) -> str:
    """The payload text of ``message``. ``nonce`` makes each payload of a transaction
    unique: PostgreSQL delivers identical payloads sent in one transaction only once.
    Unless the server's encoding is UTF-8, the payload is kept to ASCII."""
    body = message.body
    text: str | None = None
    if b"\x00" not in body and (utf8_server or body.isascii()):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    meta: dict[str, Any] = {
        "k": message.routing_key,
        "t": message.content_type,
        "e": message.content_encoding,
        "h": dict(message.headers),
        "n": nonce,
    }
    if text is None:
        meta["b"] = 1
        text = base64.b64encode(body).decode("ascii")
    line = dumps(meta).decode("utf-8")
    if not (utf8_server or line.isascii()):
        line = json.dumps(meta, ensure_ascii=True, separators=(",", ":"))
    return line + "\n" + text


def decode(payload: str, exchange: str) -> IncomingMessage:
    """The message in ``payload``; raise MessageRejected when it is not one of ours."""
    meta_text, newline, text = payload.partition("\n")
    if not newline:
        raise MessageRejected("malformed", "notification payload has no metadata line")
    try:
        meta = loads(meta_text)
    except (ValueError, RecursionError):
        raise MessageRejected("malformed", "notification metadata is not JSON") from None
    if meta.__class__ is not dict:
        raise MessageRejected("malformed", "notification metadata is not a JSON object")
    if meta.get("b"):
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MessageRejected("malformed", "body is not valid base64") from None
    else:
        body = text.encode("utf-8")
    routing_key = meta.get("k")
    content_type = meta.get("t")
    content_encoding = meta.get("e")
    headers = meta.get("h")
    return IncomingMessage(
        body,
        routing_key if routing_key.__class__ is str else "",
        exchange,
        content_type if content_type.__class__ is str else None,
        content_encoding if content_encoding.__class__ is str else None,
        headers if headers.__class__ is dict else {},
    )
