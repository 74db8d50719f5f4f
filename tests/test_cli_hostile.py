"""Event strings are hostile: ``evcore top``'s views and ``evcore dump`` show them as plain text.

Whoever publishes on the broker chooses task names, hostnames, uuids, event types (hence task
states), exception text. None of it may be read as rich markup (a stray ``[/]`` is a markup
error that would end ``evcore top`` with a traceback), open a hyperlink, retitle or clear the
terminal, reorder the line (bidi overrides) or smuggle a NUL: every control character is shown
as its escape instead.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from evcore import Dispatcher
from evcore.cli import cli
from evcore.cli.dumper import Dumper
from evcore.cli.plain import CELL_LIMIT, visible
from evcore.cli.view import ConnectionStatus, Snapshot, TaskRow, WorkerRow, render
from evcore_memory import MemoryBus

HOSTILE = [
    "[/]",
    "[bold red]styled[/bold red]",
    "[link=https://evil.example]click me[/link]",
    "\x1b]0;owned\x07",
    "\x1b[2J\x1b[H",
    "\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\",
    "\x9b2J",  # the one-byte C1 CSI
    "abc\u202edcba",
    "\u2066isolate\u2069\u200f",
    "nul\x00byte\x7fdel",
    "line\nbreak\rreturn\ttab",
    "lone \ud800 surrogate",
    ":cross_mark: :smiley:",
    "x" * 5000,
]

#: What rich itself writes on a colour terminal: Select Graphic Rendition sequences only.
SGR = re.compile(r"\x1b\[[0-9;]*m")


def assert_inert(output: str) -> None:
    """Nothing but printable characters and newlines (and, on a terminal, rich's own SGR)."""
    assert "\x1b]" not in output  # no OSC: title, hyperlink
    leftover = SGR.sub("", output)
    unsafe = sorted({char for char in leftover if not (char.isprintable() or char == "\n")})
    assert not unsafe, f"raw control characters reached the output: {unsafe!r}"


def frame(text: str) -> Snapshot:
    """A snapshot whose every broker-supplied string is ``text``."""
    return Snapshot(
        title=f"evcore top  {text}",
        connection=ConnectionStatus(connected=False, error=text, ever_connected=True),
        events=1,
        rate=0.0,
        tasks_seen=1,
        tasks_kept=1,
        workers=[WorkerRow(text, True, 1.0, 0, 1, (0.1, 0.2, 0.3))],
        tasks=[TaskRow(text, text, text, text, 0.5, 1.0, exception=text)],
    )


def draw(snapshot: Snapshot, terminal: bool, width: int = 400) -> str:
    out = io.StringIO()
    console = Console(
        file=out, force_terminal=terminal, color_system="truecolor" if terminal else None,
        width=width, height=50, legacy_windows=False,
    )
    console.print(render(snapshot))
    return out.getvalue()


@pytest.mark.parametrize("text", HOSTILE, ids=lambda text: repr(text[:24]))
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_views_draw_hostile_strings_as_plain_text(text: str, terminal: bool) -> None:
    output = draw(frame(text), terminal)
    assert_inert(output)
    if not terminal:
        shown = visible(text, CELL_LIMIT)
        worker_line = next(line for line in output.splitlines() if "ONLINE" in line)
        assert worker_line.startswith(shown[:150])


def test_markup_lookalikes_are_shown_literally() -> None:
    output = draw(frame("[link=https://evil.example]click me[/link] [/]"), terminal=True)
    assert "[link=https://evil.example]click me[/link] [/]" in output
    assert "\x1b]8;" not in output


def test_visible_escapes_controls_and_bounds_length() -> None:
    assert visible("w1\x1b]0;t\x07") == "w1\\x1b]0;t\\x07"
    assert visible("a\u202eb") == "a\\u202eb"
    assert visible("\U000e0041") == "\\U000e0041"
    assert visible(None) == "None"
    assert len(visible("\x1b" * 1000, limit=50)) == 50
    assert visible("ok", limit=50) == "ok"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(min_size=1, max_size=300)
    | st.lists(st.sampled_from(HOSTILE[:-1]) | st.text(max_size=20), max_size=6).map("".join)
)
def test_views_and_dump_lines_stay_inert_for_any_string(text: str) -> None:
    assert_inert(draw(frame(text), terminal=True, width=160))
    event = {
        "type": "task-failed", "hostname": text, "uuid": text, "timestamp": 1.7e9,
        "exception": text, text: text,
    }
    line = Dumper().format(event)
    assert line.isprintable()
    assert json.dumps(event, default=str, ensure_ascii=True).isprintable()


# -- through the commands, over the in-memory transport ---------------------------------------


def hostile_cluster(url: str) -> None:
    """A worker and a client whose every string is hostile."""
    host = "w\x1b]0;owned\x07[/]@h\u202e"
    with Dispatcher(url, hostname=host, buffer_group=set()) as worker, Dispatcher(
        url, hostname="client\x1b[2J@h", enabled=False
    ) as client:
        worker.send("worker-online", freq=2.0, active=0, processed=0)
        client.publish("task-sent", {"uuid": "u\x00[/]", "name": "[link=https://e.x]t[/link]"})
        worker.send("task-received", uuid="u\x00[/]", name="[link=https://e.x]t[/link]")
        worker.send("task-failed", uuid="u\x00[/]", exception="ValueError('\x1b[2J[/]')")
        worker.send("task-\x1b[5m", uuid="u2\x9b")  # a custom type: its state is hostile too


@pytest.fixture
def publish_on_subscribe(bus: MemoryBus, bus_url: str) -> Iterator[None]:
    def run() -> None:
        deadline = time.monotonic() + 5
        while not bus._queues and time.monotonic() < deadline:
            time.sleep(0.01)
        hostile_cluster(bus_url)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(timeout=10)


@pytest.mark.usefixtures("publish_on_subscribe")
def test_top_shows_hostile_events_as_text(bus_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["top", bus_url, "--once", "--duration", "1"], color=True, env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    assert_inert(result.output)
    assert "w\\x1b]0;owned\\x07[/]@h\\u202e" in result.output
    assert "ValueError('\\x1b[2J[/]')" in result.output


@pytest.mark.usefixtures("publish_on_subscribe")
@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["text", "json"])
def test_dump_writes_no_control_sequence(bus_url: str, mode: list[str]) -> None:
    result = CliRunner().invoke(
        cli, ["dump", bus_url, *mode, "--limit", "5", "--timeout", "5"], color=True
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("->")]
    assert len(lines) == 5
    assert all(line.isprintable() for line in lines), lines
    if mode:
        assert json.loads(lines[0])["hostname"] == "w\x1b]0;owned\x07[/]@h\u202e"
    else:
        assert lines[0].startswith("w\\x1b]0;owned\\x07[/]@h\\u202e [")
