"""evcore's State against Celery's, side by side: event rate and memory per retained task.

Run with ``python benchmarks/bench_state.py`` (needs the test extra: celery). It builds a
realistic stream (task lifecycles sent/received/started/succeeded with failures, retries,
revokes, child tasks, progress events and worker heartbeats; field sizes as in the wire
samples), encodes it to JSON as it would travel, and then:

* times ``State.event`` over the decoded stream, alternating evcore and Celery repetition
  by repetition (CPU time of this process, so other load on the machine matters less), in
  two scenarios: all tasks retained, and a steady state with evictions;
* measures with tracemalloc the memory retained per task with 10k tasks in the state,
  decoding the events from JSON inside the measurement as a receiver would (so retained
  field strings count), and for the structures alone (events decoded beforehand).

Options: ``--tasks N`` (default 10000), ``--reps N`` (default 5), ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery.events.state import State as CeleryState

from evcore.state import State

WORKERS = ("w1@evcorpus", "w2@evcorpus", "w3@evcorpus", "w4@evcorpus")
CLIENTS = ("gen11442@vm", "gen11520@vm")
NAMES = ("tasks.add", "tasks.echo", "tasks.flaky", "tasks.spawn", "tasks.sleeper", "tasks.tsum")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + '  File "/opt/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in run\n'
    "    R = retval = fun(*args, **kwargs)\n" * 6 + "ValueError: boom\n"
)


def make_stream(n_tasks: int, seed: int = 7) -> list[bytes]:
    """The stream as JSON messages (one event each), in delivery order."""
    rnd = random.Random(seed)
    clock = 0
    now = 1795730000.0
    out: list[dict[str, Any]] = []

    def emit(hostname: str, pid: int, type_: str, **fields: Any) -> None:
        nonlocal clock, now
        clock += 1
        now += 0.0004
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

    for hostname in WORKERS:
        emit(
            hostname,
            100,
            "worker-online",
            freq=2.0,
            active=0,
            processed=0,
            loadavg=[0.69, 0.43, 0.21],
            sw_ident="py-celery",
            sw_ver="5.7.0",
            sw_sys="Linux",
        )
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
            for hostname in WORKERS:
                emit(
                    hostname,
                    100,
                    "worker-heartbeat",
                    freq=2.0,
                    active=1,
                    processed=index,
                    loadavg=[0.69, 0.43, 0.21],
                    sw_ident="py-celery",
                    sw_ver="5.7.0",
                    sw_sys="Linux",
                )
    return [json.dumps(event).encode() for event in out]


def decode(messages: list[bytes]) -> list[dict[str, Any]]:
    """Decode as a receiver would, adding ``local_received``."""
    events = []
    for message in messages:
        event = json.loads(message)
        event["local_received"] = event["timestamp"] + 0.002
        events.append(event)
    return events


def time_run(factory: Callable[[], Any], events: list[dict[str, Any]]) -> float:
    """Events per CPU second for one fresh state over the stream."""
    copies = [dict(event) for event in events]  # Celery's State modifies the dicts it gets
    state = factory()
    handle = state.event
    gc.collect()
    start = time.process_time()
    for event in copies:
        handle(event)
    return len(copies) / (time.process_time() - start)


def compare_rates(label: str, events: list[dict[str, Any]], reps: int, **limits: Any) -> float:
    rates: dict[str, list[float]] = {"evcore": [], "celery": []}
    factories = {"evcore": lambda: State(**limits), "celery": lambda: CeleryState(**limits)}
    for _ in range(reps):
        for name in ("evcore", "celery"):
            rates[name].append(time_run(factories[name], events))
    print(f"\n{label}: {len(events)} events, {reps} alternating repetitions each")
    for name, values in rates.items():
        print(
            f"  {name:7s} median {statistics.median(values):>10,.0f} ev/s"
            f"   min {min(values):>10,.0f}   max {max(values):>10,.0f}"
        )
    ratios = [ours / theirs for ours, theirs in zip(rates["evcore"], rates["celery"], strict=True)]
    ratio = statistics.median(rates["evcore"]) / statistics.median(rates["celery"])
    print(
        f"  ratio (median/median) {ratio:.2f}x   per repetition: "
        f"min {min(ratios):.2f}x max {max(ratios):.2f}x"
    )
    return ratio


def retained_per_task(factory: Callable[[], Any], messages: list[bytes], decoded: bool) -> float:
    """Bytes retained per task, from a traced ingestion of the whole stream."""
    events = decode(messages) if decoded else None
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    state = factory()
    handle = state.event
    for event in events if events is not None else decode(messages):
        handle(event)
    del event
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / len(state.tasks)


def compare_memory(messages: list[bytes]) -> float:
    print(f"\nmemory per retained task (tracemalloc, {len(messages)} events)")
    ratio = 0.0
    for label, decoded in (("events decoded during ingestion", False), ("structures only", True)):
        ours = retained_per_task(State, messages, decoded)
        theirs = retained_per_task(CeleryState, messages, decoded)
        ratio = ratio or ours / theirs
        print(
            f"  {label:32s} evcore {ours:8,.0f} B   celery {theirs:8,.0f} B   "
            f"ratio {ours / theirs:.2f}x"
        )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1000 tasks, 3 repetitions")
    options = parser.parse_args()
    tasks, reps = (1000, 3) if options.quick else (options.tasks, options.reps)
    started = time.monotonic()
    messages = make_stream(tasks)
    events = decode(messages)
    compare_rates(f"all {tasks} tasks retained", events, reps)
    steady = decode(make_stream(tasks * 2, seed=8))
    compare_rates(
        f"steady state: {2 * tasks} tasks, max_tasks_in_memory={tasks // 2}",
        steady,
        reps,
        max_tasks_in_memory=tasks // 2,
    )
    compare_memory(messages)
    print(f"\ntotal {time.monotonic() - started:.1f} s (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
