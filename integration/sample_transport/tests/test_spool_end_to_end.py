"""evcore-spool end to end: chosen by its scheme, carrying events between processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from evcore_spool import SpoolTransport

import evcore
from evcore import Dispatcher, Receiver


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"spool://{tmp_path / 'events'}"


def test_connect_finds_the_transport_by_its_scheme(url: str) -> None:
    transport = evcore.connect(url)
    try:
        assert isinstance(transport, SpoolTransport)
        assert transport.driver_type == "spool"
    finally:
        transport.close()
    [info] = [t for t in evcore.available_transports() if t.scheme == "spool"]
    assert info.distribution == "evcore-spool"
    assert info.target == "evcore_spool:SpoolTransport"


def test_dispatcher_to_receiver_in_one_process(url: str) -> None:
    seen: list[dict[str, Any]] = []
    with Receiver(url, handlers={"*": seen.append}) as receiver:
        with Dispatcher(url, hostname="w1@sample") as dispatcher:
            dispatcher.send("worker-online", freq=2.0)
            for n in range(3):
                dispatcher.send("task-received", uuid=f"task-{n}", name="add")
        assert receiver.capture(limit=4, timeout=10) == 4

    assert [e["type"] for e in seen] == ["worker-online"] + ["task-received"] * 3
    assert [e.get("uuid") for e in seen[1:]] == ["task-0", "task-1", "task-2"]
    assert {e["hostname"] for e in seen} == {"w1@sample"}
    clocks = [e["clock"] for e in seen]
    assert clocks == sorted(clocks)


def test_receiver_binding_key_is_applied_by_the_transport(url: str) -> None:
    seen: list[dict[str, Any]] = []
    with Receiver(url, handlers={"*": seen.append}, routing_key="worker.#") as receiver:
        with Dispatcher(url, hostname="w1@sample") as dispatcher:
            dispatcher.send("task-received", uuid="skipped")
            dispatcher.send("worker-heartbeat", freq=2.0)
        assert receiver.capture(limit=1, timeout=10) == 1
        assert receiver.capture(limit=1, timeout=0.5) == 0

    assert [e["type"] for e in seen] == ["worker-heartbeat"]


SENDER = textwrap.dedent(
    """
    import os
    import sys
    from evcore import Dispatcher

    print(os.getpid())
    with Dispatcher(sys.argv[1], hostname="child@sample") as dispatcher:
        for n in range(int(sys.argv[2])):
            dispatcher.send("task-succeeded", uuid=f"task-{n}", result=str(n))
    """
)


def test_events_cross_processes(url: str) -> None:
    seen: list[dict[str, Any]] = []
    with Receiver(url, handlers={"task-succeeded": seen.append}) as receiver:
        child = subprocess.run(
            [sys.executable, "-c", SENDER, url, "25"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert receiver.capture(limit=25, timeout=20) == 25

    assert [e["uuid"] for e in seen] == [f"task-{n}" for n in range(25)]
    assert {e["hostname"] for e in seen} == {"child@sample"}
    assert {e["pid"] for e in seen} == {int(child.stdout)}
