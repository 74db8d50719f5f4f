"""Open pika ``BlockingConnection``s from :class:`~evcore_amqp.options.AMQPOptions`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evcore.errors import MissingDependency
from evcore_amqp.failures import translated
from evcore_amqp.options import AMQPOptions, Endpoint

if TYPE_CHECKING:
    import pika  # type: ignore[import-untyped]
    from pika.adapters.blocking_connection import (  # type: ignore[import-untyped]
        BlockingConnection,
    )

__all__ = ["connection_parameters", "describe", "load_pika", "open_connection"]


def load_pika() -> Any:
    """Import pika, or say how to install it."""
    try:
        import pika  # noqa: PLC0415  (imported lazily: an optional dependency)
    except ImportError as exc:
        raise MissingDependency(
            "the AMQP transport needs pika: pip install 'evcore[amqp]'"
        ) from exc
    return pika


def connection_parameters(
    options: AMQPOptions,
    endpoint: Endpoint,
    name: str,
    *,
    heartbeat: int | None,
    blocked_connection_timeout: float | None,
) -> pika.ConnectionParameters:
    """pika's parameters for one broker address; ``name`` becomes the connection name the
    management UI and ``rabbitmqctl list_connections user_provided_name`` show."""
    pika = load_pika()
    ssl_options = None
    if options.tls is not None:
        server_hostname = options.tls.server_hostname or endpoint.host
        ssl_options = pika.SSLOptions(options.tls.build_context(), server_hostname)
    return pika.ConnectionParameters(
        host=endpoint.host,
        port=endpoint.port,
        virtual_host=options.vhost,
        credentials=pika.PlainCredentials(options.username, options.password),
        heartbeat=heartbeat,
        connection_attempts=options.connection_attempts,
        retry_delay=options.retry_delay,
        socket_timeout=options.socket_timeout,
        stack_timeout=max(options.socket_timeout, 1.0) * 2,
        blocked_connection_timeout=blocked_connection_timeout,
        ssl_options=ssl_options,
        client_properties={"connection_name": name, "product": "evcore"},
    )


def open_connection(
    options: AMQPOptions,
    name: str,
    *,
    heartbeat: int | None,
    blocked_connection_timeout: float | None = None,
) -> BlockingConnection:
    """Connect to the first broker that answers; raise ConnectionLost (or ChannelError for a
    refused login or vhost) when none does."""
    pika = load_pika()
    parameters = [
        connection_parameters(
            options,
            endpoint,
            name,
            heartbeat=heartbeat,
            blocked_connection_timeout=blocked_connection_timeout,
        )
        for endpoint in options.endpoints
    ]
    with translated(f"connecting to {describe(options)}"):
        return pika.BlockingConnection(parameters)


def describe(options: AMQPOptions) -> str:
    """Where the transport connects, for messages: hosts and vhost."""
    hosts = ", ".join(f"{e.host}:{e.port}" for e in options.endpoints)
    return f"{hosts} (vhost {options.vhost!r})"
