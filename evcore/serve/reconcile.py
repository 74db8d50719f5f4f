"""Fill in the final state of possibly lost tasks from Celery's result backend.

A task marked possibly lost may in fact have finished: its ``task-succeeded`` was lost
with its worker's stream, but the worker stored the result. The backend is read through a
:class:`ResultSource` (the Redis one lives in the Redis adapter, ``evcore_redis.results``);
this module knows Celery's result document (``status``, ``result``, ``traceback``,
``date_done``), not the backend.
"""

from __future__ import annotations

import datetime
import importlib
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from evcore import codec
from evcore.errors import ConfigurationError, MissingDependency
from evcore.registry import scheme_of
from evcore.state import READY_STATES, Task

#: Result documents larger than this are not read (the backend is as hostile as events).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Characters kept of a reconciled result or exception.
MAX_TEXT = 4096
#: Reconciled task ids remembered (for ``/api/task/info``'s ``reconciled`` key).
MAX_REMEMBERED = 10_000
#: Seconds before a lost task whose result was not there is asked for again.
RETRY_AFTER = 30.0


class ResultSource(Protocol):
    """Reads stored result documents by task id."""

    def fetch(self, task_ids: Sequence[str]) -> Mapping[str, bytes]: ...

    def close(self) -> None: ...


def open_results(url: str) -> ResultSource:
    """The result source for a backend URL; only Redis backends are supported."""
    scheme = scheme_of(url)
    if scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"cannot read a {scheme!r} result backend: only redis:// and rediss:// are supported"
        )
    try:
        module = importlib.import_module("evcore_redis.results")
    except ImportError as exc:
        if isinstance(exc, MissingDependency):
            raise
        raise MissingDependency(
            f"reading a Redis result backend needs redis-py: pip install 'evcore[redis]' ({exc})"
        ) from exc
    source: ResultSource = module.RedisResults(url)
    return source


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_TEXT]


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def parse_document(raw: bytes) -> Mapping[str, Any] | None:
    """A result document, or None if it is not one (too large, not JSON, no status)."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        return None
    try:
        document = codec.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("status"), str):
        return None
    return document


def apply_document(task: Task, document: Mapping[str, Any]) -> str | None:
    """Give ``task`` the final state of its result document; the state, or None when the
    document holds no final state."""
    status: str = document["status"]
    if status not in READY_STATES:
        return None
    done = _epoch(document.get("date_done")) or time.time()
    result = document.get("result")
    task.state = status
    task.timestamp = done
    if status == "SUCCESS":
        task.result = _text(result)
        task.succeeded = done
    elif status == "FAILURE":
        if isinstance(result, dict) and "exc_type" in result:
            message = result.get("exc_message")
            if isinstance(message, list | tuple) and len(message) == 1:
                message = message[0]
            task.exception = _text(f"{result['exc_type']}({message!r})")
        else:
            task.exception = _text(result)
        task.traceback = _text(document.get("traceback") or "")
        task.failed = done
    elif status == "REVOKED":
        task.revoked = done
    return status


class Reconciler:
    """Asks the result backend about possibly lost tasks, a bounded batch at a time."""

    def __init__(self, source: ResultSource, batch: int = 100) -> None:
        self.source = source
        self.batch = batch
        #: Tasks given their final state from the backend, by that state.
        self.reconciled: dict[str, int] = {}
        #: Reads of the backend that failed.
        self.errors = 0
        self.remembered: OrderedDict[str, str] = OrderedDict()
        self._asked: dict[str, float] = {}

    def due(self, lost: Mapping[str, str], now: float | None = None) -> list[str]:
        """Lost task ids to ask about now: not asked within ``RETRY_AFTER`` seconds."""
        now = time.time() if now is None else now
        asked = self._asked
        for uuid in [uuid for uuid in asked if uuid not in lost]:
            del asked[uuid]
        chosen = []
        for uuid in lost:
            if now - asked.get(uuid, 0.0) >= RETRY_AFTER:
                asked[uuid] = now
                chosen.append(uuid)
                if len(chosen) >= self.batch:
                    break
        return chosen

    def record(self, uuid: str, status: str) -> None:
        self.reconciled[status] = self.reconciled.get(status, 0) + 1
        self.remembered[uuid] = status
        self._asked.pop(uuid, None)
        while len(self.remembered) > MAX_REMEMBERED:
            self.remembered.popitem(last=False)
