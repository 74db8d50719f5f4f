"""Memory soak of ``evcore serve``'s State under a memory budget:
``python -m benchmarks.serve_soak [--lifecycles N] [--budget BYTES]``.

Feeds N task lifecycles (received, started, succeeded; 1M by default) on 200 workers
through ``Monitor.apply`` with no count limit on tasks, only the budget, and runs the
housekeeping (retention and budget) every 50,000 events, as the service does every 10 s.
Samples the process's RSS and the State's estimated bytes; writes a CSV and a plot next
to this file (``serve_soak.csv``, ``serve_soak.png``) and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import uuid
from pathlib import Path
from typing import Any

from evcore.serve.monitor import Monitor, MonitorOptions
from evcore.state.retention import RetentionPolicy

HERE = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")
STEP = 50_000


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lifecycles", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=64 * 1024 * 1024)
    args = parser.parse_args()
    monitor = Monitor(
        None,
        MonitorOptions(max_tasks=None, retention=RetentionPolicy(memory_budget=args.budget)),
    )
    baseline = rss()
    hosts = [f"celery@worker-{number:03d}" for number in range(200)]
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    clock = 0
    batch: list[dict[str, Any]] = []
    applied = 0
    start = time.time()
    for number in range(args.lifecycles):
        host = hosts[number % len(hosts)]
        task_id = str(uuid.UUID(int=number))
        at = start + number * 1e-3
        for type_, fields in (
            (
                "task-received",
                {
                    "name": f"proj.task_{number % 20}",
                    "args": f"({number},)",
                    "kwargs": "{'size': 'large'}",
                },
            ),
            ("task-started", {}),
            ("task-succeeded", {"result": f"'{number}'", "runtime": 0.01}),
        ):
            clock += 1
            batch.append(
                {
                    "type": type_,
                    "uuid": task_id,
                    "hostname": host,
                    "timestamp": at,
                    "local_received": at,
                    "clock": clock,
                    **fields,
                }
            )
        if len(batch) >= 600:
            monitor.apply(batch)
            applied += len(batch)
            batch = []
            if applied % STEP < 600:
                monitor.housekeeping()
                rows.append(
                    {
                        "seconds": round(time.perf_counter() - began, 2),
                        "lifecycles": number + 1,
                        "rss_mib": round(rss() / 2**20, 1),
                        "estimated_mib": round(
                            monitor.options.retention.estimated_bytes / 2**20, 1
                        ),
                        "tasks": len(monitor.state.tasks),
                        "budget_evictions": monitor.options.retention.budget_evictions,
                    }
                )
    monitor.apply(batch)
    monitor.housekeeping()
    with open(HERE / "serve_soak.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot; pip install -e '.[bench]')")
    else:
        figure, axis = plt.subplots(figsize=(8, 4))
        lifecycles = [row["lifecycles"] / 1000 for row in rows]
        axis.plot(lifecycles, [row["rss_mib"] for row in rows], label="process RSS")
        axis.plot(lifecycles, [row["estimated_mib"] for row in rows], label="State estimate")
        axis.axhline(args.budget / 2**20, linestyle="--", color="grey", label="budget")
        axis.axhline(baseline / 2**20, linestyle=":", color="black", label="RSS before")
        axis.set_xlabel("task lifecycles (thousands)")
        axis.set_ylabel("MiB")
        axis.set_title("evcore serve: memory under a budget")
        axis.legend()
        figure.tight_layout()
        figure.savefig(HERE / "serve_soak.png", dpi=80)
    peak = max(row["rss_mib"] for row in rows)
    last = rows[-1]
    print(
        f"{args.lifecycles:,} lifecycles ({3 * args.lifecycles:,} events) in "
        f"{time.perf_counter() - began:.0f} s; budget {args.budget / 2**20:.0f} MiB"
    )
    print(
        f"RSS: before {baseline / 2**20:.1f} MiB, first sample {rows[0]['rss_mib']} MiB, "
        f"peak {peak} MiB, last "
        f"{last['rss_mib']} MiB; State estimate last {last['estimated_mib']} MiB with "
        f"{last['tasks']:,} tasks; {last['budget_evictions']:,} budget evictions"
    )


if __name__ == "__main__":
    main()
