"""evcore's pytest plugin: an isolated in-memory bus per test, and assertions on its events.

Opt in from a ``conftest.py`` (see ``docs/testing-with-evcore.md`` for why it is not loaded
automatically)::

    pytest_plugins = ["evcore.pytest_plugin"]

Fixtures: ``evcore_test_bus``, ``evcore_bus_url``, ``evcore_bus``, ``evcore_dispatcher``,
``evcore_receiver``, ``evcore_recorder``, ``evcore_state``, and for Celery (imported only
when used) ``evcore_celery_app`` and ``evcore_celery_worker``.
"""

from __future__ import annotations

import importlib
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from evcore import _live
from evcore.dispatcher import Dispatcher
from evcore.receiver import Receiver
from evcore.recording import EventRecorder, LiveState
from evcore_memory import MemoryBus, MemoryTransport, get_bus

__all__ = ["EvcoreLeakWarning", "celery_test_worker", "close_leaked", "unique_bus_url"]

#: Hostname of the ``evcore_dispatcher`` fixture's events.
TEST_HOSTNAME = "pytest@evcore"


class EvcoreLeakWarning(UserWarning):
    """A test left a Dispatcher or Receiver on its bus open; the plugin closed it."""


def unique_bus_url(prefix: str = "pytest") -> str:
    """A ``memory://`` URL no other test uses (the xdist worker's name is part of it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"memory://{prefix}-{worker}-{uuid.uuid4().hex}"


def _open_on(bus: MemoryBus) -> list[Dispatcher | Receiver]:
    """The dispatchers and receivers still open on ``bus``."""
    found: list[Dispatcher | Receiver] = []
    for endpoint in _live.alive():
        if isinstance(endpoint, Dispatcher | Receiver) and not endpoint.closed:
            transport = endpoint.transport
            if isinstance(transport, MemoryTransport) and transport.bus is bus:
                found.append(endpoint)
    return found


def close_leaked(bus: MemoryBus, where: str) -> list[str]:
    """Close what was left open on ``bus``, warning about each; return their reprs."""
    leaked = _open_on(bus)
    for endpoint in leaked:
        endpoint.close()
        warnings.warn(
            EvcoreLeakWarning(f"{where} left {endpoint!r} open on memory://{bus.name}; closed it"),
            stacklevel=2,
        )
    return [repr(endpoint) for endpoint in leaked]


@dataclass
class TestBus:
    """What the plugin sets up for one test: a bus and the recorder listening to it."""

    url: str
    bus: MemoryBus
    recorder: EventRecorder


@pytest.fixture
def evcore_test_bus(request: pytest.FixtureRequest) -> Iterator[TestBus]:
    """The test's bus, recorded from its creation, so an event published before any other
    fixture is set up is recorded too. At teardown, dispatchers and receivers left open on
    it are closed with an :class:`EvcoreLeakWarning`."""
    url = unique_bus_url()
    bus = get_bus(url.removeprefix("memory://"))
    recorder = EventRecorder(url)
    yield TestBus(url, bus, recorder)
    recorder.close()
    close_leaked(bus, request.node.nodeid)
    bus.reset()


@pytest.fixture
def evcore_bus_url(evcore_test_bus: TestBus) -> str:
    """A ``memory://`` URL of a bus of this test's own, to point code under test at."""
    return evcore_test_bus.url


@pytest.fixture
def evcore_bus(evcore_test_bus: TestBus) -> MemoryBus:
    """The :class:`~evcore_memory.MemoryBus` behind ``evcore_bus_url`` (to take it
    offline with ``set_offline()``, for example)."""
    return evcore_test_bus.bus


@pytest.fixture
def evcore_recorder(evcore_test_bus: TestBus) -> EventRecorder:
    """Every event published on the test's bus since the bus was made."""
    return evcore_test_bus.recorder


@pytest.fixture
def evcore_dispatcher(evcore_bus_url: str) -> Iterator[Dispatcher]:
    """A :class:`~evcore.Dispatcher` on the test's bus, sending each event at once
    (hostname ``pytest@evcore``)."""
    with Dispatcher(evcore_bus_url, hostname=TEST_HOSTNAME) as dispatcher:
        yield dispatcher


@pytest.fixture
def evcore_receiver(evcore_bus_url: str) -> Iterator[Receiver]:
    """A :class:`~evcore.Receiver` on the test's bus, subscribed before the test starts;
    add handlers with ``evcore_receiver.handlers[type] = fn``."""
    with Receiver(evcore_bus_url, queue_ttl=None, queue_expires=None) as receiver:
        yield receiver


@pytest.fixture
def evcore_state(evcore_recorder: EventRecorder) -> LiveState:
    """The cluster as a :class:`~evcore.state.State` rebuilt from the recorded events,
    current whenever read."""
    return LiveState(evcore_recorder)


# -- Celery: imported only by the fixtures that need it -----------------------------------


def configure_celery_app(app: Any, events_url: str) -> Any:
    """Point a Celery app (made with ``events="evcore.celery:Events"``) at Celery's
    in-memory broker and result backend, with every task event sent to ``events_url``."""
    from evcore.celery import Events  # noqa: PLC0415 - Celery only when asked for

    if not isinstance(app.events, Events):
        raise TypeError(
            f"{app!r} does not use evcore's events class: create it with "
            "Celery(..., events='evcore.celery:Events')"
        )
    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        broker_transport_options={"polling_interval": 0.01},
        evcore_events_url=events_url,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


@contextmanager
def celery_test_worker(app: Any, events_url: str, **options: Any) -> Iterator[Any]:
    """Run Celery's in-process test worker (``celery.contrib.testing``) for ``app`` with
    its events sent to ``events_url``; ``options`` go to ``start_worker``."""
    configure_celery_app(app, events_url)  # first: names the extra when Celery is missing
    from celery.contrib.testing.worker import start_worker  # noqa: PLC0415

    options = {"pool": "solo", "perform_ping_check": False, "loglevel": "WARNING", **options}
    try:
        with start_worker(app, **options) as worker:
            yield worker
    finally:
        app.events.close()


@pytest.fixture
def evcore_celery_app() -> Any:
    """The Celery app the worker fixture runs: an empty one. Override this fixture to
    return your own app, created with ``events="evcore.celery:Events"``."""
    importlib.import_module("evcore.celery")  # names the extra when Celery is missing
    from celery import Celery  # noqa: PLC0415

    return Celery(f"evcore-test-{uuid.uuid4().hex[:8]}", events="evcore.celery:Events")


@pytest.fixture
def evcore_celery_worker(
    evcore_celery_app: Any, evcore_bus_url: str, evcore_recorder: EventRecorder
) -> Iterator[Any]:
    """Celery's test worker running ``evcore_celery_app`` in this process, its events on
    the test's bus: ``task.delay()``, then assert with ``evcore_recorder``."""
    with celery_test_worker(evcore_celery_app, evcore_bus_url) as worker:
        yield worker
