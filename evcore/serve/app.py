"""The ASGI application of ``evcore serve`` (Starlette), separate from the process that
runs it, so tests drive it in-process and other front ends can extend it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evcore import __version__
from evcore.serve.api import TaskAPI, json_response
from evcore.serve.auth import Credentials, RequireCredentials
from evcore.serve.dashboard import DashboardSource, dashboard_routes
from evcore.serve.metrics import RenderedMetrics
from evcore.serve.monitor import Monitor
from evcore.serve.stream import GROUPS

#: Longest query string accepted; longer ones are answered 414.
MAX_QUERY_BYTES = 4096
#: Sent with every answer: the dashboard loads only its own files and talks only to this
#: service; nothing may run inline, nothing may frame it.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The endpoints listed at ``/api``.
ENDPOINTS = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/tasks",
    "/api/task/info/{uuid}",
    "/api/task/types",
    "/api/workers",
    "/api/evcore",
    "/api/events/stream",
    "/api/stats/rates",
    "/api/stats/tasks",
    "/ (the dashboard)",
)


class Guard:
    """ASGI middleware: refuses oversized query strings and adds defensive headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            response = json_response({"error": "query string too long"}, 414)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"cache-control", b"no-store"))
                headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY))
                headers.append((b"referrer-policy", b"no-referrer"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    monitor: Monitor,
    *,
    credentials: Credentials | None = None,
    routes: Sequence[BaseRoute] = (),
    manage_monitor: bool = True,
    dashboard: bool = True,
) -> Starlette:
    """The application serving ``monitor``.

    ``routes`` are added before the built-in ones (another page at ``/``, say); with
    ``dashboard`` the bundled live dashboard is served at ``/`` and ``/static``. With
    ``manage_monitor`` the application's lifespan starts and stops the monitor (when it
    has a URL); tests feeding the monitor themselves pass False.
    """
    api = TaskAPI(monitor)
    source = DashboardSource(monitor) if dashboard else None
    rendered = RenderedMetrics(monitor.metrics)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        ready, detail = monitor.readiness()
        return json_response(detail, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(await rendered.scrape(), media_type=CONTENT_TYPE_LATEST)

    async def stream(request: Request) -> Response:
        groups = frozenset(request.query_params.get("groups", "task,worker").split(","))
        if not groups or not groups <= GROUPS:
            return json_response(
                {"error": f"groups must be among {', '.join(sorted(GROUPS))}"}, 400
            )
        subscriber = monitor.stream.subscribe(groups)
        if subscriber is None:
            return json_response({"error": "too many streaming clients"}, 503)
        return StreamingResponse(
            monitor.stream.frames(subscriber),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    async def index(request: Request) -> Response:
        return json_response({"service": "evcore serve", "endpoints": list(ENDPOINTS)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_monitor and monitor.url is not None:
            await monitor.start()
        refresher = asyncio.create_task(rendered.refresh(), name="evcore-serve-metrics")
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            if manage_monitor and monitor.url is not None:
                await monitor.stop()

    middleware = [Middleware(Guard)]
    if credentials is not None:
        middleware.append(Middleware(RequireCredentials, credentials=credentials))
    app = Starlette(
        routes=[
            *routes,
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *api.routes(),
            Route("/api/events/stream", stream, methods=["GET"]),
            Route("/api", index, methods=["GET"]),
            *(dashboard_routes(source) if source is not None else ()),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.monitor = monitor
    app.state.metrics = rendered
    app.state.dashboard = source
    return app
