"""What every ``evcore`` command shares: the URL parameter and one-line error reporting."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from evcore.cli.plain import visible
from evcore.errors import ConnectionLost, EvcoreError

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable read when a command is given no broker URL.
URL_ENVVAR = "EVCORE_URL"


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for printing."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def one_line(text: str) -> str:
    """Collapse a possibly multi-line message onto one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _require_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if not value:
        raise click.UsageError(f"no broker URL: pass URL or set {URL_ENVVAR}", ctx)
    return value


def url_argument() -> Callable[[F], F]:
    """The ``URL`` argument of the commands that talk to a broker (falls back to $EVCORE_URL)."""
    return click.argument(
        "url", envvar=URL_ENVVAR, required=False, metavar="URL", callback=_require_url
    )


def configure_logging(verbosity: int) -> None:
    """Keep evcore's warnings off the screen unless asked for with ``-v`` (``-vv``: debug)."""
    logger = logging.getLogger("evcore")
    if verbosity <= 0:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        return
    logging.basicConfig(
        level=logging.INFO if verbosity == 1 else logging.DEBUG,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class BrokerUnreachable(EvcoreError):
    """The broker could not be reached when a command started."""

    def __init__(self, url: str, cause: ConnectionLost) -> None:
        super().__init__(f"cannot reach the broker at {safe_url(url)}: {cause}")


class EvcoreGroup(click.Group):
    """A click group turning evcore's errors into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EvcoreError as exc:
            message = visible(one_line(str(exc)))
            raise click.ClickException(message or type(exc).__name__) from exc
