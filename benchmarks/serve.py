"""``evcore serve`` under load: ``python -m benchmarks.serve [--quick]``.

1. A State of 100k tasks (received, started, succeeded) on 1,000 workers with heartbeats,
   20 task names, fed through the service's own path (``Monitor.apply``).
2. The service runs in this process (uvicorn on a free port, as ``evcore serve`` does); a
   load generator in another process (``benchmarks/serve_load.py``) measures ``/metrics``
   scrapes and ``/api/tasks?limit=100`` latencies with concurrent clients.
3. The ingest cost of serving: events published on ``memory://`` and consumed through the
   AsyncReceiver into the State, with and without a client scraping once a second and
   querying the API, alternated, medians reported.

Prints a Markdown report; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import uvicorn

from evcore import Dispatcher
from evcore.gc_tuning import tune_gc
from evcore.serve.app import create_app
from evcore.serve.metrics import exposition
from evcore.serve.monitor import Monitor, MonitorOptions
from evcore.serve.runner import server_config

HERE = Path(__file__).resolve().parent
LOAD = HERE / "serve_load.py"
NAMES = [f"proj.tasks.task_{number:02d}" for number in range(20)]


def fill(monitor: Monitor, tasks: int, workers: int, start: float) -> float:
    """Feed ``tasks`` lifecycles over ``workers`` workers; the events applied per second."""
    hosts = [f"celery@worker-{number:04d}" for number in range(workers)]
    events: list[dict[str, Any]] = []
    clock = 0

    def add(type_: str, host: str, at: float, **fields: Any) -> None:
        nonlocal clock
        clock += 1
        events.append(
            {
                "type": type_,
                "hostname": host,
                "timestamp": at,
                "local_received": at,
                "clock": clock,
                "utcoffset": 0,
                "pid": 1,
                **fields,
            }
        )

    for number, host in enumerate(hosts):
        add(
            "worker-online",
            host,
            start + number * 1e-3,
            freq=2.0,
            sw_ident="py-celery",
            sw_ver="5.7.0",
            sw_sys="Linux",
        )
    for number in range(tasks):
        host = hosts[number % workers]
        name = NAMES[number % len(NAMES)]
        at = start + number * 1e-3
        task_id = f"{number:08d}-{uuid.UUID(int=number)}"
        add("task-received", host, at, uuid=task_id, name=name, args=f"({number}, 2)", kwargs="{}")
        add("task-started", host, at + 0.01, uuid=task_id)
        add(
            "task-succeeded",
            host,
            at + 0.02,
            uuid=task_id,
            result=str(number),
            runtime=0.01 + (number % 100) / 100,
        )
        if number % 100 == 0:
            add("worker-heartbeat", host, at, freq=2.0, active=1, processed=number)
    began = time.perf_counter()
    for offset in range(0, len(events), 500):
        monitor.apply(events[offset : offset + 500])
    return len(events) / (time.perf_counter() - began)


def load(base: str, path: str, concurrency: int, requests: int, rate: float = 0.0) -> Any:
    """Run the load generator in its own process; its JSON answer."""
    answer = subprocess.run(
        [sys.executable, str(LOAD), base + path, str(concurrency), str(requests), str(rate)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(answer.stdout)


async def start_server(
    monitor: Monitor, manage_monitor: bool
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """uvicorn serving the monitor on a free port, as ``evcore serve`` does; its base URL."""
    app = create_app(monitor, manage_monitor=manage_monitor)
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, "warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def serve_and_measure(monitor: Monitor, quick: bool) -> dict[str, Any]:
    server, task, base = await start_server(monitor, manage_monitor=False)
    results: dict[str, Any] = {}
    try:
        count = 20 if quick else 100
        results["metrics_serial"] = await asyncio.to_thread(load, base, "/metrics", 1, count * 2)
        # as Prometheus scrapes: one at a time, here once a second
        results["metrics_paced"] = await asyncio.to_thread(
            load, base, "/metrics", 1, count // 5, 1.0
        )
        results["api_serial"] = await asyncio.to_thread(
            load, base, "/api/tasks?limit=100", 1, count
        )
        results["api_concurrent"] = await asyncio.to_thread(
            load, base, "/api/tasks?limit=100", 8, count * 4
        )
        results["api_filtered"] = await asyncio.to_thread(
            load,
            base,
            "/api/tasks?limit=100&taskname=proj.tasks.task_03&state=SUCCESS",
            8,
            count * 2,
        )
        results["info_concurrent"] = await asyncio.to_thread(
            load, base, "/api/task/info/00000042-" + str(uuid.UUID(int=42)), 8, count * 4
        )
        for rate in (2.0, 20.0):
            results[f"serving_cpu_{rate:g}"] = await serving_cpu(base, rate, 3 if quick else 10)
    finally:
        server.should_exit = True
        await task
    return results


async def serving_cpu(base: str, queries_per_second: float, seconds: float) -> float:
    """CPU seconds this process spends per wall second answering one /metrics scrape a
    second and ``queries_per_second`` /api/tasks?limit=100 queries (nothing else runs)."""
    loaders = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(LOAD),
            base + path,
            "1",
            str(int(rate * seconds)),
            str(rate),
            stdout=subprocess.DEVNULL,
        )
        for path, rate in (("/metrics", 1.0), ("/api/tasks?limit=100", queries_per_second))
    ]
    await asyncio.sleep(0.5)  # the clients start up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds - 1.0)
    used = (time.process_time() - cpu) / (time.perf_counter() - wall)
    for loader in loaders:
        await loader.wait()
    return used


def ingest_rate(url: str, events: int, queries_per_second: float) -> tuple[float, float]:
    """Events per second from publish to applied, through AsyncReceiver and the State,
    with the service listening and (``queries_per_second`` > 0) a client scraping once a
    second and another querying ``/api/tasks?limit=100`` at that rate; and this process's
    CPU microseconds per event (publishing, consuming, applying and serving: less disturbed
    by other processes)."""
    monitor = Monitor(url, MonitorOptions(max_tasks=100_000))

    async def main() -> tuple[float, float]:
        server, serving, base = await start_server(monitor, manage_monitor=True)
        loaders: list[subprocess.Popen[str]] = []
        if queries_per_second:
            loaders = [
                subprocess.Popen(
                    [sys.executable, str(LOAD), base + path, "1", str(count), str(rate)],
                    stdout=subprocess.DEVNULL,
                    text=True,
                )
                for path, count, rate in (
                    ("/metrics", 1000, 1.0),
                    ("/api/tasks?limit=100", 100_000, queries_per_second),
                )
            ]
            await asyncio.sleep(1.0)
        dispatcher = Dispatcher(
            url, hostname="celery@bench", buffer_group={"task"}, buffer_limit=100
        )
        began = time.perf_counter()
        cpu = time.process_time()

        def publish() -> None:
            for number in range(events // 2):
                dispatcher.send("task-received", uuid=f"i{number}", name=NAMES[number % 20])
                dispatcher.send("task-succeeded", uuid=f"i{number}", runtime=0.01)
            dispatcher.flush()

        await asyncio.to_thread(publish)
        while monitor.state.event_count < events:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu
        dispatcher.close()
        for loader in loaders:
            loader.terminate()
            loader.wait()
        server.should_exit = True
        await serving
        return events / elapsed, cpu / events * 1e6

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument(
        "--tune-gc", action="store_true", help="tune the garbage collector as evcore serve does"
    )
    args = parser.parse_args()
    if args.tune_gc:
        tune_gc()
    tasks = args.tasks or (10_000 if args.quick else 100_000)
    monitor = Monitor(None, MonitorOptions(max_tasks=tasks, max_workers=args.workers))
    rate = fill(monitor, tasks, args.workers, time.time() - tasks * 1e-3)
    gc_mode = "tuned as evcore serve does" if args.tune_gc else "Python's defaults"
    print(f"# evcore serve benchmark ({'quick' if args.quick else 'full'})\n")
    print(f"- garbage collector: {gc_mode}")
    print(f"- machine: {os.cpu_count()} cores, shared with other sessions (loaded)")
    print(
        f"- State: {len(monitor.state.tasks)} tasks, {len(monitor.state.workers)} workers; "
        f"fed through Monitor.apply at {rate:,.0f} events/s"
    )
    timings = []
    for _ in range(5):
        began = time.perf_counter()
        body = exposition(monitor.metrics)
        timings.append(time.perf_counter() - began)
    lines = body.count(b"\n")
    print(
        f"- /metrics rendered in-process: median {statistics.median(timings) * 1000:.1f} ms, "
        f"{len(body) / 1024:.0f} KiB, {lines} lines"
    )
    results = asyncio.run(serve_and_measure(monitor, args.quick))
    print("\n| request | clients | requests | p50 ms | p99 ms | max ms | req/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, key in (
        ("/metrics", "metrics_serial"),
        ("/metrics (one a second)", "metrics_paced"),
        ("/api/tasks?limit=100", "api_serial"),
        ("/api/tasks?limit=100", "api_concurrent"),
        ("/api/tasks?limit=100&taskname=..&state=SUCCESS", "api_filtered"),
        ("/api/task/info/<uuid>", "info_concurrent"),
    ):
        row = results[key]
        print(
            f"| `{label}` | {row['concurrency']} | {row['requests']} | {row['p50']:.1f} | "
            f"{row['p99']:.1f} | {row['max']:.1f} | {row['rps']:.0f} |"
        )
    for rate in (2.0, 20.0):
        share = results[f"serving_cpu_{rate:g}"]
        print(
            f"- serving one /metrics scrape a second and {rate:g} /api/tasks?limit=100 "
            f"queries a second on this State uses {share * 100:.1f}% of one core"
        )
    events = 20_000 if args.quick else 100_000
    url = f"memory://bench-serve-{uuid.uuid4().hex[:8]}"
    loads = (0.0, 2.0, 20.0)
    runs: dict[float, list[tuple[float, float]]] = {rate: [] for rate in loads}
    for _ in range(1 if args.quick else 5):  # alternate the loads
        for rate in loads:
            runs[rate].append(ingest_rate(url, events, rate))
    rate_idle = statistics.median(rate for rate, _ in runs[0.0])
    cpu_idle = statistics.median(cpu for _, cpu in runs[0.0])
    print(
        f"\n- ingest, publish to applied ({events:,} events on memory://, medians of "
        f"{len(runs[0.0])} alternated runs); served = one /metrics scrape a second plus "
        "/api/tasks?limit=100 queries:\n"
    )
    print("| load | events/s | cost | CPU us/event | CPU cost | runs (events/s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rate in loads:
        throughput = statistics.median(value for value, _ in runs[rate])
        cpu = statistics.median(value for _, value in runs[rate])
        label = "idle" if not rate else f"scrape 1/s + {rate:g} queries/s"
        print(
            f"| {label} | {throughput:,.0f} | {(1 - throughput / rate_idle) * 100:+.1f}% | "
            f"{cpu:.1f} | {(cpu / cpu_idle - 1) * 100:+.1f}% | "
            f"{[round(value) for value, _ in runs[rate]]} |"
        )


if __name__ == "__main__":
    main()
