"""The spool directory: exchanges, bindings and queues as plain files, shared by processes.

Layout under the root::

    exchanges/<exchange>          the exchange's type, as text
    bindings/<exchange>/<queue>   the queue's binding keys, one a line
    queues/<queue>/<stamp>.msg    one message, in kombu's JSON envelope
    queues/<queue>/.lock          flock()ed by each subscriber: exclusive or shared
    tmp/                          messages being written, linked into queues when complete

Names are percent-encoded so that any exchange or queue name is a safe file name. Message
files are named by a stamp that grows strictly within a process, so a queue read in name
order gives each publisher's messages in the order it published them.

Every function here raises :class:`OSError` as the operating system does; the transport
maps those onto evcore's errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from evcore.errors import MessageRejected
from evcore.routing import binding_matches
from evcore.transport import DIRECT, FANOUT, IncomingMessage, OutgoingMessage
from evcore_adapter_helpers.envelope import pack, unpack

MESSAGE_SUFFIX = ".msg"
LOCK_NAME = ".lock"

class _Stamps:
    """File name stems that sort after every earlier one made by this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> str:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            stamp = self._last
        return f"{stamp:020d}-{os.getpid()}"


_stamps = _Stamps()


def _stamp_time(file_name: str) -> float:
    """When the message in ``file_name`` was published, in seconds since the epoch."""
    return int(file_name.split("-", 1)[0]) / 1e9


def _routes(exchange_type: str, binding_key: str, routing_key: str) -> bool:
    if exchange_type == FANOUT:
        return True
    if exchange_type == DIRECT:
        return binding_key == routing_key
    return binding_matches(binding_key, routing_key)


class ExchangeTypeMismatch(Exception):
    """An exchange exists with another type than the one asked for."""

    def __init__(self, name: str, existing: str, wanted: str) -> None:
        super().__init__(
            f"exchange {name!r} is already declared with type {existing!r}, "
            f"cannot redeclare it as {wanted!r}"
        )


class QueueLocked(Exception):
    """Another subscriber holds the queue in a way that excludes this one."""


class Spool:
    """One spool directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        """Create the directory layout if it is missing."""
        for part in ("exchanges", "bindings", "queues", "tmp"):
            (self.root / part).mkdir(parents=True, exist_ok=True)

    def _queue_dir(self, queue: str) -> Path:
        return self.root / "queues" / quote(queue, safe="")

    # -- exchanges and bindings ------------------------------------------------------

    def declare_exchange(self, name: str, exchange_type: str) -> None:
        """Record the exchange, or check that it already has ``exchange_type``."""
        path = self.root / "exchanges" / quote(name, safe="")
        try:
            with path.open("x", encoding="utf-8") as file:
                file.write(exchange_type)
            return
        except FileExistsError:
            existing = path.read_text(encoding="utf-8")
        if existing and existing != exchange_type:
            raise ExchangeTypeMismatch(name, existing, exchange_type)

    def bind(self, exchange: str, queue: str, binding_key: str) -> None:
        """Make messages published to ``exchange`` that match ``binding_key`` reach ``queue``."""
        folder = self.root / "bindings" / quote(exchange, safe="")
        folder.mkdir(exist_ok=True)
        path = folder / quote(queue, safe="")
        if binding_key in self._keys(path):
            return
        with path.open("a", encoding="utf-8") as file:
            file.write(binding_key + "\n")

    @staticmethod
    def _keys(path: Path) -> set[str]:
        try:
            return set(path.read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return set()

    def _bound_queues(self, exchange: str) -> list[tuple[str, set[str]]]:
        folder = self.root / "bindings" / quote(exchange, safe="")
        try:
            entries = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        return [(unquote(entry), self._keys(folder / entry)) for entry in entries]

    # -- publishing ------------------------------------------------------------------

    def publish(
        self, exchange: str, exchange_type: str, messages: Iterable[OutgoingMessage]
    ) -> None:
        """Write each message once and link it into every queue it is routed to."""
        bound = self._bound_queues(exchange)
        for message in messages:
            targets = [
                queue
                for queue, keys in bound
                if any(_routes(exchange_type, key, message.routing_key) for key in keys)
            ]
            if not targets:
                continue
            name = _stamps.next() + MESSAGE_SUFFIX
            draft = self.root / "tmp" / f"{uuid.uuid4().hex}{MESSAGE_SUFFIX}"
            draft.write_bytes(pack(exchange, message))
            try:
                for queue in targets:
                    with contextlib.suppress(FileNotFoundError):  # the queue was deleted
                        os.link(draft, self._queue_dir(queue) / name)
            finally:
                draft.unlink()

    # -- queues ----------------------------------------------------------------------

    def open_queue(self, queue: str, exclusive: bool) -> int:
        """Create the queue if needed and lock it for a subscriber; return the lock's fd.

        Raises :class:`QueueLocked` when an exclusive subscriber holds it, or when an
        exclusive one is asked for while anyone does.
        """
        folder = self._queue_dir(queue)
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise QueueLocked(
                f"queue {queue!r} is exclusive to another subscriber"
                if not exclusive
                else f"queue {queue!r} has another subscriber and cannot be exclusive"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close_queue(self, queue: str, fd: int, delete_if_unused: bool) -> None:
        """Release a subscriber's lock; delete the queue and its bindings if asked to and
        nobody else holds it."""
        if delete_if_unused:
            # Upgrading to an exclusive lock succeeds only if no other subscriber holds one.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                delete_if_unused = False
            if delete_if_unused:
                self._delete_queue(queue)
        os.close(fd)

    def _delete_queue(self, queue: str) -> None:
        entry = quote(queue, safe="")
        for binding in (self.root / "bindings").glob(f"*/{entry}"):
            with contextlib.suppress(FileNotFoundError):
                binding.unlink()
        folder = self._queue_dir(queue)
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        folder.rmdir()

    def take(self, queue: str, claim: str, limit: int = 1000) -> list[tuple[float, bytes]]:
        """Claim and read up to ``limit`` waiting messages, oldest first.

        A message is claimed by renaming it, which only one reader can do, then read and
        removed. Returns ``(published_at, envelope)`` pairs.
        """
        folder = self._queue_dir(queue)
        names = sorted(n for n in os.listdir(folder) if n.endswith(MESSAGE_SUFFIX))[:limit]
        taken = []
        for name in names:
            claimed = folder / f".{name}.{claim}"
            try:
                os.rename(folder / name, claimed)
            except FileNotFoundError:  # another reader of a shared queue was first
                continue
            taken.append((_stamp_time(name), claimed.read_bytes()))
            claimed.unlink()
        return taken


def decode(envelope: bytes) -> IncomingMessage | None:
    """The message in a spooled envelope, or None for a file that is not one."""
    try:
        return unpack(envelope)
    except MessageRejected:
        return None
