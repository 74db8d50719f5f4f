"""``evcore dump`` and ``evcore top`` against a real Celery worker over a real Redis.

A ``celery worker -E --pool solo`` subprocess runs the tiny app in ``cli_celery_app.py``;
the test sends it tasks as a Celery client and runs the real ``evcore`` console script.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = pytest.mark.redis

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
DB = 12
DEADLINE = 60.0
#: One queue for the whole run: Celery caches its routing once a task has been sent.
QUEUE = f"evcore-cli-{uuid.uuid4().hex[:8]}"


def on_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


class Lines:
    """The lines a stream produces, read by a thread, waited for with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def until(self, predicate: Any, timeout: float = DEADLINE) -> str:
        """Read until a line satisfies ``predicate``; fail after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line; saw {self.seen[-20:]}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


@pytest.fixture
def broker(redis_url: str) -> str:
    return on_db(redis_url, DB)


@pytest.fixture
def environment(broker: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        **os.environ,
        "EVCORE_CLI_BROKER": broker,
        "EVCORE_CLI_QUEUE": QUEUE,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    for name in ("EVCORE_CLI_BROKER", "EVCORE_CLI_QUEUE"):  # for the client in this process
        monkeypatch.setenv(name, env[name])
    return env


@pytest.fixture
def worker_name() -> str:
    return f"clitest-{uuid.uuid4().hex[:6]}@localhost"


@pytest.fixture
def celery_worker(
    broker: str, environment: dict[str, str], worker_name: str
) -> Iterator[subprocess.Popen[str]]:
    """A real Celery worker with events on, killed at the end whatever happens."""
    process = subprocess.Popen(
        [
            str(BIN / "celery"),
            "-A",
            "cli_celery_app",
            "--broker",
            broker,
            "worker",
            "-E",
            "--pool",
            "solo",
            "-n",
            worker_name,
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ],
        cwd=HERE,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        stop(process, signal.SIGTERM)


def client() -> Any:
    """The app of the tiny module, as a client of the same broker and queue."""
    sys.path.insert(0, str(HERE))
    try:
        import cli_celery_app
    finally:
        sys.path.remove(str(HERE))
    cli_celery_app.app.conf.broker_url = os.environ["EVCORE_CLI_BROKER"]
    cli_celery_app.app.conf.task_default_queue = os.environ["EVCORE_CLI_QUEUE"]
    return cli_celery_app


def evcore(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "evcore"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_dump_shows_a_celery_workers_events(
    broker: str,
    environment: dict[str, str],
    worker_name: str,
    request: pytest.FixtureRequest,
) -> None:
    as_json = evcore("dump", broker, "--json", "--timeout", str(DEADLINE), env=environment)
    as_text = evcore("dump", "--timeout", str(DEADLINE), env={**environment, "EVCORE_URL": broker})
    try:
        for process in (as_json, as_text):
            assert process.stderr is not None
            Lines(process.stderr).until(lambda line: "capturing from" in line)
        json_lines, text_lines = Lines(as_json.stdout), Lines(as_text.stdout)  # type: ignore[arg-type]
        request.getfixturevalue("celery_worker")

        # Other runs may share the database: wait for this test's own worker.
        online = json_lines.until(
            lambda line: json.loads(line)["hostname"] == worker_name
            and json.loads(line)["type"] == "worker-online"
        )
        assert json.loads(online)["freq"] == 2.0

        app = client()
        ok, failing = app.add.delay(2, 3), app.boom.delay()

        def event_of(uuid: str, type: str) -> Any:
            return lambda line: json.loads(line).get("uuid") == uuid and (
                json.loads(line)["type"] == type
            )

        succeeded = json.loads(json_lines.until(event_of(ok.id, "task-succeeded")))
        assert succeeded["hostname"] == worker_name and succeeded["result"] == "5"
        failed = json.loads(json_lines.until(event_of(failing.id, "task-failed")))
        assert "ValueError('boom')" in failed["exception"]
        types = [json.loads(line)["type"] for line in json_lines.seen]
        assert {"task-sent", "task-received", "task-started", "worker-online"} <= set(types)

        line = text_lines.until(lambda line: f"task succeeded: cli_celery_app.add({ok.id})" in line)
        assert line.startswith(f"{worker_name} [")
        assert "args=(2, 3) kwargs={} " in line and "result=5, runtime=" in line
    finally:
        codes = [stop(as_json), stop(as_text)]
    assert codes == [0, 0]


def test_top_once_shows_a_celery_worker_and_its_tasks(
    broker: str,
    environment: dict[str, str],
    worker_name: str,
    celery_worker: subprocess.Popen[str],
) -> None:
    app = client()
    top = evcore("top", broker, "--once", "--duration", "8", env=environment)
    sent: list[str] = []
    end = time.monotonic() + 12
    while top.poll() is None and time.monotonic() < end:
        sent.append(app.add.delay(len(sent), 1).id)
        time.sleep(0.5)
    output, errors = top.communicate(timeout=30)
    assert top.returncode == 0, errors
    rows = output.splitlines()
    worker_row = next(row for row in rows if row.startswith(worker_name))
    assert worker_row.split()[1] == "ONLINE"
    # Other runs may share the database: look only at this test's tasks.
    ours = [row.split() for row in rows if any(task in row for task in sent)]
    assert ours, output
    assert all(row[1] == "cli_celery_app.add" for row in ours)
    assert ["SUCCESS", worker_name] in [[row[0], row[3]] for row in ours], output


def test_demo_publishes_what_celerys_own_state_understands(redis_url: str) -> None:
    """``evcore demo --url`` watched by Celery's EventReceiver and State, as Flower does."""
    from celery import Celery

    from evcore import Dispatcher

    broker = on_db(redis_url, DB + 1)
    app = Celery("demo-watcher", broker=broker)
    state = app.events.State()
    probes: list[str] = []

    def handle(event: dict[str, Any]) -> None:
        if event["type"] == "custom-probe":
            probes.append(event["hostname"])
        else:
            state.event(event)

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": handle})
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        thread.start()
        try:
            # Celery's receiver subscribes in its own time: probe until it hears us.
            with Dispatcher(broker, hostname="probe@test") as probe:
                end = time.monotonic() + 20
                while not probes and time.monotonic() < end:
                    probe.send("custom-probe")
                    time.sleep(0.1)
            assert probes, "Celery's receiver never subscribed"
            command = ["demo", "--url", broker, "--no-monitor", "--duration", "4", "--rate", "10"]
            demo = subprocess.run(
                [str(BIN / "evcore"), *command, "--seed", "1"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert demo.returncode == 0, demo.stderr
            end = time.monotonic() + 20
            demo_workers: list[Any] = []
            while time.monotonic() < end:
                demo_workers = [w for w in state.workers.values() if "demo-worker" in w.hostname]
                if len(demo_workers) == 3 and not any(w.alive for w in demo_workers):
                    break
                time.sleep(0.1)
        finally:
            receiver.should_stop = True
            thread.join(timeout=15)
    assert len(demo_workers) == 3
    assert not any(worker.alive for worker in demo_workers)  # worker-offline at the end
    tasks = [task for _, task in state.tasks_by_time() if (task.name or "").startswith("demo.")]
    assert len(tasks) >= 10
    states = {task.state for task in tasks}
    assert "SUCCESS" in states
    done = next(task for task in tasks if task.state == "SUCCESS")
    assert done.received and done.started and done.succeeded and done.runtime is not None
    assert done.worker.hostname.startswith("demo-worker")
