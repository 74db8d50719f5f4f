"""The REST API: Flower 2.2's task endpoints (same parameters, same JSON) and evcore's
``/api/workers`` built from events."""

from __future__ import annotations

import datetime
import heapq
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from evcore import codec
from evcore.serve.monitor import Monitor
from evcore.serve.rates import task_stats
from evcore.serve.recent import RecentIndex
from evcore.state import Task, TaskSet
from evcore.state.liveness import liveness

#: Flower's ``sort_by`` keys.
SORT_KEYS = frozenset({"name", "state", "received", "started"})
#: The most tasks one ``/api/tasks`` answer holds (Flower has no bound).
MAX_LIMIT = 10_000
#: Longest accepted value of a query parameter.
MAX_PARAMETER = 512
_NUMERIC_SORT = frozenset({"received", "started"})


class BadRequest(Exception):
    """A query parameter that cannot be used; answered with 400 and the message."""


def json_response(data: Any, status: int = 200) -> Response:
    """JSON as Flower writes it, encoded with evcore's codec (non-finite numbers and
    non-JSON values made safe)."""
    return Response(
        codec.dumps(data),
        status_code=status,
        media_type="application/json; charset=UTF-8",
    )


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if len(value) > MAX_PARAMETER:
        raise BadRequest(f"the {name} parameter is longer than {MAX_PARAMETER} characters")
    return value


def _integer(request: Request, name: str, default: int | None) -> int | None:
    value = _text(request, name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"the {name} parameter must be an integer") from None


def _received_bound(value: str | None) -> float | None:
    """Flower's ``received_start``/``received_end``: ``YYYY-MM-DD HH:MM`` in local time."""
    if not value:
        return None
    try:
        parsed = datetime.datetime.strptime(value, "%Y-%m-%d %H:%M")
        return time.mktime(parsed.timetuple())
    except (ValueError, OverflowError):
        raise BadRequest(
            "Invalid received_start or received_end, expected format 'YYYY-MM-DD HH:MM'"
        ) from None


def _fold(value: Any) -> str:
    if value is None:
        return ""
    return (value if value.__class__ is str else str(value)).casefold()


def _all(value: str | None) -> str | None:
    return None if value is None or value == "All" else value


def task_dict(
    task: Task, lost: Mapping[str, str], reconciled: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Flower's JSON of a task (Celery's ``as_dict`` with the worker as its hostname),
    plus ``possibly_lost`` (the reason) when evcore marked the task and ``reconciled``
    (true) when its final state came from the result backend."""
    data = task.as_dict()
    reason = lost.get(task.uuid)
    if reason is not None:
        data["possibly_lost"] = reason
    if reconciled and task.uuid in reconciled:
        data["reconciled"] = True
    return data


def _sort_key(sort_by: str) -> Callable[[Task], tuple[bool, Any, str]]:
    numeric = sort_by in _NUMERIC_SORT

    def key(task: Task) -> tuple[bool, Any, str]:
        value = getattr(task, sort_by, None)
        if value is None:
            return False, "", str(task.uuid)
        if numeric:
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = 0.0
        else:
            value = _fold(value)
        return True, value, str(task.uuid)

    return key


def _newest_key(task: Task) -> tuple[float, str]:
    stamp = task.timestamp
    if stamp.__class__ is not float and stamp.__class__ is not int:
        stamp = 0.0
    return stamp, str(task.uuid)


def _matches_search(task: Task, terms: list[tuple[str | None, str]]) -> bool:
    for field, value in terms:
        if field is None:
            text = " ".join(
                _fold(part)
                for part in (
                    task.uuid,
                    task.name,
                    task.state,
                    _worker(task),
                    task.args,
                    task.kwargs,
                    task.result,
                )
            )
            if value not in text:
                return False
        elif field in ("name", "state", "worker"):
            if (
                _fold(
                    task.name
                    if field == "name"
                    else task.state
                    if field == "state"
                    else _worker(task)
                )
                != value
            ):
                return False
        elif value not in _fold(getattr(task, field, None)):
            return False
    return True


def _worker(task: Task) -> str | None:
    worker = task.worker
    return None if worker is None else worker.hostname


def _search_terms(search: str | None) -> list[tuple[str | None, str]]:
    """Whitespace-separated terms, each all text or ``field:value`` (name, state, worker
    exact; args, kwargs, result substring), all of which must match."""
    terms: list[tuple[str | None, str]] = []
    for word in (search or "").split():
        field, colon, value = word.partition(":")
        if colon and field in ("name", "state", "worker", "args", "kwargs", "result"):
            terms.append((field, value.casefold()))
        else:
            terms.append((None, word.casefold()))
    return terms


def select_tasks(
    tasks: Iterable[Task],
    *,
    limit: int | None = None,
    offset: int = 0,
    name: str | None = None,
    worker: str | None = None,
    state: str | None = None,
    received_start: float | None = None,
    received_end: float | None = None,
    sort_by: str | None = None,
    search: str | None = None,
) -> list[Task]:
    """Flower's task selection: exact (case-insensitive) filters, received range, then
    ``sort_by`` (``-`` for descending) or newest ``timestamp`` first, then the page."""
    descending = True
    key: Callable[[Task], Any] = _newest_key
    if sort_by:
        descending = sort_by.startswith("-")
        key = _sort_key(sort_by.lstrip("-"))
    name_f, worker_f, state_f = _fold(name), _fold(worker), _fold(state)
    terms = _search_terms(search)
    chosen = []
    for task in tasks:
        if name_f and _fold(task.name) != name_f:
            continue
        if state_f and _fold(task.state) != state_f:
            continue
        if worker_f and _fold(_worker(task)) != worker_f:
            continue
        if received_start is not None or received_end is not None:
            received = task.received
            if received is not None:
                if received_start is not None and received < received_start:
                    continue
                if received_end is not None and received > received_end:
                    continue
        if terms and not _matches_search(task, terms):
            continue
        chosen.append(task)
    offset = max(offset, 0)
    end = None if limit is None else offset + max(limit, 0)
    if end is not None and end < len(chosen):
        select = heapq.nlargest if descending else heapq.nsmallest
        ordered = select(end, chosen, key=key)
    else:
        ordered = sorted(chosen, key=key, reverse=descending)
    return ordered[offset:end]


def newest_tasks(
    recent: RecentIndex,
    tasks: Mapping[str, Task],
    *,
    limit: int | None,
    offset: int,
    name: str | None,
    worker: str | None,
    state: str | None,
    search: str | None,
    candidates: Collection[str] | None = None,
    **unused: Any,
) -> list[Task]:
    """:func:`select_tasks` in the default order (newest timestamp first), from the recent
    index instead of a sort of every task; ``candidates`` (uuids a name or worker index
    gave) are ranked directly when they are few."""
    name_f, worker_f, state_f = _fold(name), _fold(worker), _fold(state)
    terms = _search_terms(search)

    def accept(task: Task) -> bool:
        if name_f and _fold(task.name) != name_f:
            return False
        if state_f and _fold(task.state) != state_f:
            return False
        if worker_f and _fold(_worker(task)) != worker_f:
            return False
        return not terms or _matches_search(task, terms)

    offset = max(offset, 0)
    count = offset + max(limit if limit is not None else MAX_LIMIT, 0)
    if candidates is not None and len(candidates) * 4 < len(tasks):
        # A selective name or worker filter: rank its few tasks instead of scanning.
        chosen = [task for task in (tasks.get(uuid) for uuid in candidates) if task is not None]
        ranked = heapq.nlargest(count, (task for task in chosen if accept(task)), key=_newest_key)
        return ranked[offset:]
    filtered = bool(name_f or worker_f or state_f or terms)
    return recent.newest(tasks, count, accept if filtered else None)[offset:]


def index_candidates(index: Mapping[str, TaskSet], value: str | None) -> frozenset[str] | None:
    """The uuids an index holds under keys equal to ``value`` ignoring case (None when
    there is no such filter)."""
    if not value:
        return None
    wanted = _fold(value)
    found: set[str] = set()
    for key in index:
        if _fold(key) == wanted:
            found |= index[key].uuids
    return frozenset(found)


class TaskAPI:
    """The request handlers, bound to one monitor."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    async def tasks(self, request: Request) -> Response:
        try:
            limit = _integer(request, "limit", None)
            offset = _integer(request, "offset", 0) or 0
            sort_by = _text(request, "sort_by")
            if sort_by and sort_by.lstrip("-") not in SORT_KEYS:
                raise BadRequest(
                    f"Invalid sort_by '{sort_by}', expected one of {', '.join(sorted(SORT_KEYS))}"
                )
            if limit is not None and limit > MAX_LIMIT:
                limit = MAX_LIMIT
            options: dict[str, Any] = {
                "limit": MAX_LIMIT if limit is None else limit,
                "offset": offset,
                "name": _all(_text(request, "taskname")),
                "worker": _all(_text(request, "workername")),
                "state": _all(_text(request, "state")),
                "received_start": _received_bound(_text(request, "received_start")),
                "received_end": _received_bound(_text(request, "received_end")),
                "sort_by": sort_by,
                "search": _text(request, "search"),
            }
        except BadRequest as exc:
            return error(400, str(exc))
        return json_response(self.monitor.state.freeze_while(self._page, options))

    def _page(self, options: dict[str, Any]) -> dict[str, Any]:
        """The answer of ``/api/tasks``, built while ingestion is paused."""
        monitor = self.monitor
        tasks = monitor.state.tasks.data
        if options["sort_by"] or options["received_start"] or options["received_end"]:
            page = select_tasks(list(tasks.values()), **options)
        else:
            state = monitor.state
            by_name = index_candidates(state.tasks_by_type, options["name"])
            by_worker = index_candidates(state.tasks_by_worker, options["worker"])
            candidates = by_name if by_worker is None else by_worker
            if by_name is not None and by_worker is not None:
                candidates = by_name & by_worker
            page = newest_tasks(monitor.recent, tasks, candidates=candidates, **options)
        lost, reconciled = monitor.losses.lost, monitor.reconciled()
        return {task.uuid: task_dict(task, lost, reconciled) for task in page}

    async def task_info(self, request: Request) -> Response:
        uuid = request.path_params["uuid"]
        if len(uuid) > MAX_PARAMETER:
            return error(404, "Unknown task")
        data = self.monitor.state.freeze_while(self._info, uuid)
        if data is None:
            return error(404, f"Unknown task '{uuid}'")
        return json_response(data)

    def _info(self, uuid: str) -> dict[str, Any] | None:
        monitor = self.monitor
        task = monitor.state.tasks.data.get(uuid)
        if task is None:
            return None
        return task_dict(task, monitor.losses.lost, monitor.reconciled())

    async def task_types(self, request: Request) -> Response:
        return json_response({"task-types": self.monitor.state.task_types()})

    async def workers(self, request: Request) -> Response:
        try:
            name = _text(request, "workername")
            status = _text(request, "status")
        except BadRequest as exc:
            return error(400, str(exc))
        monitor = self.monitor
        policy = monitor.options.liveness
        now = time.time()
        answer: dict[str, Any] = {}
        for worker in monitor.state.workers.values():
            hostname = worker.hostname
            if name and hostname != name:
                continue
            alive = liveness(worker, policy, now)
            if status and alive.status != status:
                continue
            beats = worker.heartbeats
            received, stamp = worker.local_received, worker.timestamp
            drift = None
            if isinstance(received, int | float) and isinstance(stamp, int | float):
                drift = round(float(received) - float(stamp), 3)
            answer[str(hostname)] = {
                "hostname": hostname,
                "status": alive.status,
                "last_seen": alive.last_seen,
                "last_seen_ago": None if alive.seen_ago is None else round(alive.seen_ago, 3),
                "last_heartbeat": beats[-1] if beats else None,
                "heartbeat_lateness": round(alive.lateness, 3),
                "clock_drift": drift,
                "freq": worker.freq,
                "active": worker.active,
                "processed": worker.processed,
                "loadavg": worker.loadavg,
                "pid": worker.pid,
                "sw_ident": worker.sw_ident,
                "sw_ver": worker.sw_ver,
                "sw_sys": worker.sw_sys,
                "unfinished_tasks": monitor.losses.unfinished(str(hostname)),
            }
        return json_response(answer)

    async def status(self, request: Request) -> Response:
        return json_response(self.monitor.status())

    async def rates(self, request: Request) -> Response:
        try:
            seconds = _integer(request, "seconds", 120) or 120
        except BadRequest as exc:
            return error(400, str(exc))
        return json_response(self.monitor.rates.series(seconds=max(1, seconds)))

    async def task_stats(self, request: Request) -> Response:
        metrics = self.monitor.metrics
        return json_response(task_stats(metrics.runtime, metrics.queue_wait))

    def routes(self) -> list[Route]:
        return [
            Route("/api/tasks", self.tasks, methods=["GET"]),
            Route("/api/task/info/{uuid:str}", self.task_info, methods=["GET"]),
            Route("/api/task/types", self.task_types, methods=["GET"]),
            Route("/api/workers", self.workers, methods=["GET"]),
            Route("/api/evcore", self.status, methods=["GET"]),
            Route("/api/stats/rates", self.rates, methods=["GET"]),
            Route("/api/stats/tasks", self.task_stats, methods=["GET"]),
        ]
