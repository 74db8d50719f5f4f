"""``evcore.celery``: a real Celery worker (Celery's in-process test worker on its in-memory
broker) publishing every event through evcore's in-memory transport.

One worker serves the whole module (starting and stopping one takes seconds); each test
uses task ids of its own, so the tests do not depend on each other's events.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from evcore import ConfigurationError, Dispatcher
from evcore.celery import Events, Receiver
from evcore.pytest_plugin import celery_test_worker, unique_bus_url
from evcore.recording import EventRecorder

WORKER = f"celerytest-{uuid.uuid4().hex[:6]}@localhost"


def make_app() -> Celery:
    app = Celery(f"evcore-celery-{uuid.uuid4().hex[:6]}", events="evcore.celery:Events")

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proj.boom")
    def boom() -> None:
        raise ValueError("boom: \x1b[31mred\x1b[0m")

    @app.task(name="proj.progress", bind=True)
    def progress(self: Any) -> str:
        self.send_event("task-progress", current=1, total=2)
        return "done"

    return app


@pytest.fixture(scope="module")
def url() -> str:
    return unique_bus_url("celery")


@pytest.fixture(scope="module")
def recorder(url: str) -> Iterator[EventRecorder]:
    with EventRecorder(url) as recorder:
        yield recorder


@pytest.fixture(scope="module")
def app(url: str, recorder: EventRecorder) -> Iterator[Celery]:
    app = make_app()
    with celery_test_worker(app, url, hostname=WORKER):
        yield app


def test_a_successful_task_sends_its_whole_lifecycle(app: Celery, recorder: EventRecorder) -> None:
    result = app.tasks["proj.add"].delay(2, 3)
    recorder.wait_for("task-succeeded", uuid=result.id)
    recorder.assert_task_events(
        result.id, ["task-sent", "task-received", "task-started", "task-succeeded"]
    )
    sent = recorder.assert_sent("task-sent", uuid=result.id, name="proj.add", args="(2, 3)")
    assert sent["queue"] == "celery"
    received = recorder.assert_sent("task-received", uuid=result.id, hostname=WORKER)
    assert received["name"] == "proj.add" and received["kwargs"] == "{}"
    succeeded = recorder.assert_sent("task-succeeded", uuid=result.id, result="5")
    assert succeeded["hostname"] == WORKER and succeeded["runtime"] >= 0
    task = recorder.state.tasks[result.id]
    assert (task.state, task.name, task.result, task.worker.hostname) == (
        "SUCCESS", "proj.add", "5", WORKER,
    )


def test_a_failing_task_sends_task_failed_with_its_exception(
    app: Celery, recorder: EventRecorder
) -> None:
    result = app.tasks["proj.boom"].delay()
    failed = recorder.wait_for("task-failed", uuid=result.id)
    assert failed["exception"].startswith("ValueError(")
    assert "Traceback" in failed["traceback"]
    assert recorder.types(result.id)[-1] == "task-failed"
    assert recorder.state.tasks[result.id].state == "FAILURE"


def test_events_sent_from_inside_a_task_arrive(app: Celery, recorder: EventRecorder) -> None:
    result = app.tasks["proj.progress"].delay()
    recorder.wait_for("task-succeeded", uuid=result.id)
    recorder.assert_sent("task-progress", uuid=result.id, current=1, total=2)


def test_the_worker_goes_online_and_celerys_own_state_follows(
    app: Celery, recorder: EventRecorder, url: str
) -> None:
    recorder.wait_for("worker-online", hostname=WORKER)
    assert recorder.state.workers[WORKER].alive
    # app.events.Receiver reads the evcore transport; app.events.State is Celery's.
    state = app.events.State()
    with app.events.Receiver(None, handlers={"*": state.event}) as receiver:
        assert isinstance(receiver, Receiver)
        receiver.subscribe()  # capture() would subscribe too late for this task
        result = app.tasks["proj.add"].delay(1, 1)
        recorder.wait_for("task-succeeded", uuid=result.id)
        for _ in receiver.itercapture(timeout=5.0, wakeup=False):  # heartbeats come too
            task = state.tasks.get(result.id)
            if task is not None and task.state == "SUCCESS":
                break
    assert state.tasks[result.id].state == "SUCCESS"
    assert type(state).__module__ == "celery.events.state"


def test_the_groups_set_filters_as_remote_control_edits_it(app: Celery, url: str) -> None:
    """Celery's ``enable_events``/``disable_events`` commands edit ``dispatcher.groups`` in
    place; the evcore dispatcher behind it must follow."""
    with EventRecorder(url) as recorder, app.events.Dispatcher(hostname="g@host") as dispatcher:
        dispatcher.groups.add("worker")  # what disable_events leaves: worker events only
        assert dispatcher.send("task-received", uuid="g1") is None
        dispatcher.groups.add("task")  # enable_events
        dispatcher.send("task-received", uuid="g2")
        mine = [event for event in recorder.events if event["hostname"] == "g@host"]
        assert [event["uuid"] for event in mine] == ["g2"]  # the worker's events are there too


def test_an_unknown_scheme_names_the_setting() -> None:
    app = Celery("bad", events="evcore.celery:Events")
    app.conf.evcore_events_url = "nosuchscheme://x"
    with pytest.raises(ConfigurationError, match="evcore_events_url"):
        app.events.Dispatcher(enabled=False)
    app.conf.evcore_events_url = None
    app.conf.broker_url = "nosuchbroker://"
    with pytest.raises(ConfigurationError, match="broker_url"):
        app.events.Dispatcher(enabled=False)


def test_events_class_closes_what_it_opened() -> None:
    app = Celery("closing", events="evcore.celery:Events")
    app.conf.evcore_events_url = unique_bus_url("closing")
    assert isinstance(app.events, Events)
    first, second = app.events.Dispatcher(), app.events.Dispatcher(enabled=False)
    app.events.close()
    assert isinstance(first.dispatcher, Dispatcher)
    assert first.dispatcher.closed and second.dispatcher.closed


def test_the_clients_dispatcher_follows_the_setting_and_outlives_close() -> None:
    """``app.amqp`` keeps one dispatcher for ``task-sent`` as long as the app lives: it must
    still publish after ``app.events.close()`` and to a new ``evcore_events_url``."""
    app = Celery("client", events="evcore.celery:Events")
    first_url, second_url = unique_bus_url("first"), unique_bus_url("second")
    app.conf.evcore_events_url = first_url
    client = app.events.Dispatcher(enabled=False)
    with EventRecorder(first_url) as first, EventRecorder(second_url) as second:
        client.publish("task-sent", {"uuid": "t1"}, producer=None)
        app.events.close()
        client.publish("task-sent", {"uuid": "t2"}, producer=None)
        app.conf.evcore_events_url = second_url
        client.publish("task-sent", {"uuid": "t3"}, producer=None)
        assert [event["uuid"] for event in first.events] == ["t1", "t2"]
        assert [event["uuid"] for event in second.events] == ["t3"]
    app.events.close()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_without_celery_the_integration_names_the_extra() -> None:
    done = run_python(
        "import sys; sys.modules['celery'] = None\n"
        "from evcore.errors import MissingDependency\n"
        "try:\n    import evcore.celery\n"
        "except MissingDependency as exc:\n    print(exc)\n"
    )
    assert "pip install 'evcore[celery]'" in done.stdout, done.stderr


def test_the_core_and_the_plugin_do_not_import_celery() -> None:
    done = run_python(
        "import sys, evcore, evcore.state, evcore.recording, evcore.pytest_plugin\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'celery', 'kombu'}))"
    )
    assert done.stdout.strip() == "[]", done.stderr
