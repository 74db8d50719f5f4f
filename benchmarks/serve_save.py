"""What a save of ``evcore serve --state-file`` costs: ``python -m benchmarks.serve_save``.

A State of N task lifecycles on 1,000 workers (fed as ``benchmarks.serve`` feeds it) is
saved as the service saves it: the State copied into its snapshot (on a durable stream,
applying events pauses for this part), then encoded and written atomically with fsync.
Medians of five saves per size; prints a Markdown table, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.serve import fill
from evcore.aio import StreamMark
from evcore.serve.monitor import Monitor, MonitorOptions
from evcore.state.snapshot import snapshot


def measure(tasks: int, workers: int, folder: Path) -> tuple[float, float, int]:
    """Median seconds to copy the State and to save it whole, and the file's size."""
    path = folder / f"state-{tasks}.json"
    monitor = Monitor(None, MonitorOptions(max_tasks=tasks, state_file=path))
    fill(monitor, tasks, workers, time.time() - tasks * 1e-3)
    mark = StreamMark({0: "1700000000000-0"}, {}, (), 0)
    copies, saves = [], []
    for _ in range(5):
        began = time.perf_counter()
        snapshot(monitor.state)
        copies.append(time.perf_counter() - began)
        began = time.perf_counter()
        monitor.save(mark)
        saves.append(time.perf_counter() - began)
    return statistics.median(copies), statistics.median(saves), os.path.getsize(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=1000)
    args = parser.parse_args()
    print("| tasks | copy (ingest paused on a stream) | whole save (copy, encode, fsync) | file |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for tasks in args.tasks:
            copy, whole, size = measure(tasks, args.workers, Path(folder))
            print(
                f"| {tasks:,} | {copy * 1000:.0f} ms ({copy / tasks * 1e6:.1f} us a task) | "
                f"{whole * 1000:.0f} ms | {size / 2**20:.1f} MiB |"
            )


if __name__ == "__main__":
    main()
