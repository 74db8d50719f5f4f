"""Helpers of the AMQP integration tests: a broker probe, exchange clean-up, connection
kills by client-provided name, and a TCP proxy of the test's own."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import _net
import pika
import pytest
from _net import wait_for

from evcore.transport import Exchange, IncomingMessage, QueueOptions
from evcore_amqp import AMQPSubscription, AMQPTransport, parse_url
from evcore_amqp.connection import connection_parameters
from evcore_amqp.fastpath import TESTED_PIKA_VERSIONS

#: The adapter's two paths (public pika API, and the opt-in fast path), as keyword options
#: for ``AMQPTransport.from_url``; tests that publish or consume run on both.
ADAPTER_PATHS = [
    pytest.param({}, id="public"),
    pytest.param(
        {"fast_path": True},
        id="fast_path",
        marks=pytest.mark.skipif(
            pika.__version__ not in TESTED_PIKA_VERSIONS,
            reason=f"the fast path is off on pika {pika.__version__} (not a tested version)",
        ),
    ),
]


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


class TcpProxy(_net.TcpProxy):
    """The shared proxy (``_net.TcpProxy``), with the AMQP URL that goes through it."""

    def url(self, amqp_url: str) -> str:
        """``amqp_url`` pointed at the proxy."""
        parts = parse_url(amqp_url)
        return f"amqp://{parts.username}:{parts.password}@127.0.0.1:{self.port}//"


@contextlib.contextmanager
def tcp_proxy(target_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the broker of ``target_url``, closed at the end."""
    endpoint = parse_url(target_url).endpoints[0]
    proxy = TcpProxy(endpoint.port, endpoint.host)
    try:
        yield proxy
    finally:
        proxy.close()
