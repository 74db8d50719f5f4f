"""Open a Receiver on a broker URL for a command, failing early when it cannot connect."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from evcore.cli.common import BrokerUnreachable
from evcore.cli.watch import Link, WatchedTransport
from evcore.errors import ConnectionLost
from evcore.receiver import Handler, Receiver
from evcore.registry import connect
from evcore.transport import StreamOptions


class EventSource:
    """A Receiver on ``url`` plus the :class:`Link` telling whether the broker is reachable.

    ``stream`` reads a durable transport as that group member, from that start.

    Unless ``wait`` is true, a broker that cannot be reached at once raises
    :class:`BrokerUnreachable`; once connected, the Receiver reconnects by itself.
    """

    def __init__(
        self,
        url: str,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str = "#",
        wait: bool = False,
        link: Link | None = None,
        stream: StreamOptions | None = None,
    ) -> None:
        self.url = url
        self.transport = WatchedTransport(connect(url), link)
        try:
            self.receiver = Receiver(
                self.transport, handlers=handlers, routing_key=routing_key, stream=stream
            )
        except BaseException:
            self.transport.close()
            raise
        if not wait and not self.link.connected:
            error = self.link.error or "no connection"
            self.close()
            raise BrokerUnreachable(url, ConnectionLost(error))

    @property
    def link(self) -> Link:
        return self.transport.link

    def close(self) -> None:
        """Stop the Receiver (from any thread) and close the connection."""
        self.receiver.close()
        self.transport.close()

    def __enter__(self) -> EventSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
