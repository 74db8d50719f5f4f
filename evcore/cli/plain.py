"""Strings from the broker made safe for a terminal: plain text, every control visible.

Everything an event carries (task names, hostnames, uuids, states, exception text) is
written by whoever publishes on the broker. Before it reaches the screen, :func:`visible`
replaces each character that is not printable (C0 and C1 controls such as ESC, DEL, NUL,
bidirectional overrides and other format characters, line and paragraph separators,
surrogates, private-use and unassigned code points) by its Python escape (``\\x1b``,
``\\u202e``), so no escape sequence, hyperlink or reordering reaches the terminal. The
views then wrap the result in :class:`rich.text.Text`, which never interprets markup.
"""

from __future__ import annotations

from typing import Any

#: Characters kept of one string shown in the monitor's tables (after escaping).
CELL_LIMIT = 200

ELLIPSIS = "…"


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(value: Any, limit: int | None = None) -> str:
    """``value`` as one line of printable text, cut to ``limit`` characters with ``…``.

    >>> visible("w1@host\\x1b]0;owned\\x07")
    'w1@host\\\\x1b]0;owned\\\\x07'
    >>> visible("a" * 10, limit=5)
    'aaaa…'
    """
    text = value if isinstance(value, str) else str(value)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]  # escaping only lengthens: no need to look further
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escape(char) for char in text)
    if limit is not None and (cut or len(text) > limit):
        text = text[: limit - 1] + ELLIPSIS
    return text
