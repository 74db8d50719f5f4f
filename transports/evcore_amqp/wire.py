"""The publishing connection: AMQP 0-9-1 on a socket the transport owns.

Publishing needs little of AMQP: the handshake, one channel, exchange declarations,
optionally publisher confirms, and ``basic.publish``. Owning the socket lets a whole batch
go out in one write of frames encoded by :mod:`evcore_amqp.frames`, where pika's public API
flushes the socket after every message. Everything else is encoded and decoded with pamqp,
a public AMQP 0-9-1 codec; no client library's internals are involved.

The connection negotiates no heartbeat (nothing would service it between publishes), so
the broker never drops an idle publisher; frames the broker sends meanwhile (a close, a
resource alarm, confirms) are read before the next write and while waiting for a reply.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from evcore.errors import ChannelError, ConnectionLost, MissingDependency
from evcore.transport import Exchange
from evcore_amqp.failures import channel_refusal
from evcore_amqp.frames import PublishEncoder
from evcore_amqp.options import AMQPOptions, Endpoint

__all__ = ["PublishConnection", "load_pamqp"]

#: The largest frame this client accepts (RabbitMQ's default ``frame_max``).
FRAME_MAX = 131072
_READ_SIZE = 65536
#: Reply codes of a refused login and of a refused vhost.
_ACCESS_REFUSED, _NOT_ALLOWED = 403, 530


def load_pamqp() -> Any:
    """Import pamqp, or say how to install it."""
    try:
        # Imported lazily: an optional dependency.
        import pamqp.body  # noqa: PLC0415
        import pamqp.commands  # noqa: PLC0415
        import pamqp.exceptions  # noqa: PLC0415
        import pamqp.frame  # noqa: PLC0415
        import pamqp.header  # noqa: PLC0415
        import pamqp.heartbeat  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(
            "the AMQP transport needs pamqp: pip install 'evcore[amqp]'"
        ) from exc
    return pamqp


class PublishConnection:
    """One connection with (at most) one open channel, used from one thread at a time.

    Failures raise evcore errors: :class:`ConnectionLost` when the connection is gone (it
    is then closed here) and :class:`ChannelError` when the broker refuses something
    (the channel is then closed; :meth:`open_channel` opens another).
    """

    def __init__(self, options: AMQPOptions, name: str) -> None:
        self.options = options
        self.name = name
        self._pamqp = load_pamqp()
        self._sock: socket.socket | None = None
        self._incoming = bytearray()
        self.frame_max = FRAME_MAX
        self._channel_max = 65535
        #: The open channel's number; 0 when none is open.
        self.channel = 0
        self._last_channel = 0
        #: Encodes basic.publish for the open channel.
        self.encoder: PublishEncoder | None = None
        #: When the broker blocked publishing (a resource alarm), or None.
        self.blocked_since: float | None = None
        #: Called with (delivery tag, multiple, nacked) for each broker confirm.
        self.on_confirm: Callable[[int, bool, bool], None] | None = None
        self._doing = "connecting"

    @property
    def is_open(self) -> bool:
        """Whether the connection is up (as far as this side knows)."""
        return self._sock is not None

    # -- connecting ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect to the first broker that answers, trying ``connection_attempts`` rounds."""
        options = self.options
        failures: list[str] = []
        for attempt in range(options.connection_attempts):
            if attempt:
                time.sleep(options.retry_delay)
            for endpoint in options.endpoints:
                try:
                    self._connect(endpoint)
                    return
                except ChannelError:
                    self._drop()
                    raise
                except (OSError, ConnectionLost) as exc:
                    self._drop()
                    failures.append(f"{endpoint.host}:{endpoint.port}: {exc or type(exc).__name__}")
        raise ConnectionLost(f"cannot connect to the AMQP broker: {'; '.join(failures)}")

    def _connect(self, endpoint: Endpoint) -> None:
        options = self.options
        commands = self._pamqp.commands
        self._doing = f"connecting to {endpoint.host}:{endpoint.port}"
        sock = socket.create_connection(
            (endpoint.host, endpoint.port), timeout=options.socket_timeout
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        if options.tls is not None:
            server_hostname = options.tls.server_hostname or endpoint.host
            self._sock = options.tls.build_context().wrap_socket(
                sock, server_hostname=server_hostname
            )
        deadline = time.monotonic() + max(options.socket_timeout, 1.0) * 2
        self._send(self._pamqp.header.ProtocolHeader().marshal())
        self._expect(0, commands.Connection.Start, deadline)
        self._send_method(
            0,
            commands.Connection.StartOk(
                client_properties={
                    "connection_name": self.name,
                    "product": "evcore",
                    "capabilities": {
                        "authentication_failure_close": True,
                        "connection.blocked": True,
                        "publisher_confirms": True,
                    },
                },
                mechanism="PLAIN",
                response=f"\0{options.username}\0{options.password}",
            ),
        )
        tune = self._expect(0, commands.Connection.Tune, deadline)
        self.frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        self._channel_max = tune.channel_max or 65535
        self._send_method(0, commands.Connection.TuneOk(self._channel_max, self.frame_max, 0))
        self._send_method(0, commands.Connection.Open(virtual_host=options.vhost))
        self._expect(0, commands.Connection.OpenOk, deadline)
        self._doing = "publishing"

    # -- channel work ---------------------------------------------------------------------------

    def open_channel(self) -> None:
        """Open a channel (a new number each time) and make it the current one."""
        commands = self._pamqp.commands
        number = self._last_channel % self._channel_max + 1
        self._last_channel = number
        self._send_method(number, commands.Channel.Open())
        self._expect(number, commands.Channel.OpenOk, self._reply_deadline())
        self.channel = number
        self.encoder = PublishEncoder(number, self.frame_max)

    def declare(self, exchange: Exchange) -> None:
        """Declare ``exchange`` on the current channel and wait for the broker's answer."""
        commands = self._pamqp.commands
        try:
            method = commands.Exchange.Declare(
                exchange=exchange.name,
                exchange_type=exchange.type,
                durable=exchange.durable,
                auto_delete=exchange.auto_delete,
            )
        except ValueError as exc:
            raise ChannelError(
                f"cannot declare exchange {exchange.name!r}: not a valid AMQP exchange name "
                f"(letters, digits, '-', '_', '.', ':'): {exc}"
            ) from None
        self._doing = f"declaring exchange {exchange.name!r}"
        self._send_method(self.channel, method)
        self._expect(self.channel, commands.Exchange.DeclareOk, self._reply_deadline())
        self._doing = "publishing"

    def select_confirms(self) -> None:
        """Put the current channel in publisher-confirm mode."""
        commands = self._pamqp.commands
        self._send_method(self.channel, commands.Confirm.Select())
        self._expect(self.channel, commands.Confirm.SelectOk, self._reply_deadline())

    def publish_frames(self, frames: list[bytes], what: str) -> None:
        """Write encoded messages (whole, in order) in one piece, after taking in what the
        broker sent meanwhile; waits (bounded) while the broker blocks publishing."""
        self._doing = what
        self._take_pending()
        if self.blocked_since is not None:
            self._wait_unblocked()
        timeout = self.options.blocked_connection_timeout
        self._send(b"".join(frames), timeout)

    def wait(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Read from the broker until ``done()`` (checked after every frame) or ``timeout``
        seconds (None: no limit); whether it is done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            got = self._parse()
            if got is not None:
                if not self._handled(*got):
                    self._drop()
                    raise ConnectionLost(
                        f"unexpected {type(got[1]).__name__} from the broker ({self._doing})"
                    )
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._receive(remaining)
        return True

    def encode_method(self, method: Any) -> bytes:
        """A method frame for the current channel, encoded by pamqp."""
        return bytes(self._pamqp.frame.marshal(method, self.channel))

    def encode_content(self, properties: Any, body: bytes) -> list[bytes]:
        """The content header and body frames of a message, encoded by pamqp."""
        pamqp = self._pamqp
        channel = self.channel
        marshal = pamqp.frame.marshal
        frames = [marshal(pamqp.header.ContentHeader(0, len(body), properties), channel)]
        step = self.frame_max - 8
        for start in range(0, len(body), step):
            frames.append(marshal(pamqp.body.ContentBody(body[start : start + step]), channel))
        return frames

    # -- closing --------------------------------------------------------------------------------

    def close_channel(self) -> None:
        """Close the current channel (best effort: the connection may be gone)."""
        number, self.channel, self.encoder = self.channel, 0, None
        if number and self._sock is not None:
            commands = self._pamqp.commands
            self._send_method(number, commands.Channel.Close(200, "closing", 0, 0))
            self._expect(number, commands.Channel.CloseOk, self._reply_deadline())

    def close(self) -> None:
        """Close the connection politely, then the socket; safe to call twice."""
        if self._sock is None:
            return
        commands = self._pamqp.commands
        try:
            self._send_method(0, commands.Connection.Close(200, "closing", 0, 0))
            self._expect(0, commands.Connection.CloseOk, time.monotonic() + 1.0)
        except (ConnectionLost, ChannelError):
            pass
        finally:
            self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self.channel, self.encoder, self.blocked_since = 0, None, None
        self._incoming.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- frames in and out ----------------------------------------------------------------------

    def _reply_deadline(self) -> float:
        return time.monotonic() + max(self.options.socket_timeout, 1.0) * 2

    def _send_method(self, channel: int, method: Any) -> None:
        self._send(self._pamqp.frame.marshal(method, channel))

    def _send(self, data: bytes, timeout: float | None = None) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"the connection to the broker is closed ({self._doing})")
        try:
            sock.settimeout(timeout if timeout is not None else self.options.socket_timeout)
            sock.sendall(data)
        except OSError as exc:
            self._drop()
            detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ConnectionLost(
                f"connection to the broker lost during {self._doing}: "
                f"{detail or type(exc).__name__}"
            ) from None

    def _expect(self, channel: int, kind: type[Any], deadline: float) -> Any:
        """Read until the method ``kind`` arrives on ``channel``; anything else that is not
        handled on the way is a protocol error."""
        while True:
            got = self._read_frame(deadline)
            if got is None:
                self._drop()
                raise ConnectionLost(f"the broker did not answer in time ({self._doing})")
            number, value = got
            if isinstance(value, kind) and number == channel:
                return value
            if not self._handled(number, value):
                self._drop()
                raise ConnectionLost(
                    f"unexpected {type(value).__name__} from the broker ({self._doing})"
                )

    def _take_pending(self) -> None:
        """Handle every whole frame the broker has sent, without waiting."""
        while self._readable():
            self._receive(None)
        while True:
            got = self._parse()
            if got is None:
                return
            self._handled(*got)

    def _readable(self) -> bool:
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"the connection to the broker is closed ({self._doing})")
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return bool(select.select([sock], [], [], 0)[0])

    def _read_frame(self, deadline: float) -> tuple[int, Any] | None:
        """The next frame not handled here, or None at the deadline."""
        while True:
            got = self._parse()
            if got is not None:
                if not self._handled(*got):
                    return got
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining):
                return None

    def _receive(self, timeout: float | None) -> bool:
        """Read what the socket has; False when nothing came within ``timeout``."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"the connection to the broker is closed ({self._doing})")
        try:
            sock.settimeout(timeout)
            data = sock.recv(_READ_SIZE)
        except TimeoutError:
            return False
        except OSError as exc:
            self._drop()
            raise ConnectionLost(
                f"connection to the broker lost during {self._doing}: {exc}"
            ) from None
        if not data:
            self._drop()
            raise ConnectionLost(f"the broker closed the connection during {self._doing}")
        self._incoming += data
        return True

    def _parse(self) -> tuple[int, Any] | None:
        buffer = self._incoming
        if len(buffer) < 7:
            return None
        end = 8 + int.from_bytes(buffer[3:7], "big")
        if len(buffer) < end:
            return None
        try:
            _size, channel, value = self._pamqp.frame.unmarshal(bytes(buffer[:end]))
        except self._pamqp.exceptions.UnmarshalingException as exc:
            self._drop()
            raise ConnectionLost(f"malformed frame from the broker: {exc}") from None
        del buffer[:end]
        return channel, value

    def _handled(self, channel: int, value: Any) -> bool:
        """Deal with what the broker may send at any time; False for anything else."""
        commands = self._pamqp.commands
        if isinstance(value, (commands.Basic.Ack, commands.Basic.Nack)):
            if self.on_confirm is not None:
                nacked = isinstance(value, commands.Basic.Nack)
                self.on_confirm(value.delivery_tag, value.multiple, nacked)
            return True
        if isinstance(value, commands.Connection.Blocked):
            if self.blocked_since is None:
                self.blocked_since = time.monotonic()
            return True
        if isinstance(value, commands.Connection.Unblocked):
            self.blocked_since = None
            return True
        if isinstance(value, commands.Channel.Close):
            self._on_channel_close(channel, value)
        if isinstance(value, commands.Connection.Close):
            self._on_connection_close(value)
        return isinstance(value, self._pamqp.heartbeat.Heartbeat)

    def _on_channel_close(self, channel: int, close: Any) -> None:
        self._send_method(channel, self._pamqp.commands.Channel.CloseOk())
        if channel == self.channel:
            self.channel, self.encoder = 0, None
        raise channel_refusal(close.reply_code, close.reply_text, self._doing)

    def _on_connection_close(self, close: Any) -> None:
        with contextlib.suppress(ConnectionLost):
            self._send_method(0, self._pamqp.commands.Connection.CloseOk())
        self._drop()
        code, text = close.reply_code, close.reply_text
        if code == _ACCESS_REFUSED and self._doing.startswith("connecting"):
            raise ChannelError(f"broker refused the login during {self._doing}: {code} {text}")
        if code == _NOT_ALLOWED:
            raise ChannelError(
                f"broker refused access to the vhost during {self._doing}: {code} {text}"
            )
        if code == _ACCESS_REFUSED:
            raise ChannelError(f"broker refused {self._doing}: {code} {text}")
        raise ConnectionLost(f"broker closed the connection during {self._doing}: {code} {text}")

    def _wait_unblocked(self) -> None:
        limit = self.options.blocked_connection_timeout
        since = self.blocked_since
        assert since is not None
        remaining = None if limit is None else since + limit - time.monotonic()
        if not self.wait(lambda: self.blocked_since is None, remaining):
            self.close()
            raise ConnectionLost(
                f"the broker blocked publishing (a resource alarm) for more than {limit} s"
            )
