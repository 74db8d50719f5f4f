"""Helpers of the AMQP integration tests: a broker probe, exchange clean-up, connection
kills by client-provided name, and a TCP proxy of the test's own."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pika

from evcore.transport import Exchange, IncomingMessage, QueueOptions
from evcore_amqp import AMQPSubscription, AMQPTransport, parse_url
from evcore_amqp.connection import connection_parameters


def probe(url: str) -> pika.BlockingConnection:
    """A plain pika connection, for checks behind the transport's back."""
    options = parse_url(url)
    return pika.BlockingConnection(
        connection_parameters(
            options, options.endpoints[0], "evcore-test-probe",
            heartbeat=None, blocked_connection_timeout=None,
        )
    )


def delete_exchanges(url: str, names: set[str]) -> None:
    """Delete the test's exchanges (each on a fresh channel: a missing one closes it)."""
    if not names:
        return
    connection = probe(url)
    try:
        for name in names:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.exchange_delete(name)
            if channel.is_open:
                channel.close()
    finally:
        connection.close()


class RecordingTransport(AMQPTransport):
    """An AMQPTransport that remembers the exchanges it declared, for clean-up."""

    declared: ClassVar[set[str]] = set()

    def publish(self, exchange: Exchange, messages: Any) -> None:
        RecordingTransport.declared.add(exchange.name)
        super().publish(exchange, messages)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> AMQPSubscription:
        RecordingTransport.declared.add(exchange.name)
        return super().subscribe(exchange, binding_key, queue)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def receive_n(
    subscription: AMQPSubscription, count: int, timeout: float = 10.0
) -> list[IncomingMessage]:
    """Receive until ``count`` messages arrived or ``timeout`` seconds passed."""
    got: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(subscription.receive(0.2))
    return got


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl against the test broker (inside its container when there is one)."""
    command = shlex.split(os.environ.get("EVCORE_RABBITMQCTL", "rabbitmqctl"))
    result = subprocess.run(
        [*command, "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def connection_pids(name: str) -> list[str]:
    """Erlang pids of the broker's connections whose client-provided name is ``name``."""
    out = rabbitmqctl("--no-table-headers", "list_connections", "pid", "client_properties")
    marker = f'{{"connection_name","{name}"}}'
    return [line.split("\t", 1)[0] for line in out.splitlines() if marker in line]


def close_connections(name: str, timeout: float = 15.0) -> int:
    """Close, from the broker side, this test's connections named ``name``; how many."""
    pids: list[str] = []
    wait_for(lambda: bool(pids.extend(connection_pids(name)) or pids), timeout, 0.5)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "evcore test: broker-side close")
    return len(pids)


def queue_info(name: str) -> dict[str, Any] | None:
    """What the broker says about queue ``name``: its flags, ``arguments`` (name to value)
    and ``argument_types`` (name to AMQP field type), or None."""
    out = rabbitmqctl(
        "list_queues", "name", "arguments", "exclusive", "auto_delete", "durable",
        "--formatter", "json",
    )
    for row in json.loads(out or "[]"):
        if row["name"] == name:
            info = dict(row)
            info["arguments"] = {key: value for key, _, value in row["arguments"]}
            info["argument_types"] = {key: kind for key, kind, _ in row["arguments"]}
            return info
    return None


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of the broker, which a test can cut and restore.

    ``cut()`` closes every proxied connection on both sides (the broker sees its client go,
    the client sees the broker go) and refuses new ones until ``restore()``.
    ``drop_clients()`` closes only the client sides and keeps the broker sides open, as a
    network failure that the client notices before the broker does; ``release()`` then
    closes the broker sides too.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop notices close()
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._accepting = True
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def url(self, amqp_url: str) -> str:
        """``amqp_url`` pointed at the proxy."""
        parts = parse_url(amqp_url)
        return f"amqp://{parts.username}:{parts.password}@127.0.0.1:{self.port}//"

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                accepting = self._accepting and not self._stopped
            if not accepting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            held = set(self._held)
        for sock in (source, sink):
            if sock not in held:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _take_pairs(self) -> list[tuple[socket.socket, socket.socket]]:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        return pairs

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        """Drop every proxied connection, both sides, and refuse new ones."""
        with self._lock:
            self._accepting = False
        for client, upstream in self._take_pairs():
            self._close(client)
            self._close(upstream)
        self.release()

    def drop_clients(self) -> None:
        """Close the client sides only; the broker keeps its connections until release()."""
        pairs = self._take_pairs()
        with self._lock:
            self._held.extend(upstream for _, upstream in pairs)
        for client, _ in pairs:
            self._close(client)

    def release(self) -> None:
        """Close the broker sides kept by drop_clients()."""
        with self._lock:
            held, self._held = self._held, []
        for upstream in held:
            self._close(upstream)

    def restore(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._accepting = True

    def close(self) -> None:
        self._stopped = True
        self._thread.join(5)
        self.cut()
        self._listener.close()


@contextlib.contextmanager
def tcp_proxy(target_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the broker of ``target_url``, closed at the end."""
    endpoint = parse_url(target_url).endpoints[0]
    proxy = TcpProxy(endpoint.port, endpoint.host)
    try:
        yield proxy
    finally:
        proxy.close()
