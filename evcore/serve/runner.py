"""Run the application under uvicorn until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from evcore.serve.app import create_app
from evcore.serve.auth import Credentials
from evcore.serve.dashboard import DashboardSource
from evcore.serve.monitor import Monitor
from evcore.serve.protocol import MAX_HEAD_BYTES, RequestDeadlineProtocol

logger = logging.getLogger(__name__)

#: Connections served at once; past it uvicorn answers 503 instead of queueing without bound.
MAX_CONNECTIONS = 200
#: Seconds an idle keep-alive connection is kept.
KEEP_ALIVE = 5
#: Seconds given to open requests at shutdown.
GRACEFUL_SHUTDOWN = 10


def run(
    monitor: Monitor,
    host: str = "127.0.0.1",
    port: int = 5555,
    *,
    credentials: Credentials | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until SIGTERM or SIGINT; the monitor is started and stopped (its state saved)
    by the application's lifespan. ``on_ready(host, port)`` is called once listening."""
    app = create_app(monitor, credentials=credentials)
    config = server_config(app, host, port, log_level)
    server = uvicorn.Server(config)
    asyncio.run(_serve(server, monitor, app.state.dashboard, on_ready))
    if not server.started:
        raise OSError(f"could not listen on {host}:{port}")


def server_config(app: ASGIApp, host: str, port: int, log_level: str) -> uvicorn.Config:
    """How ``evcore serve`` runs uvicorn: bounded connections, request heads and times to
    receive a request (see :mod:`evcore.serve.protocol`), no access log, no proxy headers."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        http=RequestDeadlineProtocol,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        lifespan="on",
    )


async def _serve(
    server: uvicorn.Server,
    monitor: Monitor,
    dashboard: DashboardSource | None,
    on_ready: Callable[[str, int], None] | None,
) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        # Handled here rather than by uvicorn, which re-raises the signal once it has shut
        # down: the process then ends with status 0 after its own cleanup.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _request_exit, server, monitor, dashboard)
        if on_ready is not None:
            host, port = _bound_address(server)
            on_ready(host, port)
    await task


def _request_exit(
    server: uvicorn.Server, monitor: Monitor, dashboard: DashboardSource | None
) -> None:
    """First signal: shut down gracefully; a second one: stop waiting for open requests."""
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True
    # Open event streams would hold up the shutdown.
    monitor.stream.close()
    if dashboard is not None:
        dashboard.closing.set()


def _bound_address(server: uvicorn.Server) -> tuple[str, int]:
    for listener in server.servers:
        for sock in listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                address = sock.getsockname()
                return str(address[0]), int(address[1])
    return server.config.host, server.config.port
