"""Prometheus metrics from the event stream, with bounded label cardinality.

Task counters and histograms are counted per event as it is applied (a few dictionary
operations); worker gauges and the receiver's and State's counters are read at scrape time.
Nothing is registered in prometheus_client's global registry: :class:`EventMetrics` is a
collector of a registry of its own. :func:`exposition` writes the same text as
prometheus_client's ``generate_latest`` without building an object per sample: with
thousands of series that is most of a scrape's time and garbage.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from evcore.state import State, Task, Worker
from evcore.state.liveness import LATE, OFFLINE, ONLINE, LivenessPolicy, liveness

#: The value every label takes in the series that stands for label sets past the cap.
OVERFLOW = "__overflow__"
#: Label sets per metric kept by default before new ones go to the overflow series.
DEFAULT_MAX_LABEL_SETS = 1000
#: Label values are cut to this many characters (publishers control them).
MAX_LABEL_LENGTH = 200
#: Histogram bounds in seconds: celery-exporter's (prometheus_client's default) buckets.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Bounds for waits measured across hosts (queue wait, delivery latency).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

#: A scrape is answered with a rendering at most this many seconds old.
MAX_AGE = 1.0
#: While scrapes come in, the metrics are rendered ahead this often (seconds).
REFRESH_INTERVAL = 0.75
#: Rendering ahead stops this many seconds after the last scrape.
KEEP_WARM = 120.0

#: Task event types with a celery-exporter counter (``celery_task_<subject>_total``).
TASK_EVENTS = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-rejected",
    "task-revoked",
    "task-retried",
)
_CLIENT_NAME = re.compile(r"^gen\d+@")
_EXCEPTION_CLASS = re.compile(r"^([\w.]+)\(")


def normalise_hostname(hostname: Any) -> str:
    """A bounded label value for a sender: ``gen<pid>@host`` (Celery's name for a client
    process) becomes ``gen@host``, so each client process does not start new series.

    >>> normalise_hostname("gen4242@web-1"), normalise_hostname("celery@worker-1")
    ('gen@web-1', 'celery@worker-1')
    """
    if hostname.__class__ is not str:
        return "unknown"
    return _label(_CLIENT_NAME.sub("gen@", hostname))


def exception_class(exception: Any) -> str:
    """The class name of a ``repr``-ed exception, as celery-exporter labels failures.

    >>> exception_class("ValueError('bad input')")
    'ValueError'
    """
    if exception.__class__ is str:
        found = _EXCEPTION_CLASS.match(exception)
        if found:
            return _label(found.group(1))
    return "UnknownException"


def _label(value: str) -> str:
    return value if len(value) <= MAX_LABEL_LENGTH else value[:MAX_LABEL_LENGTH]


class LabelCap:
    """Admits at most ``limit`` distinct label sets; later ones map to the overflow set."""

    __slots__ = ("_overflow", "_seen", "limit", "overflowed")

    def __init__(self, limit: int, width: int) -> None:
        self.limit = limit
        self.overflowed = 0
        self._seen: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._overflow = (OVERFLOW,) * width

    def __call__(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        known = self._seen.get(labels)
        if known is not None:
            return known
        if len(self._seen) < self.limit:
            self._seen[labels] = labels
            return labels
        self.overflowed += 1
        return self._overflow

    def __len__(self) -> int:
        return len(self._seen)


class Histogram:
    """Bucket counts and a sum for one label set."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.sum = 0.0


class HistogramSeries:
    """A histogram per label set, label sets capped."""

    def __init__(self, bounds: Sequence[float], cap: LabelCap) -> None:
        self.bounds = tuple(bounds)
        self.cap = cap
        self.series: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        key = self.cap(labels)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Histogram(len(self.bounds))
        series.counts[bisect_left(self.bounds, value)] += 1
        series.sum += value

    def family(self, name: str, documentation: str, labels: Sequence[str]) -> HistogramFamily:
        return HistogramFamily(name, documentation, labels, self.bounds, list(self.series.items()))


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    if value.__class__ is int and -(10**15) < value < 1_000_000:
        return f"{value}.0"  # what floatToGoString gives for these, ten times faster
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _header(name: str, kind: str, documentation: str) -> str:
    help_ = documentation.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_}\n# TYPE {name} {kind}\n"


class Family:
    """A counter or gauge family, its samples kept as (label values, value) pairs."""

    __slots__ = ("documentation", "kind", "labels", "name", "samples")

    def __init__(
        self,
        kind: Literal["counter", "gauge"],
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        value: float | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.samples: list[tuple[Sequence[str], float]] = [] if value is None else [((), value)]

    def add(self, values: Sequence[str], value: float) -> None:
        self.samples.append((values, value))

    def metric(self) -> Metric:
        """The same family as prometheus_client's object."""
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = kind(self.name, self.documentation, labels=list(self.labels))
        for values, value in self.samples:
            family.add_metric(list(values), value)
        return family

    def write(self, out: list[str]) -> None:
        """Append the family in the text format (version 0.0.4)."""
        name = f"{self.name}_total" if self.kind == "counter" else self.name
        out.append(_header(name, self.kind, self.documentation))
        if not self.labels:
            out.extend(f"{name} {_number(value)}\n" for _, value in self.samples)
            return
        # The format lists labels sorted by name; each sample's values are picked in that order.
        order = sorted(range(len(self.labels)), key=self.labels.__getitem__)
        pairs = ",".join(f'{self.labels[index]}="{{}}"' for index in order)
        line = f"{name}{{{{{pairs}}}}} {{}}\n".format
        out.extend(
            line(*[_escape(values[index]) for index in order], _number(value))
            for values, value in self.samples
        )


class HistogramFamily:
    """A histogram family: a :class:`Histogram` per label set."""

    __slots__ = ("bounds", "documentation", "labels", "name", "series")

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        bounds: Sequence[float],
        series: list[tuple[tuple[str, ...], Histogram]],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = [*(repr(float(bound)) for bound in bounds), "+Inf"]
        self.series = series

    def _cumulative(self, histogram: Histogram) -> list[tuple[str, int]]:
        buckets, total = [], 0
        for bound, count in zip(self.bounds, list(histogram.counts), strict=True):
            total += count
            buckets.append((bound, total))
        return buckets

    def metric(self) -> Metric:
        """The same family as prometheus_client's object."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for key, histogram in self.series:
            family.add_metric(list(key), self._cumulative(histogram), histogram.sum)
        return family

    def write(self, out: list[str]) -> None:
        """Append the family in the text format (version 0.0.4)."""
        name = self.name
        out.append(_header(name, "histogram", self.documentation))
        names = sorted(self.labels)
        order = [self.labels.index(label) for label in names]
        split = sum(1 for label in names if label < "le")  # where ``le`` sorts among them
        for key, histogram in self.series:
            pairs = [
                f'{label}="{_escape(key[index])}"'
                for label, index in zip(names, order, strict=True)
            ]
            before = "".join(f"{pair}," for pair in pairs[:split])
            after = "".join(f",{pair}" for pair in pairs[split:])
            bucket = f'{name}_bucket{{{before}le="'
            buckets = self._cumulative(histogram)
            out.extend(f'{bucket}{bound}"{after}}} {_number(total)}\n' for bound, total in buckets)
            labels = f"{{{','.join(pairs)}}}" if pairs else ""
            out.append(f"{name}_count{labels} {_number(buckets[-1][1])}\n")
            out.append(f"{name}_sum{labels} {_number(histogram.sum)}\n")


@dataclass
class SourceStats:
    """What the metrics read from outside the event stream, at scrape time."""

    connected: bool = False
    lag: float = 0.0
    queued: int = 0
    rejected: Mapping[str, int] | None = None
    lost: Mapping[str, int] | None = None
    reconnects: int = 0
    full_waits: int = 0


def _seconds(value: Any) -> float | None:
    if value.__class__ is float or value.__class__ is int:
        return float(value)
    return None


class EventMetrics(Collector):
    """Counts task events as they are applied and reads workers from the State on scrape.

    :meth:`observe` runs where events are applied (the event loop); :meth:`collect` may run
    in another thread: it reads copies of the counters, taken atomically.

    Names and labels follow celery-exporter where they overlap (``celery_task_*_total``
    with ``name``, ``hostname``, ``queue_name``; ``celery_task_runtime``;
    ``celery_worker_up``; ``celery_worker_tasks_active``); evcore's own are ``evcore_*``.
    See ``docs/serve.md`` for the full list and the mapping from Flower's names.
    """

    def __init__(
        self,
        state: State,
        policy: LivenessPolicy | None = None,
        *,
        max_label_sets: int = DEFAULT_MAX_LABEL_SETS,
        source: Callable[[], SourceStats] | None = None,
        extra: Callable[[], Iterator[Family]] | None = None,
    ) -> None:
        self.state = state
        self.policy = policy or LivenessPolicy()
        self.max_label_sets = max_label_sets
        self.source = source
        self.extra = extra
        self.caps: dict[str, LabelCap] = {}
        self.counters: dict[str, dict[tuple[str, ...], int]] = {t: {} for t in TASK_EVENTS}
        self.failures: dict[tuple[str, ...], int] = {}
        self.other_events: dict[tuple[str, ...], int] = {}
        # A histogram label set costs a line per bucket: a quarter of the sets is allowed.
        histogram_sets = max(1, max_label_sets // 4)
        self.runtime = HistogramSeries(RUNTIME_BUCKETS, self._cap("runtime", 3, histogram_sets))
        self.queue_wait = HistogramSeries(WAIT_BUCKETS, self._cap("queue_wait", 2, histogram_sets))
        self.delivery = HistogramSeries(WAIT_BUCKETS, self._cap("delivery", 2, histogram_sets))
        self._task_cap = self._cap("task", 3)
        self._failure_cap = self._cap("failure", 4)
        self._other_cap = self._cap("other", 2)
        self._lost_cap = self._cap("lost", 1)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _cap(self, metric: str, width: int, limit: int | None = None) -> LabelCap:
        cap = self.caps[metric] = LabelCap(limit or self.max_label_sets, width)
        return cap

    # -- per event ------------------------------------------------------------------------

    def observe(self, event: Mapping[str, Any], result: Any) -> None:
        """Count one event after the State applied it (``result`` is what ``event()``
        returned; events the State refused are not counted here)."""
        if result is None or result.__class__ is not tuple:
            return
        subject_of = result[0]
        if subject_of.__class__ is not tuple or not subject_of:
            return
        task = subject_of[0]
        if task.__class__ is not Task:
            return
        type_ = event["type"]
        name = task.name
        name = _label(name) if name.__class__ is str else "unknown"
        host = normalise_hostname(event.get("hostname"))
        queue = task.queue if task.queue.__class__ is str else "celery"
        queue = _label(queue)
        labels = (name, host, queue)
        counts = self.counters.get(type_)
        if counts is None:
            key = self._other_cap((name, _label(type_)))
            self.other_events[key] = self.other_events.get(key, 0) + 1
            return
        key = self._task_cap(labels)
        counts[key] = counts.get(key, 0) + 1
        if type_ == "task-succeeded":
            runtime = _seconds(task.runtime)
            if runtime is not None and runtime >= 0:
                self.runtime.observe(labels, runtime)
        elif type_ == "task-failed":
            failed = self._failure_cap((name, host, exception_class(task.exception), queue))
            self.failures[failed] = self.failures.get(failed, 0) + 1
        elif type_ == "task-started":
            started, received = _seconds(task.started), _seconds(task.received)
            if started is not None and received is not None and started >= received:
                self.queue_wait.observe((name, queue), started - received)
        elif type_ == "task-received":
            received, sent = _seconds(task.received), _seconds(task.sent)
            if received is not None and sent is not None:
                self.delivery.observe((name, queue), max(0.0, received - sent))

    # -- on scrape ------------------------------------------------------------------------

    def families(self) -> Iterator[Family | HistogramFamily]:
        """Every family, read now."""
        task_labels = ("name", "hostname", "queue_name")
        for type_ in TASK_EVENTS:
            subject = type_.partition("-")[2]
            if subject == "failed":
                continue
            family = Family(
                "counter", f"celery_task_{subject}", f"Task {subject} events.", task_labels
            )
            family.samples.extend(list(self.counters[type_].items()))
            yield family
        failed = Family(
            "counter",
            "celery_task_failed",
            "Task failed events, by exception class.",
            ("name", "hostname", "exception", "queue_name"),
        )
        failed.samples.extend(list(self.failures.items()))
        yield failed
        other = Family(
            "counter", "evcore_task_events", "Task events of other types.", ("name", "type")
        )
        other.samples.extend(list(self.other_events.items()))
        yield other
        yield self.runtime.family(
            "celery_task_runtime", "Task runtime in seconds (task-succeeded).", task_labels
        )
        yield self.queue_wait.family(
            "evcore_task_queue_wait_seconds",
            "Seconds from task-received to task-started (the worker's clock).",
            ("name", "queue_name"),
        )
        yield self.delivery.family(
            "evcore_task_delivery_latency_seconds",
            "Seconds from task-sent (client's clock) to task-received (worker's clock).",
            ("name", "queue_name"),
        )
        yield from self._workers()
        yield from self._state_counters()
        yield from self._source()
        overflow = Family(
            "counter",
            "evcore_metrics_label_overflow",
            "Observations counted in the overflow series because the label sets were capped.",
            ("metric",),
        )
        for metric, cap in self.caps.items():
            overflow.add((metric,), cap.overflowed)
        yield overflow
        if self.extra is not None:
            yield from self.extra()

    def collect(self) -> Iterator[Metric]:
        """The families as prometheus_client's objects (the registry's interface)."""
        for family in self.families():
            yield family.metric()

    def _workers(self) -> Iterator[Family]:
        by_host = ("hostname",)
        up = Family("gauge", "celery_worker_up", "1 unless the worker is offline.", by_host)
        active = Family(
            "gauge",
            "celery_worker_tasks_active",
            "Tasks the worker is running (from its last heartbeat).",
            by_host,
        )
        lateness = Family(
            "gauge",
            "evcore_worker_heartbeat_lateness_seconds",
            "Seconds past the worker's expected next heartbeat (receiver's clock).",
            by_host,
        )
        drift = Family(
            "gauge",
            "evcore_worker_clock_drift_seconds",
            "Receive time minus the worker's own timestamp of its last event.",
            by_host,
        )
        status = Family("gauge", "evcore_workers", "Workers by liveness status.", ("status",))
        counts = {ONLINE: 0, LATE: 0, OFFLINE: 0}
        now = time.time()
        workers: list[Worker] = list(self.state.workers.values())
        for worker in workers[: self.max_label_sets]:
            hostname = (normalise_hostname(worker.hostname),)
            alive = liveness(worker, self.policy, now)
            counts[alive.status] += 1
            up.add(hostname, 0 if alive.status == OFFLINE else 1)
            busy = worker.active
            active.add(hostname, busy if busy.__class__ is int else 0)
            lateness.add(hostname, alive.lateness)
            received, stamp = _seconds(worker.local_received), _seconds(worker.timestamp)
            if received is not None and stamp is not None:
                drift.add(hostname, received - stamp)
        for worker in workers[self.max_label_sets :]:
            counts[liveness(worker, self.policy, now).status] += 1
        for name, count in counts.items():
            status.add((name,), count)
        yield from (up, active, lateness, drift, status)

    def _state_counters(self) -> Iterator[Family]:
        state = self.state
        rejected = Family(
            "counter",
            "evcore_events_rejected",
            "Events refused, by where (receiver or state) and reason.",
            ("stage", "reason"),
        )
        for reason, count in list(state.rejected.items()):
            rejected.add(("state", _label(reason)), count)
        source = self.source() if self.source is not None else SourceStats()
        for reason, count in list((source.rejected or {}).items()):
            rejected.add(("receiver", _label(reason)), count)
        yield rejected
        evictions = Family(
            "counter",
            "evcore_state_evictions",
            "Records evicted from the State, by kind.",
            ("kind",),
        )
        for kind, count in state.evictions.items():
            evictions.add((kind,), count)
        yield evictions
        lost = Family(
            "counter",
            "evcore_events_lost",
            "Events lost in transit, by sender (from evcore's sequence headers).",
            ("sender",),
        )
        senders = source.lost if source.lost is not None else state.lost_events
        cap = self._lost_cap
        totals: dict[tuple[str, ...], int] = {}
        for sender, count in list(senders.items()):
            key = cap((normalise_hostname(sender),))
            totals[key] = totals.get(key, 0) + count
        lost.samples.extend(totals.items())
        yield lost
        yield Family(
            "gauge", "evcore_state_tasks", "Tasks held in the State.", value=len(state.tasks)
        )
        yield Family(
            "gauge", "evcore_state_workers", "Workers held in the State.", value=len(state.workers)
        )
        yield Family(
            "counter", "evcore_state_events", "Events fed to the State.", value=state.event_count
        )

    def _source(self) -> Iterator[Family]:
        if self.source is None:
            return
        source = self.source()
        yield Family(
            "gauge",
            "evcore_receiver_connected",
            "1 while the receiver holds a subscription.",
            value=1 if source.connected else 0,
        )
        yield Family(
            "gauge",
            "evcore_receiver_lag_seconds",
            "Seconds the oldest event not yet applied has waited since it was received.",
            value=source.lag,
        )
        yield Family(
            "gauge",
            "evcore_receiver_queued_events",
            "Events received and waiting to be applied.",
            value=source.queued,
        )
        yield Family(
            "counter",
            "evcore_receiver_reconnects",
            "Times the receiver subscribed again.",
            value=source.reconnects,
        )
        yield Family(
            "counter",
            "evcore_receiver_backpressure_waits",
            "Times the receiving thread waited for room in the queue.",
            value=source.full_waits,
        )


def exposition(metrics: EventMetrics) -> bytes:
    """The metrics in Prometheus' text format: what ``generate_latest`` writes for the
    collector, byte for byte."""
    out: list[str] = []
    for family in metrics.families():
        family.write(out)
    return "".join(out).encode()


class RenderedMetrics:
    """The exposition rendered ahead of scrapes; a scrape never gets one older than
    ``max_age`` seconds.

    :meth:`scrape` answers with the last rendering while it is fresh enough, and otherwise
    renders one there and then (in a thread; scrapes arriving meanwhile wait for the same
    one). :meth:`refresh`, run for the application's lifetime, renders every ``interval``
    seconds while scrapes came in the last ``keep_warm`` seconds, so a scrape seldom waits
    for a rendering, nor for a garbage collection that happens during one. When the loop is
    too busy to refresh, scrapes find the rendering too old and render themselves.
    """

    def __init__(
        self,
        metrics: EventMetrics,
        *,
        max_age: float = MAX_AGE,
        interval: float = REFRESH_INTERVAL,
        keep_warm: float = KEEP_WARM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.max_age = max_age
        self.interval = interval
        self.keep_warm = keep_warm
        self.clock = clock
        #: How many times the metrics were rendered.
        self.renders = 0
        # (when the rendering started, its text): replaced whole, so read without the lock
        self._latest: tuple[float, bytes] = (-math.inf, b"")
        self._last_scrape = -math.inf
        self._lock = threading.Lock()

    async def scrape(self) -> bytes:
        """The exposition, at most ``max_age`` seconds old."""
        now = self._last_scrape = self.clock()
        rendered_at, body = self._latest
        if now - rendered_at <= self.max_age:
            return body
        return await asyncio.to_thread(self._render, now - self.max_age)

    async def refresh(self) -> None:
        """Render ahead while scrapes come in; runs until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            if self.clock() - self._last_scrape <= self.keep_warm:
                await asyncio.to_thread(self._render, self.clock())

    def _render(self, not_before: float) -> bytes:
        """A rendering started at ``not_before`` or later: the latest if it is one."""
        with self._lock:
            rendered_at, body = self._latest
            if rendered_at >= not_before:
                return body
            started = self.clock()
            body = exposition(self.metrics)
            self._latest = (started, body)
            self.renders += 1
            return body
