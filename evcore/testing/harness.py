"""Small tools the conformance suite is built from: names, routing, bounded waits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from evcore.routing import routes
from evcore.transport import IncomingMessage, Subscription

__all__ = [
    "Outcome",
    "bodies",
    "body_seen",
    "collect",
    "count_reached",
    "finish_bounded",
    "routes",
    "run_bounded",
    "start_bounded",
    "unique_name",
]

T = TypeVar("T")


def unique_name(prefix: str = "evconf") -> str:
    """A fresh exchange or queue name, so that every check is independent of the others."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def collect(
    subscription: Subscription,
    *,
    until: Callable[[list[IncomingMessage]], bool],
    timeout: float,
    keep: Callable[[IncomingMessage], bool] = lambda message: True,
) -> list[IncomingMessage]:
    """Receive (keeping what ``keep`` accepts) until ``until(kept)`` holds or ``timeout`` passes.

    Returns what was kept either way: the caller's assertion says what was missing.
    """
    kept: list[IncomingMessage] = []
    deadline = time.monotonic() + timeout
    while not until(kept):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        kept.extend(m for m in subscription.receive(timeout=min(remaining, 0.5)) if keep(m))
    return kept


def count_reached(count: int) -> Callable[[list[IncomingMessage]], bool]:
    """An ``until`` for :func:`collect`: at least ``count`` messages kept."""
    return lambda kept: len(kept) >= count


def body_seen(body: bytes) -> Callable[[list[IncomingMessage]], bool]:
    """An ``until`` for :func:`collect`: a message with this body was kept."""
    return lambda kept: any(message.body == body for message in kept)


@dataclass
class Outcome(Generic[T]):
    """What a call run by :func:`run_bounded` did: finished or not, returned or raised."""

    finished: bool = False
    value: T | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


def start_bounded(call: Callable[[], T]) -> Outcome[T]:
    """Start ``call`` in a daemon thread; :func:`finish_bounded` waits for it."""
    outcome: Outcome[T] = Outcome()

    def target() -> None:
        try:
            outcome.value = call()
        except BaseException as exc:
            outcome.error = exc
        outcome.finished = True

    outcome.thread = threading.Thread(target=target, name="evcore-conformance", daemon=True)
    outcome.thread.start()
    return outcome


def finish_bounded(outcome: Outcome[T], limit: float) -> Outcome[T]:
    """Wait up to ``limit`` seconds for a call started by :func:`start_bounded`.

    A call that never returns is left behind in its daemon thread; ``finished`` stays False.
    """
    if outcome.thread is not None:
        outcome.thread.join(limit)
    return outcome


def run_bounded(call: Callable[[], T], limit: float) -> Outcome[T]:
    """Run ``call`` in a daemon thread and wait up to ``limit`` seconds for it."""
    return finish_bounded(start_bounded(call), limit)


def bodies(messages: Sequence[IncomingMessage]) -> list[bytes]:
    """The bodies of ``messages``, in order."""
    return [message.body for message in messages]
