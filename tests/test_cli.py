"""The ``evcore`` commands driven through click's CliRunner, on the in-memory transport."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from evcore import Dispatcher, MissingDependency, Receiver, connect
from evcore.cli import cli
from evcore.cli.dump import EventFilter
from evcore.cli.dumper import Dumper, format_timestamp, human_type
from evcore.cli.monitor import Monitor, RateMeter
from evcore.cli.view import ConnectionStatus, Snapshot, format_age, render, task_rows_that_fit
from evcore.simulator import ClusterSimulator, TaskKind
from evcore.transport import Exchange, QueueOptions
from evcore_memory import MemoryBus

LINE = re.compile(r"^(?P<host>\S+) \[(?P<ts>[^\]]+)\] (?P<human>[a-z ]+?)(?::|$)")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def wait_for_subscriber(bus: MemoryBus, timeout: float = 5.0) -> None:
    """Wait until some receiver has bound a queue on ``bus`` (the bus only delivers to
    queues bound before a publish)."""
    deadline = time.monotonic() + timeout
    while not bus._queues:
        if time.monotonic() > deadline:
            raise AssertionError("no subscriber appeared on the bus")
        time.sleep(0.01)


@pytest.fixture
def publish_when_subscribed(bus: MemoryBus, bus_url: str) -> Iterator[Callable[..., None]]:
    """Run ``publish(url)`` in a thread as soon as the command under test subscribes."""
    threads: list[threading.Thread] = []

    def start(publish: Callable[[str], None]) -> None:
        def run() -> None:
            wait_for_subscriber(bus)
            publish(bus_url)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def a_small_cluster(url: str) -> None:
    """One worker running one task, its task events batched, plus the client's task-sent."""
    with Dispatcher(url, hostname="w1@test", buffer_group={"task"}) as worker, Dispatcher(
        url, hostname="client@test", enabled=False
    ) as client:
        worker.send("worker-online", freq=2.0, active=0, processed=0, timestamp=1700000001.0)
        client.publish(
            "task-sent",
            {"uuid": "u1", "name": "demo.add", "args": "(1, 2)", "kwargs": "{}", "retries": 0},
        )
        worker.send("task-received", uuid="u1", name="demo.add", args="(1, 2)", kwargs="{}")
        worker.send("task-started", uuid="u1")
        worker.send("task-succeeded", uuid="u1", result="3", runtime=0.5)
        worker.flush()
        worker.send("worker-heartbeat", freq=2.0, active=0, processed=1)


# -- evcore transports -----------------------------------------------------------------------


def test_transports_lists_schemes_targets_and_distributions() -> None:
    result = invoke("transports")
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert rows["memory://"][0] == "evcore_memory:MemoryTransport"
    assert rows["redis://"][0] == "evcore_redis:RedisTransport"
    assert rows["memory://"][1] == "evcore"


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["dump", "top"])
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not-a-url", "Error: not a transport URL: 'not-a-url'"),
        ("nope://host", "Error: no transport is installed for the scheme 'nope'"),
    ],
)
def test_bad_url_and_unknown_scheme_fail_with_one_line(
    command: str, url: str, message: str
) -> None:
    result = invoke(command, url)
    assert result.exit_code == 1
    assert result.output.startswith(message)
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["dump", "top"])
def test_unreachable_broker_fails_with_one_line(command: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = invoke(command, url)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"Error: cannot reach the broker at {url}")
    assert "Traceback" not in result.output


def test_demo_to_an_unreachable_broker_fails_with_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = invoke("demo", "--url", url, "--no-monitor", "--duration", "1")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: cannot reach the broker")


def test_missing_client_library_fails_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(url: str) -> None:
        raise MissingDependency(
            "the redis transport needs redis-py:\n    pip install 'evcore[redis]'"
        )

    monkeypatch.setattr("evcore.cli.source.connect", missing)
    result = invoke("dump", "redis://127.0.0.1:6379/0")
    assert result.exit_code == 1
    assert result.output == (
        "Error: the redis transport needs redis-py: pip install 'evcore[redis]'\n"
    )


def test_missing_url_names_the_environment_variable() -> None:
    result = CliRunner().invoke(cli, ["dump"], env={"EVCORE_URL": ""})
    assert result.exit_code == 2
    assert "no broker URL: pass URL or set EVCORE_URL" in result.output


def test_url_comes_from_the_environment(bus_url: str, publish_when_subscribed: Callable) -> None:
    publish_when_subscribed(a_small_cluster)
    result = invoke("dump", "--limit", "1", "--timeout", "10", env={"EVCORE_URL": bus_url})
    assert result.exit_code == 0
    assert "w1@test [2023-11-14 22:13:21+00:00] started: " in result.output


def test_passwords_are_not_printed() -> None:
    from evcore.cli.common import safe_url

    assert safe_url("amqp://guest:secret@host:5672//") == "amqp://guest:***@host:5672//"
    assert safe_url("redis://:secret@host/0") == "redis://:***@host/0"
    assert safe_url("memory://bus") == "memory://bus"


# -- evcore dump -----------------------------------------------------------------------------


def dump_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if not line.startswith("-> ")]


def test_dump_prints_celery_dump_lines(
    bus_url: str, publish_when_subscribed: Callable
) -> None:
    publish_when_subscribed(a_small_cluster)
    result = invoke("dump", bus_url, "--limit", "6", "--timeout", "10")
    assert result.exit_code == 0
    lines = dump_lines(result)
    humans = [LINE.match(line)["human"] for line in lines]  # type: ignore[index]
    assert humans == [
        "started",
        "task sent",
        "task received",
        "task started",
        "task succeeded",
        "heartbeat",
    ]
    assert lines[0].startswith("w1@test [2023-11-14 22:13:21+00:00] started: active=0, ")
    assert lines[1].startswith("client@test [")
    assert "task sent: demo.add(u1) args=(1, 2) kwargs={} clock=" in lines[1]
    # Later events of the task are described from what task-sent/received said.
    assert "task succeeded: demo.add(u1) args=(1, 2) kwargs={} clock=" in lines[4]
    assert ", result=3, runtime=0.5, " in lines[4]


def test_dump_json_lines(bus_url: str, publish_when_subscribed: Callable) -> None:
    publish_when_subscribed(a_small_cluster)
    result = invoke("dump", bus_url, "--json", "--limit", "6", "--timeout", "10")
    assert result.exit_code == 0
    events = [json.loads(line) for line in dump_lines(result)]
    assert [event["type"] for event in events] == [
        "worker-online",
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "worker-heartbeat",
    ]
    assert events[4]["result"] == "3"
    assert events[4]["hostname"] == "w1@test"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--type", "task-s*"], ["task-sent", "task-started", "task-succeeded"]),
        (
            ["--type", "worker-online", "--type", "task-received"],
            ["worker-online", "task-received"],
        ),
        (["--group", "worker"], ["worker-online", "worker-heartbeat"]),
        (["--group", "task", "--limit", "2"], ["task-sent", "task-received"]),
    ],
)
def test_dump_filters(
    bus_url: str, publish_when_subscribed: Callable, options: list[str], expected: list[str]
) -> None:
    publish_when_subscribed(a_small_cluster)
    result = invoke("dump", bus_url, "--json", "--timeout", "2", *options)
    assert result.exit_code == 0
    assert [json.loads(line)["type"] for line in dump_lines(result)] == expected


def test_dump_timeout_without_events_ends_cleanly(bus_url: str) -> None:
    result = invoke("dump", bus_url, "--timeout", "0.3")
    assert result.exit_code == 0
    assert dump_lines(result) == []


def test_dumper_formats_as_celery() -> None:
    dumper = Dumper()
    received = {
        "hostname": "w1@h",
        "utcoffset": 0,
        "pid": 10,
        "clock": 4,
        "uuid": "u1",
        "name": "proj.add",
        "args": "(1, 2)",
        "kwargs": "{}",
        "timestamp": 1700000001.0,
        "type": "task-received",
    }
    succeeded = {
        "hostname": "w1@h",
        "utcoffset": 0,
        "pid": 10,
        "clock": 4,
        "uuid": "u1",
        "result": "3",
        "runtime": 0.5,
        "local_received": 7,
        "timestamp": 1700000001.0,
        "type": "task-succeeded",
    }
    dumper.format(received)
    assert dumper.format(succeeded) == (
        "w1@h [2023-11-14 22:13:21+00:00] task succeeded: proj.add(u1) args=(1, 2) kwargs={} "
        "clock=4, local_received=7, pid=10, result=3, runtime=0.5, utcoffset=0"
    )
    assert succeeded["uuid"] == "u1"  # the caller's event is left alone
    offline = {"hostname": "w2@h", "timestamp": 1700000001.25, "type": "worker-offline"}
    assert dumper.format(offline) == "w2@h [2023-11-14 22:13:21.250000+00:00] shutdown"
    # A task whose description was never seen gets an empty one, as in Celery.
    assert dumper.format(
        {"hostname": "w1@h", "uuid": "zz", "timestamp": 1700000001.0, "type": "task-started"}
    ) == "w1@h [2023-11-14 22:13:21+00:00] task started"


def test_dumper_forgets_the_oldest_tasks() -> None:
    dumper = Dumper(cache_size=2)
    for name in ("a", "b", "c"):
        dumper.format({"hostname": "h", "uuid": name, "name": f"t.{name}", "type": "task-sent"})
    forgotten, kept = (
        dumper.format({"hostname": "h", "uuid": name, "timestamp": 0, "type": "task-started"})
        for name in ("a", "c")
    )
    assert forgotten == "h [1970-01-01 00:00:00+00:00] task started"
    assert kept == "h [1970-01-01 00:00:00+00:00] task started t.c(c) args=None kwargs=None"


def test_human_types_and_timestamps() -> None:
    assert human_type("worker-online") == "started"
    assert human_type("worker-heartbeat") == "heartbeat"
    assert human_type("Task-Progress") == "task progress"
    assert format_timestamp(0) == "1970-01-01 00:00:00+00:00"
    assert format_timestamp("soon") == "soon"


def test_event_filter_globs_and_groups() -> None:
    keep = EventFilter(types=["task-*"], groups=["task", "worker"])
    assert keep({"type": "task-failed"})
    assert not keep({"type": "worker-online"})  # fails the type filter
    assert EventFilter(groups=["worker"])({"type": "worker-heartbeat"})
    assert not EventFilter(groups=["worker"])({"type": "task-sent"})
    assert EventFilter()({"type": "anything"})


# -- evcore top and demo ---------------------------------------------------------------------


def test_top_once_shows_workers_and_tasks(
    bus_url: str, publish_when_subscribed: Callable
) -> None:
    publish_when_subscribed(a_small_cluster)
    result = invoke("top", bus_url, "--once", "--duration", "1.5")
    assert result.exit_code == 0
    assert "● connected  events 6 " in result.output
    worker_line = next(line for line in result.output.splitlines() if line.startswith("w1@test"))
    assert worker_line.split()[1:2] == ["ONLINE"]
    task_line = next(line for line in result.output.splitlines() if "demo.add" in line)
    assert task_line.split()[0] == "SUCCESS"
    assert "500ms" in task_line


def test_demo_renders_a_frame_when_not_on_a_terminal() -> None:
    result = invoke("demo", "--duration", "2.5", "--seed", "7", "--rate", "10")
    assert result.exit_code == 0
    output = result.output
    assert "● connected" in output
    assert re.search(r"^demo-worker1@\S+\s+ONLINE", output, re.MULTILINE)
    assert re.search(r"^demo-worker3@\S+\s+ONLINE", output, re.MULTILINE)
    assert re.search(r"^(SUCCESS|STARTED|RECEIVED|FAILURE|RETRY)\s+demo\.", output, re.MULTILINE)
    assert re.search(r"-> published \d+ events: \d+ tasks", output)


def test_demo_no_monitor_publishes_what_celery_workers_publish(
    bus: MemoryBus, bus_url: str
) -> None:
    """A transport-level subscription sees batched task events and un-batched task-sent."""
    transport = connect(bus_url)
    subscription = transport.subscribe(
        Exchange("celeryev", "topic"), "#", QueueOptions(name=f"t.{uuid.uuid4().hex}")
    )
    result = invoke(
        "demo", "--url", bus_url, "--no-monitor", "--duration", "3", "--rate", "15", "--seed", "3"
    )
    assert result.exit_code == 0
    messages = subscription.receive(0)
    keys = [message.routing_key for message in messages]
    events = []
    for message in messages:
        body = json.loads(message.body)
        events.extend(body if isinstance(body, list) else [body])
    types = {event["type"] for event in events}
    assert {"worker-online", "worker-heartbeat", "worker-offline", "task-sent"} <= types
    assert {"task-received", "task-started", "task-succeeded"} <= types
    assert "task.multi" in keys and "task.sent" in keys
    assert {key for key in keys if key.startswith("task.")} == {"task.multi", "task.sent"}
    hosts = {event["hostname"] for event in events if event["type"] == "worker-online"}
    assert len(hosts) == 3
    sent = [e for e in events if e["type"] == "task-sent"]
    assert all(e["hostname"].startswith("gen") for e in sent)
    assert f"published {len(events)} events" in result.output
    transport.close()


def run_simulation(url: str, kinds: list[TaskKind], duration: float = 1.5) -> list[dict]:
    seen: list[dict] = []
    with Receiver(url, handlers={"*": seen.append}) as receiver:
        simulator = ClusterSimulator(
            url, workers=2, rate=30, seed=5, kinds=kinds, heartbeat_freq=0.2
        )
        thread = threading.Thread(target=simulator.run, args=(duration,))
        thread.start()
        receiver.capture(timeout=duration + 1.0)
        thread.join(timeout=5)
    return seen


def by_task(events: list[dict]) -> dict[str, list[str]]:
    tasks: dict[str, list[str]] = {}
    for event in events:
        if event["type"].startswith("task-"):
            tasks.setdefault(event["uuid"], []).append(event["type"])
    return tasks


def test_simulated_tasks_fail_retry_and_get_revoked(bus_url: str) -> None:
    kinds = [
        TaskKind("t.fail", 1, (0.01, 0.05), fail_rate=1.0),
        TaskKind("t.retry", 1, (0.01, 0.05), retries=1),
        TaskKind("t.revoke", 1, (0.2, 0.3), revoke_rate=1.0),
    ]
    events = run_simulation(bus_url, kinds)
    names = {e["uuid"]: e["name"] for e in events if e["type"] == "task-sent"}
    outcomes: dict[str, set[str]] = {}
    for task, types in by_task(events).items():
        outcomes.setdefault(names[task], set()).update(types)
    assert "task-failed" in outcomes["t.fail"]
    assert "task-retried" in outcomes["t.retry"]
    assert "task-revoked" in outcomes["t.revoke"]
    revoked = [e for e in events if e["type"] == "task-revoked"]
    assert {e["terminated"] for e in revoked} <= {True, False}
    retried = [e for e in events if e["type"] == "task-retried"]
    # A retry re-sends the task: a second task-sent with the same id and an ETA.
    resent = [e for e in events if e["type"] == "task-sent" and e["uuid"] == retried[0]["uuid"]]
    assert len(resent) == 2 and resent[1]["eta"] and resent[1]["parent_id"] == resent[1]["uuid"]


def test_simulated_tasks_spawn_children(bus_url: str) -> None:
    events = run_simulation(bus_url, [TaskKind("t.parent", 1, (0.01, 0.05), children=(2, 2))])
    sent = [e for e in events if e["type"] == "task-sent"]
    parents = {e["uuid"] for e in sent if e["name"] == "t.parent"}
    children = [e for e in sent if e["parent_id"] in parents]
    assert children and all(e["root_id"] == e["parent_id"] for e in children)


def test_simulator_stops_on_request(bus_url: str) -> None:
    simulator = ClusterSimulator(bus_url, workers=1, rate=5, seed=1)
    thread = threading.Thread(target=simulator.run)
    thread.start()
    time.sleep(0.3)
    simulator.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_cli_package_is_the_only_importer_of_click_and_rich() -> None:
    root = os.path.join(os.path.dirname(__file__), "..", "evcore")
    offenders = []
    for folder, _, files in os.walk(root):
        if os.path.basename(folder) == "cli":
            continue
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as source:
                    text = source.read()
                if re.search(r"^\s*(import|from)\s+(click|rich)\b", text, re.MULTILINE):
                    offenders.append(name)
    assert offenders == []


def test_monitor_reports_a_lost_connection_and_recovers(bus: MemoryBus, bus_url: str) -> None:
    monitor = Monitor(bus_url, title="t").start()
    try:
        a_small_cluster(bus_url)
        assert wait_until(lambda: monitor.snapshot(10).events == 6)
        bus.set_offline()
        assert wait_until(lambda: not monitor.snapshot(10).connection.connected)
        lost = monitor.snapshot(10)
        assert lost.connection.ever_connected and "offline" in (lost.connection.error or "")
        assert "connection lost" in render_text(lost)
        bus.set_offline(False)
        assert wait_until(lambda: monitor.snapshot(10).connection.connected)
        assert monitor.snapshot(10).connection.reconnects >= 1
        a_small_cluster(bus_url)
        back = monitor.snapshot(10)
        assert wait_until(lambda: monitor.snapshot(10).events == 12), back
        assert "● connected" in render_text(monitor.snapshot(10))
    finally:
        monitor.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def render_text(snapshot: Snapshot) -> str:
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render(snapshot))
    return console.export_text()


def test_view_formats_ages_and_fits_rows_to_the_screen() -> None:
    assert [format_age(s) for s in (None, 0.42, 12.4, 185, 7620)] == [
        "-",
        "0.4s",
        "12s",
        "3m05s",
        "2h07m",
    ]
    assert task_rows_that_fit(40, workers=3) == 40 - 9 - 3
    assert task_rows_that_fit(5, workers=3) == 1


def test_rate_meter_averages_over_its_window() -> None:
    meter = RateMeter(window=5.0)
    assert meter.update(0, now=100.0) == 0.0
    assert meter.update(10, now=101.0) == pytest.approx(10.0)
    assert meter.update(30, now=103.0) == pytest.approx(10.0)
    # Samples older than the window stop counting.
    assert meter.update(30, now=110.0) == pytest.approx(0.0)


def test_top_rows_say_who_runs_a_task_and_why_it_failed() -> None:
    from evcore.cli.monitor import task_row
    from evcore.cli.view import TASKS_LEGEND, tasks_table
    from evcore.state import State

    state = State()
    now = time.time()
    events = [
        ("task-sent", "p1", "client@h", {"name": "demo.wait"}),
        ("task-sent", "f1", "client@h", {"name": "demo.fail"}),
        ("task-received", "f1", "w1@h", {"name": "demo.fail"}),
        ("task-failed", "f1", "w1@h", {"exception": "ValueError('bad input')"}),
    ]
    for clock, (type_, uuid_, host, fields) in enumerate(events, 1):
        state.event(
            {"type": type_, "uuid": uuid_, "hostname": host, "timestamp": now - 10 + clock,
             "clock": clock, "local_received": now, **fields}
        )
    pending, failed = (task_row(state.tasks[key], now) for key in ("p1", "f1"))
    assert (pending.state, pending.host, pending.exception) == ("PENDING", None, None)
    assert (failed.state, failed.host) == ("FAILURE", "w1@h")
    assert failed.exception == "ValueError('bad input')"
    console = Console(file=io.StringIO(), width=200)
    console.print(tasks_table([pending, failed]))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[0].split() == ["STATE", "TASK", "UUID", "WORKER", "RUNTIME", "AGE", "EXCEPTION"]
    assert lines[1].split()[:4] == ["PENDING", "demo.wait", "p1", "-"]
    assert "client@h" not in lines[1]
    assert lines[2].split()[:4] == ["FAILURE", "demo.fail", "f1", "w1@h"]
    assert lines[2].rstrip().endswith("ValueError('bad input')")
    assert "AGE" in TASKS_LEGEND and "newest" in TASKS_LEGEND
    assert TASKS_LEGEND in render_text(Snapshot("t", ConnectionStatus(True), 0, 0.0, 0, 0))


def test_help_texts_carry_no_markup() -> None:
    for command in ([], ["demo"], ["top"], ["dump"], ["transports"]):
        text = invoke(*command, "--help").output
        assert "`" not in text and ":class:" not in text and "\x1b" not in text
