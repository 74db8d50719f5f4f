"""A small HTTP load generator for ``benchmarks/serve.py``, run in its own process.

``python serve_load.py URL CONCURRENCY REQUESTS [RATE]``: CONCURRENCY threads, each with a
keep-alive connection, share REQUESTS GETs of URL (RATE > 0: at most RATE per second in
all). Prints the latencies' percentiles (ms) as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

import httpx


def main() -> None:
    url, concurrency, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    remaining = [requests]
    interval = concurrency / rate if rate > 0 else 0.0

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                began = time.perf_counter()
                try:
                    response = client.get(url)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - began
                with lock:
                    if ok:
                        latencies.append(elapsed * 1000)
                    else:
                        errors[0] += 1
                if interval:
                    time.sleep(max(0.0, interval - elapsed))

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies.sort()
    count = len(latencies) or 1
    print(
        json.dumps(
            {
                "concurrency": concurrency,
                "requests": len(latencies),
                "errors": errors[0],
                "p50": statistics.median(latencies) if latencies else 0.0,
                "p99": latencies[min(count - 1, int(count * 0.99))] if latencies else 0.0,
                "max": latencies[-1] if latencies else 0.0,
                "rps": len(latencies) / wall,
            }
        )
    )


if __name__ == "__main__":
    main()
