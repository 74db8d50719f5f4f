"""The live dashboard at ``/``: static files shipped in the package, fed by the JSON API and
``/api/events/stream``. No CDN, no build step: plain HTML, CSS and JavaScript."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

#: Where the page's files live (package data of ``evcore.serve``).
FILES = Path(__file__).with_name("static")


async def page(request: Request) -> Response:
    return FileResponse(FILES / "index.html", media_type="text/html; charset=utf-8")


async def no_icon(request: Request) -> Response:
    return Response(status_code=204)


def dashboard_routes() -> list[BaseRoute]:
    """``/`` and ``/static/...`` (StaticFiles refuses paths outside its directory)."""
    return [
        Route("/", page, methods=["GET"]),
        Route("/favicon.ico", no_icon, methods=["GET"]),
        Mount("/static", StaticFiles(directory=FILES), name="static"),
    ]
