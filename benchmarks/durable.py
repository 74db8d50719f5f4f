"""Section 6: durable streams (Redis Streams) against Celery's pub/sub and evcore's own.

- End to end, unbatched: evcore Dispatcher -> Redis Streams -> Receiver + State, alternated
  with Celery's pub/sub over Redis and evcore's pub/sub over Redis (same harness as
  section 2, ``dispatch.e2e_run``).
- Replay: a fresh monitor process builds its State from the earliest retained event of a
  stream the suite appended beforehand (batched by the Dispatcher, as evcore's workers
  send), wall-clock and per CPU second of the monitor.
- Group ingest: the same retained stream read by one member, then by two members of one
  group in two processes; the rate is the stream's events over the time until the last
  member applied its last event.
- Overload burst: a batched sender appends a burst as fast as it can while one (then two)
  members follow; the catch-up time runs from the end of the burst to the last event
  applied, and nothing may be lost.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from benchmarks.common import Child, Row, Settings, log
from benchmarks.dispatch import e2e_run

SECTION = "6. Durable streams (Redis Streams)"
PARTITIONS = 4


def stream_url(redis_url: str, prefix: str) -> str:
    base = redis_url.replace("redis://", "redis+streams://", 1)
    joiner = "&" if "?" in base else "?"
    return f"{base}{joiner}partitions={PARTITIONS}&prefix={prefix}"


def new_prefix() -> str:
    return f"evbench-{uuid.uuid4().hex[:10]}:"


def drop_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def durable_e2e(settings: Settings, seed: int) -> dict[str, Any]:
    prefix = new_prefix()
    try:
        return e2e_run(settings, stream_url(settings.redis_url, prefix), "evcore", False, seed)
    finally:
        drop_keys(settings.redis_url, prefix)


def e2e_rows(settings: Settings) -> list[Row]:
    reps = max(1, min(settings.reps, 3))
    log(f"durable end to end, unbatched: {reps} repetitions of three systems")
    runs: dict[str, list[dict[str, Any]]] = {"durable": [], "celery": [], "pubsub": []}
    for rep in range(reps):
        order = ["durable", "celery", "pubsub"]
        if rep % 2:
            order.reverse()
        for system in order:
            if system == "durable":
                runs[system].append(durable_e2e(settings, rep))
            else:
                name = "celery" if system == "celery" else "evcore"
                runs[system].append(e2e_run(settings, settings.redis_url, name, False, rep))

    def note(system: str, label: str) -> str:
        sent = sum(run["sent"] for run in runs[system])
        received = sum(run["received"] for run in runs[system])
        return f"{label}: {received}/{sent} events processed, {sent - received} lost"

    durable = [run["rate"] for run in runs["durable"]]
    pubsub = [run["rate"] for run in runs["pubsub"]]
    first = Row(
        SECTION,
        "end to end unbatched: evcore over Redis Streams vs Celery pub/sub over Redis",
        "events/s",
        durable,
        [run["rate"] for run in runs["celery"]],
        [note("durable", "evcore durable"), note("celery", "celery pub/sub")],
        target="e2e-durable",
    )
    cost = statistics.median(durable) / statistics.median(pubsub)
    second = Row(
        SECTION,
        "end to end unbatched: evcore over Redis pub/sub, same run (the cost of durability)",
        "events/s",
        pubsub,
        notes=[note("pubsub", "evcore pub/sub"), f"durable / pub/sub: {cost:.2f}x"],
    )
    return [first, second]


def populate(url: str, events: int, batched: bool) -> float:
    """Append ``events`` events of the workload; return the append rate."""
    child = Child(
        "e2e-dispatch",
        {
            "url": url,
            "exchange": "celeryev",
            "system": "evcore",
            "events": events,
            "seconds": 600,
            "seed": 1,
            "batched": batched,
            "background": True,
        },
    )
    try:
        child.expect(120)
        child.send({"cmd": "go"})
        sent = child.expect(900)
    finally:
        child.close()
    return float(sent["sent"] / max(sent["end"] - sent["start"], 1e-9))


def run_members(url: str, count: int, group: str | None, idle: float) -> list[dict[str, Any]]:
    """Start ``count`` member processes, then let them read together; their reports."""
    members = [
        Child(
            "stream-member",
            {"url": url, "group": group, "member": f"m{index}", "idle": idle, "lease": 1.0},
        )
        for index in range(count)
    ]
    try:
        for member in members:
            member.expect(60)
        go = time.monotonic()
        for member in members:
            member.send({"go": go})
        return [member.expect(900) for member in members]
    finally:
        for member in members:
            member.close()


def replay_and_group_rows(settings: Settings) -> list[Row]:
    events = 20_000 if settings.quick else settings.replay_events
    reps = max(1, min(settings.reps, 3))
    prefix = new_prefix()
    url = stream_url(settings.redis_url, prefix)
    rows = []
    try:
        log(f"durable: appending {events} events (batched) for the replay and group runs")
        append_rate = populate(url, events, batched=True)
        replay: list[float] = []
        replay_cpu: list[float] = []
        single: list[float] = []
        double: list[float] = []
        for rep in range(reps):
            (solo,) = run_members(url, 1, None, idle=1.0)
            replay.append(solo["count"] / max(solo["last"] - solo["go"], 1e-9))
            replay_cpu.append(solo["count"] / max(solo["cpu"], 1e-9))
            order = [1, 2] if rep % 2 == 0 else [2, 1]
            for size in order:
                reports = run_members(url, size, f"g{rep}-{size}", idle=1.5)
                end = max(report["last"] for report in reports)
                rate = events / max(end - reports[0]["go"], 1e-9)
                (single if size == 1 else double).append(rate)
        rows.append(
            Row(
                SECTION,
                f"replay: a new monitor builds its State from {events:,} retained events "
                "(batched stream)",
                "events/s",
                replay,
                notes=[
                    f"per CPU second of the monitor: {statistics.median(replay_cpu):,.0f} ev/s",
                    f"appended at {append_rate:,.0f} ev/s",
                    "target >= 100,000 ev/s",
                ],
            )
        )
        ratio = statistics.median(double) / statistics.median(single)
        rows.append(Row(SECTION, "group ingest, 1 member", "events/s", single))
        rows.append(
            Row(
                SECTION,
                "group ingest, 2 members (two processes, one group)",
                "events/s",
                double,
                notes=[f"2 members / 1 member: {ratio:.2f}x (target >= 1.6x)"],
            )
        )
    finally:
        drop_keys(settings.redis_url, prefix)
    return rows


def burst_rows(settings: Settings) -> list[Row]:
    events = 20_000 if settings.quick else settings.burst_events
    rows = []
    for size in (1, 2):
        prefix = new_prefix()
        url = stream_url(settings.redis_url, prefix)
        try:
            log(f"durable: burst of {events} events with {size} member(s) following")
            members = [
                Child(
                    "stream-member",
                    {"url": url, "group": "burst", "member": f"m{i}", "idle": 3.0, "lease": 1.0},
                )
                for i in range(size)
            ]
            try:
                for member in members:
                    member.expect(60)
                go = time.monotonic()
                for member in members:
                    member.send({"go": go})
                sender = Child(
                    "e2e-dispatch",
                    {
                        "url": url,
                        "exchange": "celeryev",
                        "system": "evcore",
                        "events": events,
                        "seconds": 600,
                        "seed": 2,
                        "batched": True,
                        "background": True,
                    },
                )
                try:
                    sender.expect(120)
                    sender.send({"cmd": "go"})
                    sent = sender.expect(900)
                finally:
                    sender.close()
                reports = [member.expect(900) for member in members]
            finally:
                for member in members:
                    member.close()
        finally:
            drop_keys(settings.redis_url, prefix)
        end = max(report["last"] for report in reports)
        lost = sum(report["lost"] for report in reports)
        tasks = sum(report["tasks"] for report in reports)
        send_rate = sent["sent"] / max(sent["end"] - sent["start"], 1e-9)
        catch_up = max(end - sent["end"], 0.0)
        applied = sent["sent"] / max(end - sent["start"], 1e-9)
        rows.append(
            Row(
                SECTION,
                f"overload burst: {events:,} events sent batched, {size} member(s) following",
                "s to catch up",
                [catch_up],
                notes=[
                    f"sent at {send_rate:,.0f} ev/s; applied {applied:,.0f} ev/s end to end; "
                    f"lost {lost}; tasks held {tasks}"
                ],
                lower_is_better=True,
            )
        )
    return rows


def kill_rows(settings: Settings) -> list[Row]:
    """A checkpointing ``evcore monitor`` killed with SIGKILL at random moments while a
    sender appends the stream, restarted each time; at the end its State must hold every
    event once (event_count equal to the events sent, every task)."""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import tempfile

    from benchmarks.common import ROOT
    from benchmarks.workload import make_events, tasks_for_events

    events = 20_000 if settings.quick else settings.kill_events
    prefix = new_prefix()
    url = stream_url(settings.redis_url, prefix)
    command = [sys.executable, "-c", "from evcore.cli import main; main()", "monitor", url]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    expected_tasks = len(
        {e["uuid"] for e in make_events(tasks_for_events(events), seed=3)[:events] if "uuid" in e}
    )
    rnd = random.Random(14)
    kills = 0
    log(f"durable: kill -9 and resume during a {events}-event run")
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = os.path.join(scratch, "monitor.json")
        options = ["--checkpoint", checkpoint, "--interval", "0.5", "--max-tasks", "1000000"]
        sender = Child(
            "e2e-dispatch",
            {
                "url": url,
                "exchange": "celeryev",
                "system": "evcore",
                "events": events,
                "seconds": 900,
                "seed": 3,
                "batched": False,
                "background": True,
            },
        )
        try:
            sender.expect(120)
            sender.send({"cmd": "go"})
            started = time.monotonic()
            sender_done: dict[str, Any] | None = None
            while True:
                monitor = subprocess.Popen(
                    [*command, *options],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(rnd.uniform(0.7, 2.5))
                monitor.send_signal(signal.SIGKILL)
                monitor.wait()
                kills += 1
                if sender_done is None:
                    sender_done = sender.poll_line(0.0)
                # At least three kills, the later ones while the monitor catches up.
                if (sender_done is not None and kills >= 3) or kills >= 20:
                    break
            sent_seconds = time.monotonic() - started
        finally:
            sender.close()
        final = subprocess.run(
            [*command, *options, "--idle-exit", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        report = json.loads(final.stdout.strip().splitlines()[-1])
        with open(checkpoint, "rb") as file:
            saved = json.load(file)
    drop_keys(settings.redis_url, prefix)
    # The sender's warm-up event is applied too.
    applied = saved["state"]["counters"]["event_count"] - 1
    tasks = len(saved["state"]["tasks"])
    return [
        Row(
            SECTION,
            f"kill -9 of a checkpointing monitor {kills} times during a {events:,}-event run, "
            "then resume",
            "events applied",
            [float(applied)],
            notes=[
                f"events sent {events:,}, applied {applied:,} (lost {max(events - applied, 0)}, "
                f"applied twice {max(applied - events, 0)}); tasks {tasks:,}/{expected_tasks:,}; "
                f"lost by sequence {report['lost']}; kill phase {sent_seconds:.0f} s"
            ],
        )
    ]


def durable_section(settings: Settings) -> list[Row]:
    return [
        *e2e_rows(settings),
        *replay_and_group_rows(settings),
        *burst_rows(settings),
        *kill_rows(settings),
    ]
