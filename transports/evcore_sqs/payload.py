"""One evcore message as an SNS message with attributes, and back (pure: no boto3).

SQS bodies must be text of the XML character set (no NUL, no other control character but
tab, newline and carriage return) and SNS refuses an empty message. So the SNS message is a
one-character tag and the body: ``t`` and the body itself when it is such text (every JSON
event), ``b`` and its base64 otherwise. The routing key travels as the ``routing_key``
attribute, which subscription filter policies match; the content type and encoding, the
exact routing key and the headers travel as JSON in the ``evcore`` attribute.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from evcore.codec import dumps, loads
from evcore.errors import MessageRejected
from evcore.transport import IncomingMessage, OutgoingMessage

__all__ = ["MAX_BODY_SIZE", "MAX_MESSAGE", "decode", "encode", "filter_policy", "size_of"]

#: SNS and SQS take at most 256 KiB per message, attributes included.
MAX_MESSAGE = 256 * 1024
#: The body size the transport promises to carry (capabilities.max_body_size): text bodies
#: up to it fit with 6 KiB left for the attributes.
MAX_BODY_SIZE = MAX_MESSAGE - 6 * 1024
ROUTING_ATTRIBUTE = "routing_key"
META_ATTRIBUTE = "evcore"

#: Characters an SQS message body or attribute may not hold.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def encode(message: OutgoingMessage) -> tuple[str, dict[str, Any]]:
    """The SNS message text and message attributes of ``message``."""
    text: str | None
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _NOT_XML.search(text):
        body = "t" + text
    else:
        body = "b" + base64.b64encode(message.body).decode("ascii")
    meta = {
        "k": message.routing_key,
        "t": message.content_type,
        "e": message.content_encoding,
        "h": dict(message.headers),
    }
    attributes: dict[str, Any] = {
        META_ATTRIBUTE: {"DataType": "String", "StringValue": dumps(meta).decode("utf-8")}
    }
    if message.routing_key:
        # Only for filter policies: characters SQS refuses become U+FFFD.
        visible = _NOT_XML.sub("\ufffd", message.routing_key)
        attributes[ROUTING_ATTRIBUTE] = {"DataType": "String", "StringValue": visible}
    return body, attributes


def size_of(body: str, attributes: Mapping[str, Any]) -> int:
    """The size SNS and SQS count against their limit: message, attribute names, types
    and values, in UTF-8 bytes."""
    size = len(body.encode("utf-8"))
    for name, value in attributes.items():
        size += len(name.encode("utf-8")) + len(value["DataType"].encode("utf-8"))
        size += len(value["StringValue"].encode("utf-8"))
    return size


def decode(body: str, attributes: Mapping[str, Any], exchange: str) -> IncomingMessage:
    """The message an SQS message carries; raise MessageRejected when it is not ours."""
    tag, text = body[:1], body[1:]
    if tag == "t":
        raw = text.encode("utf-8")
    elif tag == "b":
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MessageRejected("malformed", "body is not valid base64") from None
    else:
        raise MessageRejected("malformed", "not an evcore SNS message")
    carried = attributes.get(META_ATTRIBUTE)
    meta_text = carried.get("StringValue") if isinstance(carried, dict) else None
    if not isinstance(meta_text, str):
        raise MessageRejected("malformed", f"no {META_ATTRIBUTE!r} message attribute")
    try:
        meta = loads(meta_text)
    except (ValueError, RecursionError):
        raise MessageRejected("malformed", "message metadata is not JSON") from None
    if meta.__class__ is not dict:
        raise MessageRejected("malformed", "message metadata is not a JSON object")
    routing_key, content_type = meta.get("k"), meta.get("t")
    content_encoding, headers = meta.get("e"), meta.get("h")
    return IncomingMessage(
        raw,
        routing_key if routing_key.__class__ is str else "",
        exchange,
        content_type if content_type.__class__ is str else None,
        content_encoding if content_encoding.__class__ is str else None,
        headers if headers.__class__ is dict else {},
    )


def filter_policy(exchange_type: str, binding_key: str) -> dict[str, Any] | None:
    """An SNS filter policy letting through at least every message the binding matches,
    or None when it would let through everything anyway.

    A direct binding matches its key exactly. A topic binding becomes a prefix: its literal
    words up to the first wildcard, with the dot when a ``*`` follows (one more word must
    come) and without it when a ``#`` follows (``worker.#`` matches ``worker`` too). The
    subscription still applies the binding exactly: SNS applies a new filter policy only
    after a while, and a prefix lets more through.
    """
    if exchange_type == "fanout" or not binding_key or _NOT_XML.search(binding_key):
        return None
    if exchange_type == "direct":
        return {ROUTING_ATTRIBUTE: [binding_key]}
    words = binding_key.split(".")
    literal: list[str] = []
    for word in words:
        if word in {"*", "#"}:
            prefix = ".".join(literal) + ("." if word == "*" else "")
            return {ROUTING_ATTRIBUTE: [{"prefix": prefix}]} if literal else None
        literal.append(word)
    return {ROUTING_ATTRIBUTE: [binding_key]}
