"""``evcore demo`` / ``evcore top`` in a real pseudo-terminal: the live view, keys, resize."""

from __future__ import annotations

import os
import re
import socket
import sys
import termios
import time
from collections.abc import Iterator

import pexpect
import pytest

from evcore.cli.keys import KeyReader

EVCORE = os.path.join(os.path.dirname(sys.executable), "evcore")
TIMEOUT = 20


def spawn(*args: str, rows: int = 30, cols: int = 120) -> pexpect.spawn:
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "", "LINES": ""}
    env.pop("COLUMNS")
    env.pop("LINES")
    return pexpect.spawn(
        EVCORE, list(args), dimensions=(rows, cols), env=env, encoding="utf-8", timeout=TIMEOUT
    )


@pytest.fixture
def children() -> Iterator[list[pexpect.spawn]]:
    spawned: list[pexpect.spawn] = []
    yield spawned
    for child in spawned:
        if child.isalive():
            child.terminate(force=True)


def test_demo_live_view_quits_on_q(children: list[pexpect.spawn]) -> None:
    child = spawn("demo", "--seed", "1", "--rate", "10")
    children.append(child)
    child.expect("\x1b\\[\\?1049h")  # switched to the alternate screen
    child.expect("demo-worker1@")
    child.expect("ONLINE")
    child.expect("SUCCESS")
    child.expect("q quit")
    child.send("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "\x1b[?1049l" in child.before  # the normal screen is back
    assert "-> published" in child.before


def _frame_width(child: pexpect.spawn) -> int:
    """Read up to the end of the next frame; the width of its widest line."""
    child.expect("q quit")
    return max(len(line.rstrip()) for line in _plain(child.before).splitlines() or [""])


def test_demo_survives_a_resize(children: list[pexpect.spawn]) -> None:
    child = spawn("demo", "--seed", "2", "--rate", "10", rows=30, cols=120)
    children.append(child)
    child.expect("SUCCESS")
    assert _frame_width(child) > 70
    child.setwinsize(16, 70)
    # Frames already on their way are drawn for the old size; the next ones fit the new one.
    widths = [_frame_width(child) for _ in range(6)]
    assert min(widths) <= 70
    assert widths[-1] <= 70
    assert child.isalive()
    child.send("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_quits_cleanly(children: list[pexpect.spawn]) -> None:
    child = spawn("demo", "--seed", "3")
    children.append(child)
    child.expect("demo-worker1@")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


def test_top_shows_the_connection_retrying_and_quits(children: list[pexpect.spawn]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child = spawn("top", "--wait", f"redis://127.0.0.1:{port}/0")
    children.append(child)
    child.expect("connecting, retrying")
    child.expect("Connection refused")
    child.send("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_duration_ends_the_live_view(children: list[pexpect.spawn]) -> None:
    child = spawn("demo", "--duration", "2", "--seed", "4")
    children.append(child)
    child.expect("demo-worker1@")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_key_reader_uses_cbreak_and_restores_the_terminal() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        keys: list[str] = []
        with os.fdopen(os.dup(slave), "rb", buffering=0) as stream, KeyReader(
            keys.append, stream
        ):
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON  # keys arrive one by one
            assert not during[3] & termios.ECHO
            assert during[3] & termios.ISIG  # Ctrl-C still interrupts
            os.write(master, b"xq")
            deadline = time.monotonic() + 5
            while len(keys) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert keys == ["x", "q"]
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_key_reader_ignores_a_stream_that_is_not_a_terminal() -> None:
    read, write = os.pipe()
    try:
        with os.fdopen(read, "rb", buffering=0) as stream, KeyReader(print, stream) as reader:
            assert reader._thread is None
    finally:
        os.close(write)


def _plain(text: str) -> str:
    """Text with the terminal's escape sequences removed (a cursor move starts a line)."""
    text = re.sub(r"\x1b\[[0-9;]*H", "\n", text)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]", "", text).replace("\r", "")
