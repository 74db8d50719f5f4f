"""Soak: memory stays bounded on the durable path while events flow for a long time.

``python -m benchmarks.soak [--minutes 30] [--rate 3000] [--redis-url URL] [--out FILE]``

A sender appends the workload's events at a steady rate to Redis Streams with a retention
bound (``maxlen``), while a checkpointing ``evcore monitor`` with a task limit follows.
Every ``--every`` seconds it samples the monitor's RSS, the retained entries of every
partition (``XLEN``) and, from the monitor's checkpoint, the tasks it holds and the events it
applied. It writes a table (``--out``, default ``benchmarks/SOAK-durable.md``) and a plot
next to it. Nothing here asserts anything: it shows whether the bounds hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, log
from benchmarks.durable import drop_keys
from benchmarks.workload import make_events, sendable

PARTITIONS = 4


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def send_steadily(url: str, rate: float, stop: threading.Event, sent: list[int]) -> None:
    from evcore import Dispatcher

    with Dispatcher(url, hostname="w1@soak", background=True) as dispatcher:
        seed = 0
        started = time.monotonic()
        while not stop.is_set():
            seed += 1
            for type_, fields in sendable(make_events(500, seed=seed)):
                dispatcher.send(type_, **fields)
                sent[0] += 1
                ahead = sent[0] / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                if stop.is_set():
                    break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=3000.0, help="events per second")
    parser.add_argument("--maxlen", type=int, default=50_000, help="entries per partition")
    parser.add_argument("--max-tasks", type=int, default=10_000)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument(
        "--redis-url", default=os.environ.get("EVCORE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "SOAK-durable.md")
    options = parser.parse_args(argv)

    import redis

    prefix = f"evsoak-{uuid.uuid4().hex[:10]}:"
    url = (
        options.redis_url.replace("redis://", "redis+streams://", 1)
        + f"?partitions={PARTITIONS}&maxlen={options.maxlen}&exact_trim=false&prefix={prefix}"
    )
    client = redis.Redis.from_url(options.redis_url)
    keys = [f"{prefix}{{celeryev.{p}}}" for p in range(PARTITIONS)]
    stop = threading.Event()
    sent = [0]
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "soak.json"
        monitor = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from evcore.cli import main; main()",
                "monitor",
                url,
                "--checkpoint",
                str(checkpoint),
                "--interval",
                "5",
                "--max-tasks",
                str(options.max_tasks),
                "--start",
                "earliest",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        sender = threading.Thread(target=send_steadily, args=(url, options.rate, stop, sent))
        sender.start()
        started = time.monotonic()
        try:
            while time.monotonic() - started < options.minutes * 60:
                time.sleep(options.every)
                state: dict[str, Any] = {}
                with contextlib.suppress(OSError, ValueError, KeyError):
                    state = json.loads(checkpoint.read_bytes())["state"]
                sample = {
                    "seconds": round(time.monotonic() - started),
                    "sent": sent[0],
                    "applied": state.get("counters", {}).get("event_count", 0),
                    "tasks": len(state.get("tasks", ())),
                    "rss_mib": rss_of(monitor.pid) / 2**20,
                    "retained": sum(client.xlen(key) for key in keys),
                }
                samples.append(sample)
                log(f"soak: {sample}")
        finally:
            stop.set()
            sender.join()
            monitor.terminate()
            out, _ = monitor.communicate(timeout=60)
            drop_keys(options.redis_url, prefix)
            client.close()
    final = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    write(options, samples, final)
    return 0


def write(
    options: argparse.Namespace, samples: list[dict[str, Any]], final: dict[str, Any]
) -> None:
    lines = [
        "# Soak: the durable path over time",
        "",
        f"Command: `python -m benchmarks.soak --minutes {options.minutes:g} --rate "
        f"{options.rate:g} --maxlen {options.maxlen} --max-tasks {options.max_tasks}`; "
        f"Redis Streams with {PARTITIONS} partitions, retention {options.maxlen:,} entries per "
        f"partition (approximate trimming); `evcore monitor --max-tasks {options.max_tasks}` "
        "checkpointing every 5 s.",
        "",
        "| s | events sent | events applied | tasks held | monitor RSS (MiB) | entries retained |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s['seconds']} | {s['sent']:,} | {s['applied']:,} | {s['tasks']:,} "
            f"| {s['rss_mib']:.1f} | {s['retained']:,} |"
        )
    lines += [
        "",
        f"Monitor on exit: `{json.dumps(final)}`",
        "",
        f"![soak]({options.out.stem}.png)",
        "",
    ]
    options.out.write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rss_axis, length_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    times = [s["seconds"] / 60 for s in samples]
    rss_axis.plot(times, [s["rss_mib"] for s in samples], marker=".")
    rss_axis.set_ylabel("monitor RSS (MiB)")
    length_axis.plot(times, [s["retained"] for s in samples], marker=".", color="#d62728")
    length_axis.set_ylabel("entries retained (all partitions)")
    length_axis.set_xlabel("minutes")
    figure.suptitle("evcore durable path: memory over time")
    figure.tight_layout()
    figure.savefig(options.out.with_suffix(".png"), dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
