"""The event stream every benchmark replays, identical for evcore and Celery.

Task lifecycles as a Celery 5.7 cluster emits them (``task-sent`` from clients; then
``task-received``, ``task-started`` and ``task-succeeded``, with failures, retries,
revokes, child tasks and progress events) interleaved with worker heartbeats. Field names,
order and sizes follow the captured messages in ``shared/reference/wire-samples``.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

WORKERS = ("w1@evcorpus", "w2@evcorpus", "w3@evcorpus", "w4@evcorpus")
CLIENTS = ("gen11442@vm", "gen11520@vm")
NAMES = ("tasks.add", "tasks.echo", "tasks.flaky", "tasks.spawn", "tasks.sleeper", "tasks.tsum")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + '  File "/opt/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in run\n'
    "    R = retval = fun(*args, **kwargs)\n" * 6 + "ValueError: boom\n"
)

#: Fields a dispatcher stamps itself; ``send()`` is given the others.
ENVELOPE = frozenset({"hostname", "utcoffset", "pid", "clock", "timestamp", "type"})

Event = dict[str, Any]


def make_events(n_tasks: int, seed: int = 7, start: float | None = None) -> list[Event]:
    """Complete events (envelope fields included) in delivery order.

    Timestamps run 50 us apart from ``start`` (default: now), about the pace at which the
    receivers measured here process them, so one stamping ``local_received`` soon after
    sees no clock drift (both States check it on every worker's event).
    """
    rnd = random.Random(seed)
    clock = 0
    now = time.time() if start is None else start
    out: list[Event] = []

    def emit(hostname: str, pid: int, type_: str, **fields: Any) -> None:
        nonlocal clock, now
        clock += 1
        now += 0.00005
        out.append(
            {
                "hostname": hostname,
                "utcoffset": 0.0,
                "pid": pid,
                "clock": clock,
                **fields,
                "timestamp": now,
                "type": type_,
            }
        )

    def uuid() -> str:
        bits = rnd.getrandbits
        return f"{bits(32):08x}-{bits(16):04x}-4{bits(12):03x}-a{bits(12):03x}-{bits(48):012x}"

    def args() -> str:
        if rnd.random() < 0.02:
            return repr(list(range(400)))[:1024] + "..."
        return repr(tuple(rnd.randint(0, 10**6) for _ in range(rnd.randint(1, 8))))

    def heartbeat(type_: str, processed: int, active: int) -> None:
        for hostname in WORKERS:
            emit(
                hostname,
                100,
                type_,
                freq=2.0,
                active=active,
                processed=processed,
                loadavg=[0.69, 0.43, 0.21],
                sw_ident="py-celery",
                sw_ver="5.7.0",
                sw_sys="Linux",
            )

    heartbeat("worker-online", 0, 0)
    recent: list[str] = []
    for index in range(n_tasks):
        task_id, name, worker = uuid(), rnd.choice(NAMES), rnd.choice(WORKERS)
        parent = rnd.choice(recent) if recent and rnd.random() < 0.1 else None
        root = parent or task_id
        task_args = args()
        emit(
            rnd.choice(CLIENTS),
            11442,
            "task-sent",
            uuid=task_id,
            root_id=root,
            parent_id=parent,
            name=name,
            args=task_args,
            kwargs="{}",
            retries=0,
            eta=None,
            expires=None,
            queue="celery",
            exchange="",
            routing_key="celery",
        )
        retries = 1 if rnd.random() < 0.05 else 0
        for attempt in range(retries + 1):
            emit(
                worker,
                100,
                "task-received",
                uuid=task_id,
                name=name,
                args=task_args,
                kwargs="{}",
                root_id=root,
                parent_id=parent,
                retries=attempt,
                eta=None,
                expires=None,
            )
            emit(worker, 100, "task-started", uuid=task_id)
            if rnd.random() < 0.05:
                emit(worker, 4242, "task-progress", uuid=task_id, current=50, total=100)
            if attempt < retries:
                emit(
                    worker,
                    100,
                    "task-retried",
                    uuid=task_id,
                    exception="Retry(...)",
                    traceback=TRACEBACK,
                )
        outcome = rnd.random()
        if outcome < 0.88:
            emit(
                worker,
                100,
                "task-succeeded",
                uuid=task_id,
                result=repr(rnd.getrandbits(rnd.choice((8, 64, 512)))),
                runtime=rnd.random(),
            )
        elif outcome < 0.97:
            emit(
                worker,
                100,
                "task-failed",
                uuid=task_id,
                exception="ValueError('boom')",
                traceback=TRACEBACK,
            )
        else:
            emit(
                worker,
                100,
                "task-revoked",
                uuid=task_id,
                terminated=False,
                signum=None,
                expired=True,
            )
        recent = [*recent[-20:], task_id]
        if index % 25 == 0:
            heartbeat("worker-heartbeat", index, 1)
    return out


def make_stream(n_tasks: int, seed: int = 7) -> list[bytes]:
    """The stream as JSON message bodies (one event each), as Celery's json encodes them."""
    return [json.dumps(event).encode() for event in make_events(n_tasks, seed)]


def sendable(events: list[Event]) -> list[tuple[str, Event]]:
    """``(type, fields)`` pairs for ``dispatcher.send(type, **fields)``: the envelope
    fields are left for the dispatcher to stamp."""
    return [
        (event["type"], {key: value for key, value in event.items() if key not in ENVELOPE})
        for event in events
    ]


def tasks_for_events(n_events: int) -> int:
    """How many tasks make a stream of about ``n_events`` events (about 4.3 per task)."""
    return max(1, round(n_events / 4.3))
