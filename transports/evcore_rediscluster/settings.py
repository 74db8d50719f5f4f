"""Settings of the Redis Cluster transport: its URL, its startup nodes, its channels.

The URL is a Redis URL with ``+cluster`` after the scheme; the connection options are the
Redis transport's (see ``docs/transports/redis.md``), parsed by it. Pure: no redis-py here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from evcore.errors import InvalidURL
from evcore_redis.settings import RedisSettings, parse_settings

__all__ = ["ClusterSettings", "parse_cluster_settings"]

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: Options of the Redis transport that mean nothing on a cluster's sharded channels.
_NOT_HERE = frozenset(
    {"db", "virtual_host", "fanout_prefix", "fanout_patterns", "global_keyprefix"}
)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Connection settings (shared by every node), the startup nodes and the channel prefix."""

    node: RedisSettings
    startup_nodes: tuple[tuple[str, int], ...] = (("127.0.0.1", 6379),)
    #: Sharded channel of an exchange: ``<channel_prefix><exchange>``.
    channel_prefix: str = "evcore."
    #: MOVED redirections a subscription follows before giving up with ConnectionLost.
    max_redirects: int = 5

    def channel(self, exchange: str) -> str:
        """The sharded channel carrying ``exchange``."""
        return f"{self.channel_prefix}{exchange}"

    @property
    def address(self) -> str:
        """The startup nodes, for messages."""
        return ",".join(f"{host}:{port}" for host, port in self.startup_nodes)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise InvalidURL(f"startup node {text!r} is not host:port")
    return host.strip("[]"), number


def parse_cluster_settings(url: str, **options: Any) -> ClusterSettings:
    """Build settings from ``redis+cluster://[user:password@]host:port[?option=...]``.

    ``startup_nodes=host:port,host:port`` adds nodes to try besides the URL's;
    ``channel_prefix`` changes the channels' prefix. Raises InvalidURL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"cannot parse Redis Cluster URL {url!r}: {exc}") from None
    plain = SCHEMES.get(parts.scheme.lower())
    if plain is None:
        raise InvalidURL(
            f"not a Redis Cluster URL: {url!r} (expected redis+cluster:// or rediss+cluster://)"
        )
    if parts.path not in {"", "/", "/0"}:
        raise InvalidURL(f"a Redis Cluster has database 0 only; got {parts.path!r} in {url!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(options)
    given = sorted(_NOT_HERE & set(query))
    if given:
        raise InvalidURL(f"option(s) {', '.join(given)} do not apply to a Redis Cluster")
    extra_nodes = str(query.pop("startup_nodes", "") or "")
    prefix = query.pop("channel_prefix", "evcore.")
    if not isinstance(prefix, str):
        raise InvalidURL(f"option channel_prefix={prefix!r} must be a string")
    node = parse_settings(urlunsplit((plain, parts.netloc, "", "", "")), **query)
    nodes = [(parts.hostname or "127.0.0.1", port or 6379)]
    nodes += [_address(item) for item in extra_nodes.split(",") if item.strip()]
    return ClusterSettings(
        node=node, startup_nodes=tuple(dict.fromkeys(nodes)), channel_prefix=prefix
    )
