"""Two test transports that pose as other broker families, for evcore's own unit tests.

``fakesql://NAME`` reports driver type ``sql`` (events are disabled there) and
``fakeredis://NAME`` reports ``redis`` (events use a fanout exchange and the core filters by
binding key). Both carry messages over an in-memory bus of their own, so no broker is
needed; each scheme's buses are separate from ``memory://`` and from each other. The unit
tests' conftest registers them in-process (``evcore.register_transport``): nothing is
installed, so a user's ``evcore transports`` never lists them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import urlsplit

from evcore.errors import InvalidURL, UnsupportedOperation
from evcore.transport import FANOUT, Capabilities, Exchange, OutgoingMessage, QueueOptions
from evcore_memory import MemorySubscription, MemoryTransport, get_bus

__all__ = ["FakeRedisTransport", "FakeSQLTransport"]


class _PosingTransport(MemoryTransport):
    """A memory transport on a bus of its scheme's own, under another driver type."""

    scheme: ClassVar[str]

    @classmethod
    def from_url(cls, url: str = "", **options: Any) -> _PosingTransport:
        if options:
            raise InvalidURL(f"{cls.scheme}:// takes no options, got {sorted(options)}")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidURL(f"cannot parse {url!r}: {exc}") from None
        if parts.scheme != cls.scheme:
            raise InvalidURL(f"not a {cls.scheme}:// URL: {url!r}")
        name = (parts.netloc + parts.path).strip("/")
        return cls(get_bus(f"{cls.scheme}:{name}"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.bus.name}>"


class FakeSQLTransport(_PosingTransport):
    """``fakesql://``: behaves like ``memory://`` but reports driver type ``sql``."""

    scheme = "fakesql"
    driver_type = "sql"


class FakeRedisTransport(_PosingTransport):
    """``fakeredis://``: Redis pub/sub semantics as the core sees them.

    Fanout exchanges only; every subscription gets every message published to its exchange
    whatever its binding key (``exact_routing=False``: the core filters), and queue options
    are ignored, as with Redis pub/sub.
    """

    scheme = "fakeredis"
    driver_type = "redis"
    capabilities = Capabilities(
        broadcast=True,
        exact_routing=False,
        exchange_types=frozenset({FANOUT}),
        queue_options=frozenset(),
        persistent=False,
    )

    def _check(self, exchange: Exchange) -> None:
        if exchange.type not in self.capabilities.exchange_types:
            raise UnsupportedOperation(
                f"fakeredis:// has fanout exchanges only, not {exchange.type!r}"
            )

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        self._check(exchange)
        super().publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> MemorySubscription:
        self._check(exchange)
        # Each subscriber gets its own channel, as on Redis: queue names never collide.
        private = replace(
            queue,
            name=f"{queue.name}#{uuid.uuid4().hex}",
            exclusive=True,
            auto_delete=True,
            message_ttl=None,
            max_length=None,
        )
        return super().subscribe(exchange, binding_key, private)
