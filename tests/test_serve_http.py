"""Slow clients: a request must arrive in full within a deadline (``evcore.serve.protocol``),
checked on real sockets against uvicorn configured as ``evcore serve`` configures it."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from _serve_support import event, monitor_app

from evcore.serve.monitor import Monitor
from evcore.serve.protocol import MAX_HEAD_BYTES, RequestDeadlineProtocol, RequestFraming
from evcore.serve.runner import KEEP_ALIVE, server_config

#: The deadline the served tests use, shorter than uvicorn's keep-alive timeout.
DEADLINE = 1.0
#: Longest wait for anything expected to happen.
TIMEOUT = 15.0

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


# -- following requests in the bytes ----------------------------------------------------


def test_a_request_in_one_piece_or_dribbled_byte_by_byte() -> None:
    framing = RequestFraming()
    assert not framing.partial
    assert framing.feed(GET) == 1 and not framing.partial
    for byte in GET[:-1]:
        assert framing.feed(bytes([byte])) == 0 and framing.partial
    assert framing.feed(GET[-1:]) == 1 and not framing.partial


def test_pipelined_requests_bodies_and_bare_line_feeds() -> None:
    framing = RequestFraming()
    assert framing.feed(GET + GET + GET[:10]) == 2 and framing.partial
    assert framing.feed(GET[10:]) == 1 and not framing.partial
    post = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    assert framing.feed(post + b"12345") == 0 and framing.partial
    assert framing.feed(b"67890" + GET) == 2 and not framing.partial
    # The head's end split across reads, and h11's tolerance of a missing CR.
    assert framing.feed(GET[:-3]) == 0 and framing.feed(GET[-3:]) == 1
    assert framing.feed(b"GET / HTTP/1.1\nHost: x\n\n") == 1 and not framing.partial


def test_what_cannot_be_followed_stays_unfinished() -> None:
    chunked = RequestFraming()
    head = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert chunked.feed(head + b"5\r\nhello\r\n0\r\n\r\n" + GET) == 0 and chunked.partial
    oversized = RequestFraming(max_head=100)
    assert oversized.feed(b"GET / HTTP/1.1\r\nX-Junk: " + b"a" * 200) == 0
    assert oversized.feed(b"\r\n\r\n" + GET) == 0 and oversized.partial
    malformed = RequestFraming()
    assert malformed.feed(b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n") == 1


# -- on a real server -------------------------------------------------------------------


class ShortDeadline(RequestDeadlineProtocol):
    deadline = DEADLINE


@dataclass
class Served:
    monitor: Monitor
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop
    host: str
    port: int

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        return sock


@pytest.fixture
def served() -> Iterator[Served]:
    """The application under uvicorn in a thread, as ``evcore serve`` configures it but
    with a deadline of :data:`DEADLINE` seconds."""
    monitor, app = monitor_app()
    config = server_config(app, "127.0.0.1", 0, "warning")
    config.http = ShortDeadline
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield Served(monitor, server, loops[0], host, port)
    finally:
        loops[0].call_soon_threadsafe(monitor.stream.close)
        server.should_exit = True
        thread.join(TIMEOUT)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reading what it sent)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if not readable:
            continue
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_client_dribbling_its_head_is_cut_off_while_others_are_served(
    served: Served,
) -> None:
    slow = served.connect()
    idle = served.connect()  # sends nothing at all
    try:
        started = time.monotonic()
        cut = False
        with httpx.Client(timeout=TIMEOUT) as client:
            # A byte every tenth of a second: always something new, never a whole head.
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                try:
                    slow.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
                if closed_by_peer(slow, 0.1):
                    cut = True
                    break
                # Others are served meanwhile, on connections of their own.
                assert client.get(f"{served.base}/healthz").status_code == 200
                assert time.monotonic() - started < TIMEOUT
        assert cut
        assert closed_by_peer(idle, TIMEOUT)
    finally:
        slow.close()
        idle.close()


def test_keep_alive_idles_and_long_responses_are_not_cut(served: Served) -> None:
    assert KEEP_ALIVE > DEADLINE * 2
    with served.connect() as sock:
        sock.sendall(GET)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(DEADLINE * 1.5)  # idle between requests: keep-alive's business
        sock.sendall(GET)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    with served.connect() as stream:
        stream.sendall(b"GET /api/events/stream?groups=worker HTTP/1.1\r\nHost: x\r\n\r\n")
        received = stream.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        time.sleep(DEADLINE * 1.5)
        served.loop.call_soon_threadsafe(
            served.monitor.apply, [event("worker-heartbeat", "late@example", freq=2.0)]
        )
        deadline = time.monotonic() + TIMEOUT
        while b"late@example" not in received and time.monotonic() < deadline:
            chunk = stream.recv(65536)
            assert chunk, "the stream was closed"
            received += chunk
        assert b"late@example" in received


def test_request_heads_are_bounded(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
        answer = sock.recv(200)
        assert answer.startswith(b"HTTP/1.1 400")
