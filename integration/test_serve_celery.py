"""``evcore serve`` against real Celery workers over a private Redis.

- Flower 2.2 and evcore serve watch the same event stream; a client written against
  Flower's task API gets the same answers from both.
- A worker killed with SIGKILL is shown late, then offline within twice its heartbeat
  interval, and its unfinished task is marked possibly lost.

The Redis is the test's own (``redis-server`` on a free port): Flower listens to the
broker's default ``celeryev`` exchange, which other sessions' tests also publish to on the
shared server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _net import free_port, wait_for
from _redis_support import PrivateRedis
from celery import Celery

from evcore.serve.metrics import exposition
from evcore.serve.monitor import Monitor, MonitorOptions

pytestmark = pytest.mark.redis

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
DEADLINE = 60.0
#: Celery's default event heartbeat interval (seconds).
HEARTBEAT = 2.0


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


@pytest.fixture
def broker() -> Iterator[str]:
    server = PrivateRedis()
    try:
        server.start()
    except RuntimeError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"cannot start a private redis-server: {exc}")
        pytest.skip(f"cannot start a private redis-server: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def environment(broker: str) -> dict[str, str]:
    return {
        **os.environ,
        "EVCORE_CLI_BROKER": broker,
        "EVCORE_CLI_QUEUE": f"evcore-serve-{uuid.uuid4().hex[:8]}",
        "FLOWER_UNAUTHENTICATED_API": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


class Processes:
    """Subprocesses started by a test, all stopped at its end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            list(command),
            cwd=HERE,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started.append(process)
        return process

    def worker(self, broker: str, name: str) -> subprocess.Popen[bytes]:
        # The threads pool keeps the worker's event loop (heartbeats, event flushes) running
        # while a task sleeps; the solo pool would block it.
        return self.start(
            str(BIN / "celery"),
            "-A",
            "cli_celery_app",
            "--broker",
            broker,
            "worker",
            "-E",
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "-n",
            name,
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        )

    def serve(self, broker: str, port: int, *options: str) -> subprocess.Popen[bytes]:
        return self.start(str(BIN / "evcore"), "serve", broker, "--port", str(port), *options)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop(process)


@pytest.fixture
def processes(environment: dict[str, str]) -> Iterator[Processes]:
    started = Processes(environment)
    try:
        yield started
    finally:
        started.stop_all()


def send(environment: dict[str, str], task: str, *args: Any) -> str:
    """Send ``cli_celery_app.<task>`` as a Celery client of this test's broker; its id."""
    app = Celery(broker=environment["EVCORE_CLI_BROKER"])
    app.conf.task_default_queue = environment["EVCORE_CLI_QUEUE"]
    app.conf.task_send_sent_event = True
    try:
        return str(app.send_task(f"cli_celery_app.{task}", args=args).id)
    finally:
        app.close()


def get_json(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def until(fetch: Callable[[], Any], check: Callable[[Any], bool], what: str) -> Any:
    found: list[Any] = []

    def ready() -> bool:
        value = fetch()
        if value is not None and check(value):
            found.append(value)
            return True
        return False

    assert wait_for(ready, timeout=DEADLINE, step=0.1), f"timed out waiting for {what}"
    return found[0]


#: Fields that depend on the receiving process, not on the stream: Lamport clocks (each
#: receiver keeps its own and replaces task-sent's) and nothing else.
RECEIVER_FIELDS = {"clock"}


def comparable(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        uuid: {key: value for key, value in task.items() if key not in RECEIVER_FIELDS}
        for uuid, task in tasks.items()
    }


def test_a_flower_client_gets_the_same_answers(
    broker: str, environment: dict[str, str], processes: Processes
) -> None:
    flower_port, evcore_port = free_port(), free_port()
    processes.start(
        str(BIN / "celery"),
        "--broker",
        broker,
        "flower",
        f"--port={flower_port}",
        "--address=127.0.0.1",
    )
    processes.serve(broker, evcore_port)
    flower = f"http://127.0.0.1:{flower_port}"
    ours = f"http://127.0.0.1:{evcore_port}"
    until(lambda: get_json(f"{ours}/readyz"), lambda body: body["ready"], "evcore serve")
    assert wait_for(
        lambda: (
            httpx.get(f"{flower}/healthcheck", timeout=5).status_code == 200
            if _listening(flower_port)
            else False
        ),
        timeout=DEADLINE,
        step=0.2,
    ), "Flower did not come up"
    time.sleep(1.0)  # Flower subscribes once its web server is up

    worker_name = f"servetest-{uuid.uuid4().hex[:6]}@localhost"
    processes.worker(broker, worker_name)
    ids = {send(environment, "add", n, n) for n in range(4)} | {send(environment, "boom")}

    def finished(tasks: Any) -> bool:
        return ids <= set(tasks) and all(
            tasks[uuid]["state"] in ("SUCCESS", "FAILURE") for uuid in ids
        )

    until(lambda: get_json(f"{flower}/api/tasks"), finished, "Flower to see the tasks")
    until(lambda: get_json(f"{ours}/api/tasks"), finished, "evcore to see the tasks")

    assert len(get_json(f"{ours}/api/tasks?state=FAILURE")) == 1
    queries = [
        "",
        "?limit=2",
        "?limit=2&offset=2",
        "?state=FAILURE",
        "?state=SUCCESS&sort_by=-received",
        "?taskname=cli_celery_app.add&sort_by=started",
        f"?workername={worker_name}&sort_by=name",
        "?sort_by=state",
    ]
    for query in queries:
        theirs = get_json(f"{flower}/api/tasks{query}")
        mine = get_json(f"{ours}/api/tasks{query}")
        assert list(mine) == list(theirs), query  # same tasks, same order
        assert comparable(mine) == comparable(theirs), query
    for uuid_ in ids:
        theirs = get_json(f"{flower}/api/task/info/{uuid_}")
        mine = get_json(f"{ours}/api/task/info/{uuid_}")
        assert comparable({uuid_: mine}) == comparable({uuid_: theirs})
    theirs = get_json(f"{flower}/api/task/types")
    assert get_json(f"{ours}/api/task/types") == theirs
    bad = httpx.get(f"{ours}/api/tasks?sort_by=nope", timeout=5)
    assert bad.status_code == httpx.get(f"{flower}/api/tasks?sort_by=nope", timeout=5).status_code


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_a_killed_worker_goes_late_then_offline_and_its_task_possibly_lost(
    broker: str, environment: dict[str, str], processes: Processes
) -> None:
    killed_worker_goes_offline(broker, environment, processes, shared=False)


@pytest.mark.amqp
def test_the_same_on_rabbitmq(amqp_url: str, environment: dict[str, str]) -> None:
    """On the machine's RabbitMQ, whose celeryev exchange other runs share."""
    environment = {**environment, "EVCORE_CLI_BROKER": amqp_url}
    processes = Processes(environment)
    try:
        killed_worker_goes_offline(amqp_url, environment, processes, shared=True)
    finally:
        processes.stop_all()


def killed_worker_goes_offline(
    broker: str, environment: dict[str, str], processes: Processes, *, shared: bool
) -> None:
    """Start evcore serve and a worker on ``broker``, SIGKILL the worker mid-task, and
    check liveness and loss (``shared``: other runs' events may be on the same stream)."""
    port = free_port()
    processes.serve(broker, port, "--lost-after", "1")
    ours = f"http://127.0.0.1:{port}"
    until(lambda: get_json(f"{ours}/readyz"), lambda body: body["ready"], "evcore serve")
    name = f"killtest-{uuid.uuid4().hex[:6]}@localhost"
    worker = processes.worker(broker, name)
    until(
        lambda: get_json(f"{ours}/api/workers"),
        lambda workers: workers.get(name, {}).get("status") == "online",
        "the worker online",
    )
    task_id = send(environment, "nap", 60)
    until(
        lambda: get_json(f"{ours}/api/task/info/{task_id}"),
        lambda info: info["state"] == "STARTED",
        "the task started",
    )
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    worker.wait(timeout=10)

    seen: dict[str, float] = {}

    def offline() -> bool:
        status = (get_json(f"{ours}/api/workers") or {}).get(name, {}).get("status")
        if status is not None:
            seen.setdefault(status, time.monotonic() - killed)
        return status == "offline"

    assert wait_for(offline, timeout=DEADLINE, step=0.1)
    assert "late" in seen
    assert seen["late"] < seen["offline"]
    # Offline within twice the heartbeat interval (plus this loop's polling step).
    assert seen["offline"] <= 2 * HEARTBEAT + 0.5, seen

    info = until(
        lambda: get_json(f"{ours}/api/task/info/{task_id}"),
        lambda info: "possibly_lost" in info,
        "the task marked possibly lost",
    )
    assert info["state"] == "STARTED"
    assert info["possibly_lost"] == "worker-silent"
    metrics = httpx.get(f"{ours}/metrics", timeout=5).text
    assert f'celery_worker_up{{hostname="{name}"}} 0.0' in metrics
    if not shared:
        assert 'evcore_tasks_marked_lost_total{reason="worker-silent"} 1.0' in metrics


def test_lost_tasks_are_reconciled_from_celerys_redis_result_backend(
    broker: str, environment: dict[str, str], processes: Processes
) -> None:
    """Results stored by a real Celery worker fill in tasks whose last events were lost."""
    environment["EVCORE_CLI_BACKEND"] = broker
    processes.worker(broker, f"results-{uuid.uuid4().hex[:6]}@localhost")
    app = Celery(broker=broker, backend=broker)
    app.conf.task_default_queue = environment["EVCORE_CLI_QUEUE"]
    try:
        ok = app.send_task("cli_celery_app.add", args=(2, 3))
        failing = app.send_task("cli_celery_app.boom")
        assert ok.get(timeout=DEADLINE) == 5
        with pytest.raises(Exception, match="boom"):
            failing.get(timeout=DEADLINE)
    finally:
        app.close()

    # A monitor that saw the tasks start on a worker that then went silent.
    monitor = Monitor(None, MonitorOptions(result_backend=broker))
    silent = time.time() - 60
    events = [
        {
            "type": "worker-heartbeat",
            "hostname": "ghost@x",
            "freq": 2.0,
            "timestamp": silent,
            "local_received": silent,
            "clock": 1,
        },
    ]
    for number, task_id in enumerate((ok.id, failing.id, "never-stored")):
        events.append(
            {
                "type": "task-started",
                "uuid": task_id,
                "hostname": "ghost@x",
                "name": "cli_celery_app.x",
                "timestamp": silent,
                "local_received": silent,
                "clock": 2 + number,
            }
        )
    monitor.apply(events)
    assert monitor.sweep() == 3
    assert asyncio.run(monitor.reconcile()) == 2
    tasks = monitor.state.tasks
    assert (tasks[ok.id].state, tasks[ok.id].result) == ("SUCCESS", "5")
    assert tasks[failing.id].state == "FAILURE"
    assert tasks[failing.id].exception == "ValueError('boom')"
    assert "Traceback" in tasks[failing.id].traceback
    assert set(monitor.losses.lost) == {"never-stored"}
    assert monitor.reconciler is not None
    assert monitor.reconciler.reconciled == {"SUCCESS": 1, "FAILURE": 1}
    assert asyncio.run(monitor.reconcile()) == 0  # not asked again right away
    metrics = exposition(monitor.metrics).decode()
    assert 'evcore_tasks_reconciled_total{state="SUCCESS"} 1.0' in metrics
    monitor.reconciler.source.close()
