"""nats-py behind a narrow seam, shared by both NATS adapters.

nats-py is asyncio-only; evcore's core is threads. Each transport owns a :class:`Link`: a
private event loop in a daemon thread of its own (started at the first use, stopped and
joined by ``close()``) and one NATS connection living on it. Threads hand it coroutines with
:meth:`Link.run`, which waits for the result with a bound and maps every failure onto
:mod:`evcore.errors`.

nats-py's own reconnecting is switched off: a publish during its reconnect would sit in its
buffer, invisible to the core's accounting. A lost connection is reported instead
(``ConnectionLost``) and the next call opens a new one, the core backing off in between, as
with every other adapter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any, TypeVar

from evcore.errors import ChannelError, ConnectionLost, MissingDependency, TransportError
from evcore_nats.settings import NatsSettings

__all__ = ["INSTALL_HINT", "Link", "Session", "load_nats", "translate"]

logger = logging.getLogger("evcore.nats")

INSTALL_HINT = "pip install 'evcore[nats]'"

T = TypeVar("T")

#: Extra seconds a call waits for the loop beyond its own timeout before giving up on it.
_GRACE = 2.0
#: How long close() waits for the server to acknowledge and the loop thread to end.
_CLOSE_WAIT = 5.0


def load_nats() -> ModuleType:
    """Import nats-py, or raise MissingDependency with the line that installs it."""
    try:
        import nats  # noqa: PLC0415 - optional dependency, imported on first use
        import nats.errors  # noqa: PLC0415
        import nats.js  # noqa: PLC0415
        import nats.js.errors  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependency(
            f"the NATS transports need nats-py, which is not installed: {INSTALL_HINT}"
        ) from exc
    return nats


def translate(exc: BaseException, doing: str, address: str) -> TransportError:
    """Map a nats-py, asyncio or socket failure onto evcore's errors.

    Refusals that reconnecting cannot cure (credentials, permissions, a subject or header
    the client refuses, a payload over the server's limit, TLS required) are
    :class:`ChannelError`; everything else (refused, reset, timed out, closed) is
    :class:`ConnectionLost`.
    """
    if isinstance(exc, TransportError):
        return exc
    errors = load_nats().errors
    refusals = (
        errors.AuthorizationError,
        errors.BadSubjectError,
        errors.BadHeaderError,
        errors.MaxPayloadError,
        errors.SecureConnRequiredError,
        errors.SecureConnWantedError,
    )
    if isinstance(exc, refusals):
        return ChannelError(f"NATS at {address} refused {doing}: {type(exc).__name__} {exc}")
    if isinstance(exc, errors.Error) and "permissions violation" in str(exc).lower():
        return ChannelError(f"NATS at {address} refused {doing}: {exc}")
    detail = str(exc) or type(exc).__name__
    return ConnectionLost(f"lost the connection to NATS at {address} while {doing}: {detail}")


class _LoopThread:
    """An asyncio event loop running in a daemon thread until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(_CLOSE_WAIT)


class Session:
    """One NATS connection and what happened to it.

    ``lost`` is the reason it ended (``None`` while it lives); watchers (subscriptions)
    are told once, from the loop thread, so a blocked reader wakes up.
    """

    def __init__(self) -> None:
        self.client: Any = None
        self.lost: str | None = None
        #: The last error nats-py reported (why connecting failed, say).
        self.last_error = ""
        #: Permission refusals the server reported since they were last taken.
        self.refusals: list[str] = []
        #: What an adapter keeps per connection (a JetStream context, streams made sure of).
        self.cache: dict[str, Any] = {}
        self._watchers: dict[object, Callable[[str], None]] = {}
        self._lock = threading.Lock()

    def watch(self, key: object, on_lost: Callable[[str], None]) -> None:
        with self._lock:
            if self.lost is None:
                self._watchers[key] = on_lost
                return
        on_lost(self.lost)

    def unwatch(self, key: object) -> None:
        with self._lock:
            self._watchers.pop(key, None)

    def mark_lost(self, reason: str) -> None:
        with self._lock:
            if self.lost is not None:
                return
            self.lost = reason
            watchers, self._watchers = list(self._watchers.values()), {}
        for on_lost in watchers:
            on_lost(reason)

    def take_refusals(self) -> list[str]:
        with self._lock:
            taken, self.refusals = self.refusals, []
        return taken


class Link:
    """A transport's NATS connection on its private loop, opened lazily and again after
    a loss, until :meth:`close`."""

    def __init__(self, settings: NatsSettings, role: str) -> None:
        self.settings = settings
        self.role = role
        self.nats = load_nats()
        self._loop: _LoopThread | None = None
        self._session: Session | None = None
        self._lock = threading.RLock()
        self._closed = False
        #: Connections opened (the first one included).
        self.connections = 0

    @property
    def closed(self) -> bool:
        return self._closed

    # -- running coroutines ---------------------------------------------------------------

    def run(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        doing: str,
        timeout: float,
        session: Session | None = None,
    ) -> T:
        """Run ``make()`` on the loop and return its result, within ``timeout`` seconds.

        Failures become evcore errors; a ConnectionLost also ends ``session`` (so its
        subscriptions learn of it and the next call connects anew).
        """
        loop = self._loop
        if self._closed or loop is None:
            raise ConnectionLost(f"the NATS transport to {self.settings.address} is closed")
        future = self._submit(loop, make)
        if future is None:
            raise ConnectionLost(f"the NATS transport to {self.settings.address} is closed")
        try:
            return future.result(timeout + _GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            error: TransportError = ConnectionLost(
                f"NATS at {self.settings.address} did not answer within {timeout:g} s "
                f"while {doing}"
            )
        except concurrent.futures.CancelledError:
            error = ConnectionLost(f"the NATS transport closed while {doing}")
        except Exception as exc:
            error = translate(exc, doing, self.settings.address)
            if error is not exc:
                error.__cause__ = exc
        if isinstance(error, ConnectionLost) and session is not None:
            self.drop(session, str(error))
        raise error

    def submit(
        self, make: Callable[[], Coroutine[Any, Any, Any]], doing: str
    ) -> concurrent.futures.Future[Any] | None:
        """Run ``make()`` on the loop without waiting for it (acknowledgements); a failure
        is only logged: what it would have done is redone after a reconnect."""
        loop = self._loop
        if self._closed or loop is None:
            return None

        def report(future: concurrent.futures.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is not None:
                logger.debug("NATS %s failed: %s", doing, future.exception())

        future = self._submit(loop, make)
        if future is not None:
            future.add_done_callback(report)
        return future

    @staticmethod
    def _submit(
        loop: _LoopThread, make: Callable[[], Coroutine[Any, Any, T]]
    ) -> concurrent.futures.Future[T] | None:
        """Hand ``make()`` to the loop; None if the loop has just been closed."""
        coroutine = make()
        try:
            return loop.submit(coroutine)
        except RuntimeError:
            coroutine.close()
            return None

    # -- the connection -------------------------------------------------------------------

    def session(self) -> Session:
        """The live connection, connecting first if there is none."""
        with self._lock:
            if self._closed:
                raise ConnectionLost(f"the NATS transport to {self.settings.address} is closed")
            session = self._session
            if session is not None and session.lost is None:
                return session
            if self._loop is None:
                self._loop = _LoopThread(f"evcore-nats-{self.role}")
            session = Session()
            self.run(
                lambda: self._connect(session),
                "connecting",
                self.settings.connect_timeout,
            )
            self._session = session
            self.connections += 1
            return session

    async def _connect(self, session: Session) -> None:
        settings = self.settings

        async def on_error(exc: Exception) -> None:
            text = str(exc) or type(exc).__name__
            session.last_error = text
            if "permissions violation" in text.lower():
                with session._lock:
                    session.refusals.append(text)
            logger.debug("NATS at %s reported: %s", settings.address, text)

        async def on_disconnected() -> None:
            session.mark_lost(f"the connection to NATS at {settings.address} was lost")

        options: dict[str, Any] = {
            "servers": [settings.server_url],
            "name": settings.name or f"evcore-{self.role}",
            "allow_reconnect": False,
            # One attempt per connect() call: nats-py retries the pool until it has tried a
            # server more than max_reconnect_attempts times (0 would mean forever).
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "connect_timeout": settings.connect_timeout,
            "ping_interval": settings.ping_interval,
            "max_outstanding_pings": settings.max_outstanding_pings,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "closed_cb": on_disconnected,
        }
        for key in ("user", "password", "token"):
            value = getattr(settings, key)
            if value is not None:
                options[key] = value
        client = self.nats.NATS()
        try:
            await client.connect(**options)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(exc, self.nats.errors.NoServersError) and session.last_error:
                raise ConnectionLost(
                    f"cannot connect to NATS at {settings.address}: {session.last_error}"
                ) from exc
            raise
        session.client = client

    def drop(self, session: Session, reason: str) -> None:
        """End ``session`` (its watchers are told) and close its client in the background."""
        session.mark_lost(reason)
        with self._lock:
            if self._session is session:
                self._session = None
        loop = self._loop
        client = session.client
        if client is not None and loop is not None and not self._closed:
            self._submit(loop, lambda: _close_quietly(client))

    def close(self) -> None:
        """Close the connection and stop the loop thread; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session, self._session = self._session, None
            loop, self._loop = self._loop, None
        if loop is None:
            return
        if session is not None and session.client is not None:
            client = session.client
            future = self._submit(loop, lambda: _close_quietly(client))
            if future is not None:
                with contextlib.suppress(Exception):
                    future.result(_CLOSE_WAIT)
            session.mark_lost("the NATS transport was closed")
        loop.stop()


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), _CLOSE_WAIT)
