"""Section 6: the transports Celery has no events on (evcore alone, no ratio).

PostgreSQL LISTEN/NOTIFY (the server named by ``--postgres-url``), SNS/SQS (moto's server,
started here: its figures measure moto as much as evcore) and a Redis Cluster of three
primaries started here. For each: dispatch throughput as in section 1 (in this process,
``background=True``, unbatched and batched, a subscription counting what arrived) and end to
end as in section 2 (a dispatcher process, a Receiver + State process).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from typing import Any

from benchmarks.common import Row, Settings, log
from benchmarks.dispatch import e2e_run, evcore_run, exchange_name
from benchmarks.roles import events_in
from benchmarks.servers import moto_server, redis_cluster
from benchmarks.workload import make_events, sendable, tasks_for_events

SECTION_DISPATCH = "6. New transports: dispatch throughput (evcore only)"
SECTION_E2E = "6. New transports: end to end (evcore only)"


class SubscriptionCounter:
    """A transport subscription to the exchange (binding ``#``) read in a thread."""

    def __init__(self, url: str, exchange: str) -> None:
        import evcore
        from evcore.routing import exchange_type_for
        from evcore.transport import Exchange, QueueOptions

        self.transport = evcore.connect(url)
        kind = exchange_type_for(self.transport) or "topic"
        self.subscription = self.transport.subscribe(
            Exchange(exchange, kind), "#", QueueOptions(f"evbench.count.{uuid.uuid4().hex[:8]}")
        )
        self.messages = self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for message in self.subscription.receive(0.2):
                if message.routing_key.startswith("bench"):
                    continue
                self.messages += 1
                self.events += events_in(message.routing_key, message.body)

    def take(self, settle: float = 2.0) -> tuple[int, int]:
        """What arrived since the last call, once nothing more came for ``settle`` seconds."""
        seen = -1
        while seen != self.messages:
            seen = self.messages
            time.sleep(settle)
        counted = self.messages, self.events
        self.messages = self.events = 0
        return counted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.transport.close()


def _postgres(url: str) -> Callable[[], AbstractContextManager[str]]:
    notify = url.replace("postgresql://", "postgresql+notify://", 1)
    return lambda: nullcontext(notify)


@contextmanager
def _sqs() -> Iterator[str]:
    with moto_server() as endpoint:
        yield (
            "sqs://bench:bench@?region=us-east-1&wait_time_seconds=1"
            f"&endpoint_url={endpoint}"
        )


def transports_section(settings: Settings) -> Iterator[Row]:
    """The rows, each yielded as soon as it is measured (this section is long)."""
    # (name, server, most events per dispatch run, per end-to-end run): moto publishes about
    # a hundred messages a second and flush() waits for everything background=True queued,
    # so SQS runs are capped (an end-to-end run must end within the receiver's time limit).
    unlimited = settings.dispatch_events, settings.e2e_events
    servers: list[tuple[str, Callable[[], AbstractContextManager[str]], tuple[int, int]]] = [
        ("PostgreSQL LISTEN/NOTIFY", _postgres(settings.postgres_url), unlimited),
        ("SNS/SQS (moto server)", _sqs, (3000, 1000)),
        ("Redis Cluster (3 primaries)", redis_cluster, unlimited),
    ]
    for name, server, (dispatch_cap, e2e_cap) in servers:
        capped = replace(
            settings,
            dispatch_events=min(settings.dispatch_events, dispatch_cap),
            e2e_events=min(settings.e2e_events, e2e_cap),
        )
        events = sendable(make_events(tasks_for_events(capped.dispatch_events)))
        events = events[: capped.dispatch_events]
        try:
            with server() as url:
                yield from _dispatch_rows(capped, name, url, events)
                yield from _e2e_rows(capped, name, url)
        except Exception as exc:  # the report says which transport could not be measured
            log(f"  {name}: not measured ({exc})")
            yield Row(SECTION_DISPATCH, name, "events/s", notes=[f"not measured: {exc}"])


def _dispatch_rows(
    settings: Settings, name: str, url: str, events: list[tuple[str, dict[str, Any]]]
) -> list[Row]:
    rows = []
    for batched in (False, True):
        mode = "batched (buffer_group={'task'}, limit 24)" if batched else "unbatched send()"
        log(f"dispatch over {name}, {mode}: {settings.reps} repetitions")
        exchange = exchange_name()
        counter = SubscriptionCounter(url, exchange)
        rates, notes = [], []
        try:
            for _ in range(settings.reps):
                sent, elapsed, messages = evcore_run(
                    url, exchange, events, settings.dispatch_seconds, batched, True
                )
                got_messages, got_events = counter.take()
                rates.append(sent / elapsed)
                notes.append((sent, got_events, got_messages, messages))
        finally:
            counter.close()
        sent = sum(n[0] for n in notes)
        row = Row(SECTION_DISPATCH, f"{name}, {mode}, evcore background=True", "events/s", rates)
        row.notes.append(
            f"{sum(n[1] for n in notes)}/{sent} events arrived in "
            f"{sum(n[2] for n in notes)} messages ({sum(n[3] for n in notes)} published)"
        )
        rows.append(row)
    return rows


def _e2e_rows(settings: Settings, name: str, url: str) -> list[Row]:
    rows = []
    reps = max(1, min(settings.reps, 3))
    for batched in (False, True):
        mode = "batched" if batched else "unbatched"
        log(f"end to end over {name}, {mode}: {reps} repetitions")
        runs = [e2e_run(settings, url, "evcore", batched, seed=rep) for rep in range(reps)]
        row = Row(SECTION_E2E, f"{name}, {mode}", "events/s", [run["rate"] for run in runs])
        sent = sum(run["sent"] for run in runs)
        received = sum(run["received"] for run in runs)
        seen = sum(run["lost_seen"] or 0 for run in runs)
        row.notes.append(
            f"{received}/{sent} events processed, {sent - received} lost "
            f"(Receiver.stats.lost_events: {seen})"
        )
        rows.append(row)
    return rows
