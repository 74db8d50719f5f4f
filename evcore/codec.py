"""Event bodies to bytes and back: JSON only, with a size bound and an accept list.

orjson is used when it is installed; the standard library's ``json`` gives the same
results otherwise. Nothing is ever unpickled: a body whose content type is off the accept
list is refused before it is looked at.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from evcore.errors import MessageRejected

JSON = "application/json"

#: Serializer names accepted where Celery takes one, with their content types.
CONTENT_TYPES = {"json": JSON, JSON: JSON}

#: The one default bound on a message body, in bytes (4 MiB): receivers refuse bigger bodies
#: as ``too-large``, and adapters with a client-side limit (the AMQP ``max_message_bytes``)
#: refuse to send them, since no receiver with the default would accept them.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: How deep JSON may nest before a body is refused (stops recursion bombs); orjson's own
#: limit, applied to the standard-library path too so both behave alike.
MAX_NESTING = 1024

#: How deep a received event body may nest. Celery's events are flat (arguments and
#: results travel as reprs); the bound keeps a State snapshot holding any event within
#: orjson's encoding limit (254 levels) and far from Python's recursion limit.
MAX_BODY_NESTING = 128


def content_type_for(serializer: str) -> str:
    """The content type of a serializer name; only JSON is offered."""
    try:
        return CONTENT_TYPES[serializer]
    except KeyError:
        raise ValueError(
            f"serializer {serializer!r} is not supported: evcore speaks JSON only "
            "(pickle and the like are never accepted)"
        ) from None


def accepted_content_types(accept: Iterable[str]) -> frozenset[str]:
    """Normalise an accept list of serializer names or content types."""
    return frozenset(CONTENT_TYPES.get(item, item) for item in accept)


def _wrap_special(value: Any) -> Any:
    # The same wrapping kombu applies, so Celery decodes these back to objects.
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return {"__type__": type(value).__name__, "__value__": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"__type__": "decimal", "__value__": str(value)}
    if isinstance(value, uuid.UUID):
        return {"__type__": "uuid", "__value__": str(value)}
    if isinstance(value, bytes):
        return {"__type__": "bytes", "__value__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_wrap_special, ensure_ascii=False).encode("utf-8")


def nesting_depth(data: bytes) -> int:
    """How deeply the arrays and objects of a JSON document nest (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _stdlib_loads(data: bytes | str) -> Any:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # Counting brackets is fast in C and bounds the depth, so most bodies skip the scan.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and nesting_depth(raw) > MAX_NESTING:
        raise ValueError(f"JSON nests deeper than {MAX_NESTING} levels")
    return json.loads(raw)


dumps: Callable[[Any], bytes]
loads: Callable[[bytes | str], Any]

try:
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    dumps, loads = _stdlib_dumps, _stdlib_loads
else:
    _orjson_dumps, _orjson_loads = orjson.dumps, orjson.loads
    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS

    def dumps(obj: Any) -> bytes:
        try:
            return _orjson_dumps(obj, default=_wrap_special, option=_ORJSON_OPTIONS)
        except TypeError:
            # Integers beyond 64 bits and other values orjson refuses but json takes.
            return _stdlib_dumps(obj)

    def loads(data: bytes | str) -> Any:
        try:
            return _orjson_loads(data)
        except orjson.JSONDecodeError:
            # orjson refuses NaN and Infinity, which Python's json accepts. (It takes integers
            # beyond 64 bits, as floats: see docs/compat.md.)
            return _stdlib_loads(data)


def decode_body(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    accept: frozenset[str],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Any:
    """Decode a received body, refusing what is not accepted or too large.

    Raises :class:`~evcore.errors.MessageRejected` with a short reason:
    ``too-large``, ``content-type``, ``encoding``, ``malformed`` or ``too-deep`` (lists
    and dicts nested more than :data:`MAX_BODY_NESTING` levels).
    """
    if len(body) > max_bytes:
        raise MessageRejected("too-large", f"{len(body)} bytes exceeds the {max_bytes} bound")
    ctype = content_type or JSON
    if ctype not in accept:
        raise MessageRejected("content-type", f"{ctype!r} is not on the accept list")
    if content_encoding not in (None, "", "utf-8", "utf8", "binary"):
        raise MessageRejected("encoding", f"unsupported content encoding {content_encoding!r}")
    try:
        value = loads(body)
    except (ValueError, RecursionError) as exc:
        raise MessageRejected("malformed", f"body is not valid JSON ({exc})") from None
    # Only a body with enough brackets can nest too deep: the walk is rarely needed. A
    # body too short to hold that many pairs of brackets is not even scanned.
    limit = MAX_BODY_NESTING
    if (
        len(body) >= _MIN_TOO_DEEP_BYTES
        and body.count(b"[") + body.count(b"{") > limit
        and _nests_deeper(value, limit)
    ):
        raise MessageRejected("too-deep", f"body nests deeper than {limit} levels")
    return value


#: The shortest body that can nest more than MAX_BODY_NESTING levels deep: that takes one
#: more opening bracket than the limit, and as many closing ones.
_MIN_TOO_DEEP_BYTES = 2 * (MAX_BODY_NESTING + 1)


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether lists and dicts in ``value`` nest more than ``limit`` levels deep."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        children: list[Any] = []
        for container in level:
            children.extend(container.values() if isinstance(container, dict) else container)
        level = [child for child in children if isinstance(child, dict | list)]
    return bool(level)
