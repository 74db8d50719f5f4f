"""URL options and key names of the Redis Streams transport.

Every key of a partition carries the hash tag ``{<exchange>.<partition>}``, so a partition's
stream, its lease and its acknowledged position share a Redis Cluster slot (the scripts
touching two of them stay single-slot) while partitions spread over the cluster. A group's
member registry has a tag of its own.

``<prefix>{celeryev.3}``                  the stream of partition 3
``<prefix>{celeryev.3}:lease:<group>``    who owns partition 3 in <group> (SET PX)
``<prefix>{celeryev.3}:acked:<group>``    <group>'s acknowledged position in partition 3
``<prefix>{celeryev}:members:<group>``    live members of <group> (sorted set, score = expiry)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from evcore.errors import InvalidURL
from evcore_redis.settings import RedisSettings, parse_settings

__all__ = ["SCHEMES", "StreamSettings", "parse_stream_url"]

#: Stream URL schemes and the Redis scheme each one stands on.
SCHEMES = {"redis+streams": "redis", "rediss+streams": "rediss"}

DEFAULT_PARTITIONS = 16
DEFAULT_MAXLEN = 1_000_000
DEFAULT_PREFIX = "evstream:"
#: Most entries one XREAD returns per partition.
DEFAULT_READ_COUNT = 2_000


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The stream options of a ``redis+streams://`` URL; the connection's are in ``redis``."""

    redis: RedisSettings
    partitions: int = DEFAULT_PARTITIONS
    #: Entries kept per partition (approximately: Redis trims whole nodes), or None.
    maxlen: int | None = DEFAULT_MAXLEN
    #: Seconds an entry is kept (by entry-id time, approximately), or None.
    max_age: float | None = None
    #: Trim exactly to ``maxlen`` instead of by whole nodes (slower appends).
    exact_trim: bool = False
    prefix: str = DEFAULT_PREFIX
    read_count: int = DEFAULT_READ_COUNT

    def stream_key(self, exchange: str, partition: int) -> str:
        return f"{self.prefix}{{{exchange}.{partition}}}"

    def lease_key(self, exchange: str, partition: int, group: str) -> str:
        return f"{self.stream_key(exchange, partition)}:lease:{group}"

    def acked_key(self, exchange: str, partition: int, group: str) -> str:
        return f"{self.stream_key(exchange, partition)}:acked:{group}"

    def members_key(self, exchange: str, group: str) -> str:
        return f"{self.prefix}{{{exchange}}}:members:{group}"


def _count(name: str, value: Any, allow_none: bool = False) -> int | None:
    if allow_none and str(value).lower() in {"", "none", "0"}:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise InvalidURL(f"{name} must be a positive whole number, got {value!r}")
    return number


def parse_stream_url(url: str, **options: Any) -> StreamSettings:
    """Split a ``redis+streams://`` URL into connection settings and stream options.

    Stream options: ``partitions`` (16), ``maxlen`` (1000000 per partition; ``none`` for
    unbounded), ``max_age`` (seconds), ``exact_trim``, ``prefix`` (``evstream:``),
    ``read_count``; every other option is the Redis transport's (``db``, ``password``,
    TLS...). Raises :class:`~evcore.errors.InvalidURL`.
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidURL(f"cannot parse Redis Streams URL {url!r}: {exc}") from None
    base = SCHEMES.get(parts.scheme.lower())
    if base is None:
        raise InvalidURL(
            f"not a Redis Streams URL: {url!r} (expected redis+streams:// or rediss+streams://)"
        )
    stream: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    names = {"partitions", "maxlen", "max_age", "exact_trim", "prefix", "read_count"}
    for name, value in query:
        (stream.__setitem__(name, value) if name in names else rest.append((name, value)))
    for name in list(options):
        if name in names:
            stream[name] = options.pop(name)
    plain = urlunsplit((base, parts.netloc, parts.path, urlencode(rest), ""))
    settings = parse_settings(plain, **options)
    values: dict[str, Any] = {"redis": settings}
    if "partitions" in stream:
        values["partitions"] = _count("partitions", stream["partitions"])
    if "maxlen" in stream:
        values["maxlen"] = _count("maxlen", stream["maxlen"], allow_none=True)
    if "read_count" in stream:
        values["read_count"] = _count("read_count", stream["read_count"])
    if "max_age" in stream:
        try:
            max_age = float(stream["max_age"])
        except (TypeError, ValueError):
            max_age = -1.0
        if not max_age > 0:
            raise InvalidURL(
                f"max_age must be a positive number of seconds, got {stream['max_age']!r}"
            )
        values["max_age"] = max_age
    if "exact_trim" in stream:
        flag = str(stream["exact_trim"]).lower()
        if flag not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            raise InvalidURL(f"exact_trim must be true or false, got {stream['exact_trim']!r}")
        values["exact_trim"] = flag in {"1", "true", "yes", "on"}
    if "prefix" in stream:
        values["prefix"] = str(stream["prefix"])
    return StreamSettings(**values)
