"""evcore_amqp.wire against a scripted broker on 127.0.0.1 (pamqp on both ends): what the
publishing connection sends, and resource alarms, which a shared RabbitMQ cannot raise."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pamqp_frame = pytest.importorskip("pamqp.frame")

from pamqp import commands  # noqa: E402
from pamqp.header import ProtocolHeader  # noqa: E402

from evcore.errors import ConnectionLost  # noqa: E402
from evcore.transport import Exchange, OutgoingMessage  # noqa: E402
from evcore_amqp import AMQPTransport  # noqa: E402


class Peer:
    """The broker's end of one connection: reads and writes frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.seen: list[Any] = []

    def read(self) -> Any:
        while True:
            if len(self.buffer) >= 8:
                try:
                    size, _channel, value = pamqp_frame.unmarshal(self.buffer)
                except Exception:  # not all of it yet
                    size = 0
                if size:
                    self.buffer = self.buffer[size:]
                    self.seen.append(value)
                    return value
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buffer += data

    def send(self, channel: int, *values: Any) -> None:
        self.sock.sendall(b"".join(pamqp_frame.marshal(value, channel) for value in values))

    def handshake(self, after_declare: tuple[Any, ...] = ()) -> None:
        assert isinstance(self.read(), ProtocolHeader)
        self.send(0, commands.Connection.Start(server_properties={}, mechanisms="PLAIN"))
        start_ok = self.read()
        assert start_ok.response == "\0guest\0secret"
        assert start_ok.client_properties["product"] == "evcore"
        self.send(0, commands.Connection.Tune(channel_max=8, frame_max=4096, heartbeat=60))
        tune_ok = self.read()
        assert (tune_ok.frame_max, tune_ok.heartbeat) == (4096, 0)
        assert self.read().virtual_host == "/"
        self.send(0, commands.Connection.OpenOk())
        assert isinstance(self.read(), commands.Channel.Open)
        self.send(1, commands.Channel.OpenOk())
        declare = self.read()
        assert (declare.exchange, declare.exchange_type, declare.durable) == ("ev", "topic", True)
        # The reply and what follows it in one write: the client has both before publishing.
        self.sock.sendall(
            b"".join(
                pamqp_frame.marshal(value, channel)
                for channel, value in ((1, commands.Exchange.DeclareOk()), *after_declare)
            )
        )

    def serve_until_closed(self) -> None:
        """Answer the client's close and read until it hangs up."""
        try:
            while True:
                if isinstance(self.read(), commands.Connection.Close):
                    self.send(0, commands.Connection.CloseOk())
        except (EOFError, OSError):
            pass


@contextmanager
def scripted_broker(script: Callable[[Peer], None]) -> Iterator[tuple[int, list[Peer]]]:
    """A one-connection broker on a free port running ``script``; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    peers: list[Peer] = []

    def run() -> None:
        sock, _ = listener.accept()
        with sock:
            peer = Peer(sock)
            peers.append(peer)
            script(peer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], peers
    finally:
        listener.close()
        thread.join(10)
        assert not thread.is_alive()


def transport_for(port: int, **options: Any) -> AMQPTransport:
    return AMQPTransport.from_url(f"amqp://guest:secret@127.0.0.1:{port}//", **options)


MESSAGE = OutgoingMessage("task.sent", b'{"type": "task-sent"}', {"hostname": "w1@h"})


def test_a_publish_waits_out_a_resource_alarm_then_goes() -> None:
    def script(peer: Peer) -> None:
        blocked = (0, commands.Connection.Blocked(reason="low on memory"))
        peer.handshake(after_declare=(blocked,))
        threading.Event().wait(0.3)
        assert peer.seen[-1].__class__ is commands.Exchange.Declare  # nothing published yet
        peer.send(0, commands.Connection.Unblocked())
        publish, header, body = peer.read(), peer.read(), peer.read()
        assert (publish.exchange, publish.routing_key) == ("ev", "task.sent")
        assert header.properties.headers == {"hostname": "w1@h"}
        assert body.value == MESSAGE.body
        peer.serve_until_closed()

    with scripted_broker(script) as (port, peers):
        transport = transport_for(port, blocked_connection_timeout=10)
        transport.publish(Exchange("ev"), [MESSAGE])
        assert transport.stats.published == 1
        transport.close()
    assert isinstance(peers[0].seen[-1], commands.Connection.Close)


def test_a_resource_alarm_past_blocked_connection_timeout_is_connection_lost() -> None:
    def script(peer: Peer) -> None:
        peer.handshake(after_declare=((0, commands.Connection.Blocked(reason="disk")),))
        peer.serve_until_closed()

    with scripted_broker(script) as (port, peers):
        transport = transport_for(port, blocked_connection_timeout=0.3)
        with pytest.raises(ConnectionLost, match=r"blocked publishing .* more than 0\.3 s"):
            transport.publish(Exchange("ev"), [MESSAGE])
        assert transport.stats.published == 0
        transport.close()
    assert not any(isinstance(value, commands.Basic.Publish) for value in peers[0].seen)


def test_a_broker_close_between_publishes_is_read_before_the_next_write() -> None:
    def script(peer: Peer) -> None:
        forced = (0, commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0))
        peer.handshake(after_declare=(forced,))
        assert isinstance(peer.read(), commands.Connection.CloseOk)

    with scripted_broker(script) as (port, peers):
        transport = transport_for(port)
        with pytest.raises(ConnectionLost, match="320 CONNECTION_FORCED"):
            transport.publish(Exchange("ev"), [MESSAGE])
        transport.close()
    assert not any(isinstance(value, commands.Basic.Publish) for value in peers[0].seen)
