"""Checkpoint files: a State snapshot with the stream positions and sequence lanes it reflects.

Written atomically (a temporary file in the same directory, flushed and fsynced, renamed
over the old one, then the directory fsynced), so that a process killed at any moment
leaves either the previous checkpoint or the new one, never a torn file::

    {"format": "evcore.checkpoint", "version": 1, "saved_at": 1700000000.0,
     "positions": {"0": "1700000000000-3", ...}, "sequences": {"<boot>/0": 42, ...},
     "seen_ids": [["<relay event key>", 0], ...],
     "state": {... evcore.state snapshot ...}}
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evcore.codec import dumps, loads
from evcore.transport import EARLIEST, Start

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "is_checkpoint",
    "load_checkpoint",
    "parse_checkpoint",
    "resume_from",
    "save_checkpoint",
]

FORMAT = "evcore.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not an evcore checkpoint, or of an unknown version."""


@dataclass
class Checkpoint:
    """What a resumable monitor saves: its State and where in each partition it stands."""

    state: Mapping[str, Any]
    positions: dict[int, str] = field(default_factory=dict)
    #: The receiver's sequence lanes (``Receiver.sequences()``): JSON-serialisable.
    sequences: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0
    #: The most recent relay event keys with their partitions (``Receiver.seen_ids``).
    seen_ids: list[tuple[str, int | None]] = field(default_factory=list)


def resume_from(
    partitions: Iterable[int], saved: Mapping[int, str], start: Start | Mapping[int, str]
) -> dict[int, str]:
    """Where to read each of ``partitions`` (an ``on_assigned`` answer): just after the
    saved position where there is one, else ``start`` (a mapping: its position, else the
    earliest)."""
    chosen = {}
    for partition in partitions:
        if partition in saved:
            chosen[partition] = saved[partition]
        elif isinstance(start, Mapping):
            chosen[partition] = start.get(partition, EARLIEST)
        else:
            chosen[partition] = start
    return chosen


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically and durably."""
    target = Path(path)
    data = dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "saved_at": checkpoint.saved_at or time.time(),
            "positions": {str(p): position for p, position in checkpoint.positions.items()},
            "sequences": checkpoint.sequences,
            "seen_ids": checkpoint.seen_ids,
            "state": checkpoint.state,
        }
    )
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet; raises
    :class:`CheckpointError` for a file that is not one."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a checkpoint: {exc}") from None
    return parse_checkpoint(data, str(path))


def is_checkpoint(data: Any) -> bool:
    """Whether decoded JSON claims to be a checkpoint (of any version)."""
    return isinstance(data, dict) and data.get("format") == FORMAT


def parse_checkpoint(data: Any, source: str = "checkpoint") -> Checkpoint:
    """A checkpoint from its decoded JSON; :class:`CheckpointError` names ``source`` when
    it is not one."""
    if not is_checkpoint(data):
        raise CheckpointError(f"{source} is not an evcore checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{source}: unsupported checkpoint version {data.get('version')!r}")
    try:
        positions = {int(p): str(position) for p, position in data["positions"].items()}
        sequences = dict(data["sequences"])
        seen_ids = [
            (str(key), None if partition is None else int(partition))
            for key, partition in data.get("seen_ids", [])
        ]
        state = data["state"]
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: malformed checkpoint: {exc}") from None
    saved_at = float(data.get("saved_at", 0.0))
    return Checkpoint(state, positions, sequences, saved_at, seen_ids)
