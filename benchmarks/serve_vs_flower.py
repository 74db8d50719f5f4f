"""``evcore serve`` and Flower 2.2 side by side: ``python -m benchmarks.serve_vs_flower``.

Both run as processes on a private ``redis-server`` (free port), fed the same stream of
task lifecycles published in Celery's format; then the load generator
(``benchmarks/serve_load.py``) asks each the same requests, one service at a time. Prints a
Markdown table with the ratios; nothing is asserted. Needs ``redis-server`` on PATH and the
``test`` extra (Flower).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from evcore import Dispatcher

HERE = Path(__file__).resolve().parent
LOAD = HERE / "serve_load.py"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(check: Any, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (httpx.HTTPError, ValueError):  # not up yet, or an HTML error page
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def publish(url: str, tasks: int, workers: int) -> float:
    """Publish ``tasks`` lifecycles (received, started, succeeded) from ``workers`` workers;
    the seconds it took."""
    began = time.perf_counter()
    dispatchers = [
        Dispatcher(url, hostname=f"celery@bench-{number:02d}", buffer_group={"task"})
        for number in range(workers)
    ]
    for dispatcher in dispatchers:
        dispatcher.send("worker-online", freq=2.0, sw_ident="py-celery", sw_ver="5.7.0")
    for number in range(tasks):
        dispatcher = dispatchers[number % workers]
        task_id = str(uuid.UUID(int=number))
        dispatcher.send(
            "task-received",
            uuid=task_id,
            name=f"proj.task_{number % 20}",
            args=f"({number},)",
            kwargs="{}",
            retries=0,
        )
        dispatcher.send("task-started", uuid=task_id)
        dispatcher.send("task-succeeded", uuid=task_id, result=str(number), runtime=0.01)
        if number % 500 == 499:
            for each in dispatchers:
                each.flush()
            time.sleep(0.05)  # a pace both subscribers keep up with
    for dispatcher in dispatchers:
        dispatcher.flush()
        dispatcher.close()
    return time.perf_counter() - began


def load(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, str(LOAD), url, str(concurrency), str(requests)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(answer.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    redis_port, flower_port, evcore_port = free_port(), free_port(), free_port()
    broker = f"redis://127.0.0.1:{redis_port}/0"
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    started: list[subprocess.Popen[bytes]] = []

    def start(*command: str) -> None:
        started.append(
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    try:
        start(
            binary,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        )
        time.sleep(0.5)
        start(
            str(BIN / "celery"),
            "--broker",
            broker,
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
            f"--max_tasks={args.tasks}",
        )
        start(
            str(BIN / "evcore"),
            "serve",
            broker,
            "--port",
            str(evcore_port),
            "--max-tasks",
            str(args.tasks),
        )
        flower = f"http://127.0.0.1:{flower_port}"
        ours = f"http://127.0.0.1:{evcore_port}"
        wait(lambda: httpx.get(f"{flower}/healthcheck").status_code == 200, "Flower")
        wait(lambda: httpx.get(f"{ours}/readyz").status_code == 200, "evcore serve")
        time.sleep(2.0)  # Flower subscribes after its web server is up
        seconds = publish(broker, args.tasks, args.workers)
        last = str(uuid.UUID(int=args.tasks - 1))
        for base in (flower, ours):
            wait(
                lambda base=base: (
                    httpx.get(f"{base}/api/task/info/{last}").json().get("state") == "SUCCESS"
                ),
                f"{base} to see the last task",
            )
        print(f"# evcore serve vs Flower 2.2 ({args.tasks:,} tasks on {args.workers} workers)\n")
        print(
            f"- published {3 * args.tasks:,} events in {seconds:.1f} s to a private Redis; "
            f"machine: {os.cpu_count()} cores, shared with other sessions (loaded)\n"
        )
        print(
            "| request | clients | Flower p50 ms | evcore p50 ms | Flower p99 ms | "
            "evcore p99 ms | p50 ratio |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for path, concurrency in (
            ("/api/tasks?limit=100", 1),
            ("/api/tasks?limit=100", 8),
            ("/api/tasks?limit=100&state=SUCCESS&taskname=proj.task_03", 8),
            ("/api/tasks?limit=100&sort_by=-received", 8),
            (f"/api/task/info/{last}", 8),
            ("/metrics", 1),
        ):
            count = args.requests if path != "/metrics" else max(10, args.requests // 10)
            theirs = load(flower + path, concurrency, count)
            mine = load(ours + path, concurrency, count)
            print(
                f"| `{path.replace(last, '<uuid>')}` | {concurrency} | {theirs['p50']:.1f} | "
                f"{mine['p50']:.1f} | {theirs['p99']:.1f} | {mine['p99']:.1f} | "
                f"{theirs['p50'] / max(mine['p50'], 1e-9):.1f}x |"
            )
    finally:
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
