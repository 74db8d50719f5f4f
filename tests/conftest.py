"""Shared fixtures for the unit tests: every test gets buses of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from _fake_transports import FakeRedisTransport, FakeSQLTransport

from evcore.registry import register_transport, unregister_transport
from evcore_memory import MemoryBus, get_bus


@pytest.fixture(scope="session", autouse=True)
def fake_transports() -> Iterator[None]:
    """``fakesql://`` and ``fakeredis://``, registered in this process for the session."""
    schemes = {"fakesql": FakeSQLTransport, "fakeredis": FakeRedisTransport}
    for scheme, factory in schemes.items():
        register_transport(scheme, factory)
    yield
    for scheme in schemes:
        unregister_transport(scheme)


@pytest.fixture
def bus_url() -> str:
    """A ``memory://`` URL naming a bus no other test uses."""
    return f"memory://test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bus(bus_url: str) -> Iterator[MemoryBus]:
    """The bus behind ``bus_url``, reset afterwards."""
    memory_bus = get_bus(bus_url.removeprefix("memory://"))
    yield memory_bus
    memory_bus.reset()
