"""Shared pieces of the benchmark suite: settings, result rows, alternation, subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass
class Settings:
    """What one run of the suite does: sizes, repetitions, brokers."""

    redis_url: str
    amqp_url: str
    quick: bool
    reps: int
    #: Events per dispatch run (a run also stops after ``dispatch_seconds``).
    dispatch_events: int
    dispatch_seconds: float
    #: Events per end-to-end run (also bounded by ``e2e_seconds``).
    e2e_events: int
    e2e_seconds: float
    #: Tasks in the in-process State streams.
    state_tasks: int
    #: Task counts of the memory measurement.
    memory_tasks: tuple[int, ...]
    #: Messages per raw-limit run.
    raw_messages: int
    #: Events retained for the durable replay and group runs, and in the overload burst.
    replay_events: int = 200_000
    burst_events: int = 300_000
    kill_events: int = 200_000
    #: The PostgreSQL of the transports section (a libpq URL).
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/test"


def settings_for(quick: bool, reps: int | None, redis_url: str, amqp_url: str) -> Settings:
    if quick:
        return Settings(
            redis_url, amqp_url, True, reps or 1, 3000, 1.0, 2000, 2.0, 1000, (2000,), 3000
        )
    return Settings(
        redis_url,
        amqp_url,
        False,
        reps or 5,
        40_000,
        3.0,
        30_000,
        8.0,
        10_000,
        (10_000, 100_000),
        40_000,
    )


@dataclass
class Row:
    """One measured scenario: evcore's repetitions, Celery's (paired by index), or a
    single reference figure series (``celery`` empty)."""

    section: str
    scenario: str
    unit: str
    evcore: list[float] = field(default_factory=list)
    celery: list[float] = field(default_factory=list)
    #: Free text: messages arrived, events lost, what exactly ran.
    notes: list[str] = field(default_factory=list)
    #: True when a smaller figure is better (memory).
    lower_is_better: bool = False
    #: Key of the target this row answers, if any (see report.TARGETS).
    target: str | None = None

    @property
    def ratio(self) -> float | None:
        """evcore's median over Celery's median."""
        if not self.evcore or not self.celery:
            return None
        return statistics.median(self.evcore) / statistics.median(self.celery)

    @property
    def pair_ratios(self) -> list[float]:
        pairs = zip(self.evcore, self.celery, strict=False)
        return [ours / theirs for ours, theirs in pairs if theirs]


class Timer:
    """Bounds a loop by time: ``expired()`` checks the clock every ``every`` calls."""

    def __init__(self, seconds: float, every: int = 128) -> None:
        self.deadline = time.perf_counter() + seconds
        self.every = every
        self._calls = 0

    def expired(self) -> bool:
        self._calls += 1
        if self._calls % self.every:
            return False
        return time.perf_counter() >= self.deadline


def alternate(
    reps: int, contenders: Sequence[tuple[str, Callable[[], Any]]]
) -> dict[str, list[Any]]:
    """Run each contender once per repetition, in turn, alternating the order of the first
    two every repetition so neither always goes first."""
    results: dict[str, list[Any]] = {name: [] for name, _ in contenders}
    for rep in range(reps):
        order = list(contenders)
        if rep % 2 and len(order) > 1:
            order.reverse()
        for name, run in order:
            results[name].append(run())
    return results


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Child:
    """A ``python -m benchmarks.roles`` subprocess speaking JSON lines on stdin/stdout."""

    def __init__(self, role: str, config: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.roles", role, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def expect(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; RuntimeError if none comes in time or the child died."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"benchmark child gave no answer within {timeout} s") from None
        if line is None:
            raise RuntimeError(f"benchmark child exited with {self.process.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def poll_line(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line if one comes within ``timeout``, else None."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            raise RuntimeError(f"benchmark child exited with {self.process.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self, timeout: float = 10.0) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def pika_parameters(url: str) -> Any:
    """pika's parameters for a kombu-style URL (``amqp://u:p@host:5672//`` is vhost ``/``)."""
    from urllib.parse import quote, urlparse

    import pika

    parsed = urlparse(url.replace("pyamqp://", "amqp://", 1))
    vhost = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    vhost = vhost or "/"
    return pika.URLParameters(parsed._replace(path="/" + quote(vhost, safe="")).geturl())


def emit(message: dict[str, Any]) -> None:
    """A role's answer to the parent: one JSON line on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
