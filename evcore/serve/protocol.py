"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on receiving each request.

uvicorn closes idle keep-alive connections, but a request that arrives slowly has no time
limit: a client sending its head a byte every few seconds holds a connection for ever, and
``--limit-concurrency`` of them lock everyone else out. :class:`RequestDeadlineProtocol`,
given to uvicorn as ``Config(http=...)``, wraps uvicorn's h11 protocol and aborts a
connection whose request is not received in full within :data:`REQUEST_DEADLINE` seconds.
The deadline covers receiving a request, never the response: an event stream lasts as long
as it likes, and an idle keep-alive connection is uvicorn's to close.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

#: Seconds a client has to send a complete request (head and any body): from the
#: connection being made for its first request, from the request's first byte for the next.
REQUEST_DEADLINE = 10.0
#: Largest request head accepted (request line and headers); h11 answers 400 past it.
MAX_HEAD_BYTES = 16 * 1024

# Where h11 sees a head end: an empty line, with or without its CR.
_HEAD_END = re.compile(rb"\n\r?\n")


def _body_length(head: bytes) -> int | None:
    """The body's length the head declares, or None for a transfer-coded body."""
    length = 0
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            # h11 refuses a malformed length and closes the connection: 0 is as good as any.
            digits = value.split(b",")[0].strip()
            length = int(digits) if digits.isdigit() else 0
    return length


class RequestFraming:
    """Follows where requests begin and end in the bytes a client sends.

    Only what delimits a request is read: the empty line ending its head and the
    ``Content-Length`` of its body; h11 parses the rest. Chunked bodies (no endpoint takes
    a body) are not followed: the request counts as unfinished for the rest of the
    connection, so a deadline running over it is never lifted. Wherever this reading and
    h11's could differ, the difference leaves a request unfinished, not finished.
    """

    def __init__(self, max_head: int = MAX_HEAD_BYTES) -> None:
        self.max_head = max_head
        self._head = bytearray()
        self._body = 0
        self._lost = False

    @property
    def partial(self) -> bool:
        """Whether part of a request has been received but not all of it."""
        return self._lost or self._body > 0 or bool(self._head)

    def feed(self, data: bytes) -> int:
        """Take the next bytes received; how many requests they completed."""
        completed = 0
        position = 0
        while position < len(data) and not self._lost:
            if self._body:
                taken = min(self._body, len(data) - position)
                self._body -= taken
                position += taken
                if not self._body:
                    completed += 1
                continue
            before = len(self._head)
            self._head += data[position:]
            # The previous bytes held no end: one can only start in their last two.
            end = _HEAD_END.search(self._head, max(0, before - 2))
            if end is None:
                if len(self._head) > self.max_head:
                    self._lost = True
                    self._head.clear()
                return completed
            position += end.end() - before
            length = _body_length(bytes(self._head[: end.end()]))
            self._head.clear()
            if length is None:
                self._lost = True
            elif length:
                self._body = length
            else:
                completed += 1
        return completed


class RequestDeadlineProtocol(asyncio.Protocol):
    """uvicorn's h11 protocol, aborting connections whose request is too slow to arrive."""

    #: Seconds to receive a request; a class attribute so tests can shorten it.
    deadline = REQUEST_DEADLINE

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inner = H11Protocol(config, server_state, app_state, _loop)
        self.loop = _loop or asyncio.get_running_loop()
        self.framing = RequestFraming(config.h11_max_incomplete_event_size or MAX_HEAD_BYTES)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(self.transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.framing.feed(data):
            self._disarm()
        if self.framing.partial and self.timer is None:
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> None:
        self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _arm(self) -> None:
        self.timer = self.loop.call_later(self.deadline, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            peer = self.transport.get_extra_info("peername")
            logger.debug(
                "no complete request from %s in %s s: connection aborted", peer, self.deadline
            )
            self.transport.abort()
