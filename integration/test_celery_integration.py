"""``evcore.celery`` with a real ``celery worker -E`` (a subprocess): its events go through an
evcore transport to an evcore Receiver, which sees every task's lifecycle, and to
``celery events --dump``, which keeps working.

Parametrized by the transport the events go through (``EVENT_TRANSPORTS``): each entry
names the fixture giving that transport's URL. The Celery broker is always the real Redis;
the events go elsewhere (another Redis database here), so what arrives can only have come
through evcore.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from _net import wait_for

from evcore import Receiver

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
BROKER_DB, EVENTS_DB = 10, 11
DEADLINE = 30.0


def on_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def redis_events(request: pytest.FixtureRequest) -> str:
    return on_db(request.getfixturevalue("redis_url"), EVENTS_DB)


def sqs_events(request: pytest.FixtureRequest) -> str:
    from _sqs_support import sqs_url

    return sqs_url(request.getfixturevalue("moto_endpoint"))


def postgres_events(request: pytest.FixtureRequest) -> str:
    from _pgnotify_support import notify_url

    return notify_url(request.getfixturevalue("postgres_url"))


#: Transport name -> how to get the URL the worker's events go through. Add a transport
#: here (with its mark) to run the whole test over it.
EVENT_TRANSPORTS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "redis": redis_events,
    "sqs": sqs_events,
    "postgres": postgres_events,
}


@pytest.fixture(
    params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in EVENT_TRANSPORTS]
)
def events_url(request: pytest.FixtureRequest) -> str:
    return EVENT_TRANSPORTS[request.param](request)


@pytest.fixture
def environment(redis_url: str, events_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    settings = {
        "EVCORE_CELERY_BROKER": on_db(redis_url, BROKER_DB),
        "EVCORE_CELERY_EVENTS_URL": events_url,
        "EVCORE_CELERY_QUEUE": f"evcore-celery-{suffix}",
        "EVCORE_CELERY_EXCHANGE": f"evtest.celery.{suffix}",
    }
    for name, value in settings.items():  # for the client in this process
        monkeypatch.setenv(name, value)
    return {
        **os.environ,
        **settings,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


def client() -> Any:
    """The app module, configured from this test's environment (a fresh import each time)."""
    sys.modules.pop("celery_evcore_app", None)
    sys.path.insert(0, str(HERE))
    try:
        import celery_evcore_app
    finally:
        sys.path.remove(str(HERE))
    return celery_evcore_app


def start(command: list[str], environment: dict[str, str], **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "celery"), "-A", "celery_evcore_app", *command],
        cwd=HERE,
        env=environment,
        text=True,
        **options,
    )


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def worker_name() -> str:
    return f"evcore-celery-{uuid.uuid4().hex[:6]}@localhost"


@pytest.fixture
def worker(environment: dict[str, str], worker_name: str) -> Iterator[subprocess.Popen[str]]:
    """``celery worker -E`` (prefork, two processes) with gossip on (it consumes from the
    broker through the integration's Receiver.queue), killed at the end whatever happens."""
    process = start(
        ["worker", "-E", "-c", "2", "-n", worker_name, "--without-mingle", "-l", "warning"],
        environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        stop(process)


class Seen:
    """Events a Receiver handles in a thread, waited for with a deadline."""

    def __init__(self, url: str, exchange: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.receiver = Receiver(url, handlers={"*": self.add}, exchange=exchange)
        self.thread = threading.Thread(target=self.receiver.capture, daemon=True)
        self.thread.start()

    def add(self, event: dict[str, Any]) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def until(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.events), timeout=DEADLINE):
                types = [(event["type"], event.get("uuid")) for event in self.events]
                raise AssertionError(f"timed out; saw {types}")

    def types(self, uuid: str) -> list[str]:
        """The types of a task's events, in the order received."""
        with self.changed:
            return [event["type"] for event in self.events if event.get("uuid") == uuid]

    def close(self) -> None:
        self.receiver.close()
        self.thread.join(timeout=5)


def test_a_celery_worker_publishes_every_tasks_lifecycle_through_evcore(
    events_url: str,
    environment: dict[str, str],
    worker_name: str,
    request: pytest.FixtureRequest,
) -> None:
    seen = Seen(events_url, environment["EVCORE_CELERY_EXCHANGE"])
    dump = start(["events", "--dump"], {**environment, "PYTHONUNBUFFERED": "1"},
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    # Read as it comes: on a polling transport (SQS) the dump may lag the test's Receiver.
    dumped: list[str] = []
    reader = threading.Thread(target=lambda: dumped.extend(dump.stdout or ()), daemon=True)
    reader.start()
    try:
        worker = request.getfixturevalue("worker")
        seen.until(lambda events: any(
            e["type"] == "worker-online" and e["hostname"] == worker_name for e in events
        ))
        # The dump is listening once it shows the worker (at the latest its next heartbeat).
        assert wait_for(lambda: worker_name in "".join(dumped), DEADLINE), "".join(dumped)
        app = client()
        tasks = [app.add.delay(2, 3), app.boom.delay(), app.progress.delay(), app.add.delay(1, 1)]
        ends = {"task-succeeded", "task-failed"}
        seen.until(lambda _: all(ends & set(seen.types(task.id)) for task in tasks))

        # The worker's main process sends each task's lifecycle, in order. task-sent comes
        # from the client (this process) and task-progress from the pool process running the
        # task: each from a sender of its own, so either may arrive before or after the
        # worker's batch, as with Celery's own events.
        for task, end in zip(tasks, ["succeeded", "failed", "succeeded", "succeeded"], strict=True):
            types = seen.types(task.id)
            assert types.count("task-sent") == 1
            assert types.count("task-progress") == (1 if task is tasks[2] else 0)
            lifecycle = [type for type in types if type not in {"task-sent", "task-progress"}]
            assert lifecycle == ["task-received", "task-started", f"task-{end}"]
        by_type = {(e["type"], e.get("uuid")): e for e in seen.events}
        succeeded = by_type["task-succeeded", tasks[0].id]
        assert succeeded["result"] == "5" and succeeded["hostname"] == worker_name
        assert "ValueError('boom')" in by_type["task-failed", tasks[1].id]["exception"]
        assert by_type["task-received", tasks[0].id]["name"] == "celery_evcore_app.add"
        assert seen.receiver.stats.lost_events == {}  # evcore's sequence headers: no gaps

        stop(worker)
        seen.until(lambda events: any(
            e["type"] == "worker-offline" and e["hostname"] == worker_name for e in events
        ))
        errors = worker.stderr.read() if worker.stderr else ""
        # The only traceback logged is the failing task's own.
        assert worker.returncode == 0 and errors.count("Traceback") == 1, errors
        expected = [
            f"task succeeded: celery_evcore_app.add({tasks[0].id})",
            f"task failed: celery_evcore_app.boom({tasks[1].id})",
        ]
        wait_for(lambda: all(line in "".join(dumped) for line in expected), DEADLINE)
    finally:
        seen.close()
        stop(dump)
        reader.join(timeout=5)
    # celery events --dump read the same events through app.events.Receiver (evcore's).
    output = "".join(dumped)
    for line in expected:
        assert line in output, output[-2000:]
