"""Read single key presses from the terminal in a background thread.

The terminal is put in cbreak mode (keys arrive one by one, unechoed, while Ctrl-C still
interrupts) and restored on exit, whatever happens. Where stdin is not a terminal, or
``termios`` is missing (Windows), nothing is read and the keys simply never arrive.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

try:
    import termios
    import tty
except ImportError:  # pragma: no cover - Windows
    termios = None  # type: ignore[assignment]
    tty = None  # type: ignore[assignment]

#: How long one wait for a key lasts, so the thread notices it should stop.
POLL_SECONDS = 0.1


class KeyReader:
    """Call ``on_key(char)`` for each key pressed while the context is open."""

    def __init__(self, on_key: Callable[[str], None], stream: Any = None) -> None:
        self.on_key = on_key
        self.stream = stream if stream is not None else sys.stdin
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: list[Any] | None = None
        self._fd = -1

    def _usable(self) -> bool:
        if termios is None:
            return False
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if not os.isatty(fd):
            return False
        self._fd = fd
        return True

    def start(self) -> None:
        """Switch the terminal to cbreak mode and start reading keys."""
        if not self._usable():
            return
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._thread = threading.Thread(target=self._read, name="evcore-keys", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], POLL_SECONDS)
                if not ready:
                    continue
                data = os.read(self._fd, 32)
            except (OSError, ValueError):
                return
            if not data:
                return
            for char in data.decode("utf-8", "replace"):
                self.on_key(char)

    def stop(self) -> None:
        """Stop reading and give the terminal its settings back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def __enter__(self) -> KeyReader:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
