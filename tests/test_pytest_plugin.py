"""The pytest plugin (``evcore.pytest_plugin``), run the way its users run it: small test
files in a temporary project whose ``conftest.py`` opts in, through ``pytester``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = 'pytest_plugins = ["evcore.pytest_plugin"]\n'
SAMPLE_PROJECT = Path(__file__).resolve().parents[1] / "integration" / "sample_project"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def test_fixtures_give_a_bus_a_dispatcher_a_receiver_a_recorder_and_a_state(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        """
        import threading

        from evcore import Dispatcher, Receiver

        def test_dispatcher_events_are_recorded(evcore_dispatcher, evcore_recorder):
            evcore_dispatcher.send("task-received", uuid="t1", name="add", args="(2, 2)")
            evcore_dispatcher.send("task-succeeded", uuid="t1", result="4", runtime=0.1)
            evcore_recorder.assert_task_events("t1", ["task-received", "task-succeeded"])
            event = evcore_recorder.assert_sent("task-succeeded", result="4")
            assert event["hostname"] == "pytest@evcore"
            evcore_recorder.assert_not_sent("task-failed")
            evcore_recorder.assert_not_sent("task-succeeded", result="5")

        def test_code_under_test_gets_the_url(evcore_bus_url, evcore_recorder):
            assert evcore_bus_url.startswith("memory://pytest-")
            with Dispatcher(evcore_bus_url, hostname="app@host") as dispatcher:
                dispatcher.send("worker-online", freq=2.0)
            assert evcore_recorder.types() == ["worker-online"]

        def test_the_state_is_current_when_read(evcore_dispatcher, evcore_state):
            evcore_dispatcher.send("worker-online", freq=2.0)
            evcore_dispatcher.send("task-received", uuid="t1", name="add")
            assert evcore_state.tasks["t1"].state == "RECEIVED"
            evcore_dispatcher.send("task-failed", uuid="t1", exception="ValueError()")
            assert evcore_state.tasks["t1"].state == "FAILURE"
            assert [w.hostname for w in evcore_state.alive_workers()] == ["pytest@evcore"]

        def test_the_receiver_fixture_calls_handlers(evcore_dispatcher, evcore_receiver):
            seen = []
            evcore_receiver.handlers["worker-online"] = seen.append
            evcore_dispatcher.send("worker-online", freq=2.0)
            assert evcore_receiver.capture(limit=1, timeout=1.0) == 1
            assert seen[0]["hostname"] == "pytest@evcore"

        def test_wait_for_an_event_from_another_thread(evcore_bus_url, evcore_recorder):
            def later():
                with Dispatcher(evcore_bus_url, hostname="thread@host") as dispatcher:
                    dispatcher.send("task-started", uuid="t9")
            timer = threading.Timer(0.1, later)
            timer.start()
            event = evcore_recorder.wait_for("task-started", timeout=5.0, uuid="t9")
            assert event["hostname"] == "thread@host"
            timer.join()

        def test_an_offline_bus(evcore_bus, evcore_dispatcher, evcore_recorder):
            evcore_bus.set_offline()
            evcore_dispatcher.send("worker-online", freq=2.0)
            assert evcore_dispatcher.pending_events == 1
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_failure_messages_say_what_was_expected_and_list_what_was_seen(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        """
        def send_two(dispatcher):
            dispatcher.send("task-received", uuid="t1", name="add", args="(2, 2)")
            dispatcher.send("task-succeeded", uuid="t1", result="4", runtime=0.1)

        def test_sent(evcore_dispatcher, evcore_recorder):
            send_two(evcore_dispatcher)
            evcore_recorder.assert_sent("task-succeeded", uuid="t1", result="5")

        def test_not_sent(evcore_dispatcher, evcore_recorder):
            send_two(evcore_dispatcher)
            evcore_recorder.assert_not_sent("task-received", uuid="t1")

        def test_order(evcore_dispatcher, evcore_recorder):
            send_two(evcore_dispatcher)
            evcore_recorder.assert_task_events(
                "t1", ["task-received", "task-started", "task-succeeded"]
            )

        def test_wait(evcore_dispatcher, evcore_recorder):
            send_two(evcore_dispatcher)
            evcore_recorder.wait_for("task-failed", timeout=0.2, uuid="t1")

        def test_hostile_text_is_escaped(evcore_dispatcher, evcore_recorder):
            evcore_dispatcher.send("task-failed", uuid="t2", exception="\\x1b[2J" + "x" * 500)
            evcore_recorder.assert_sent("task-failed", uuid="t2", exception="y")
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=5)
    output = result.stdout.str()
    for expected in [
        "expected task-succeeded uuid='t1' result='5'; saw 2 event(s) on memory://pytest-",
        "closest: #2 has result='4' (expected '5')",
        "    1 task-received uuid='t1' hostname='pytest@evcore' name='add'",
        "    2 task-succeeded uuid='t1' result='4' hostname='pytest@evcore'",
        "expected no task-received uuid='t1'; saw 1 such among 2 event(s)",
        "task 't1': expected events ['task-received', 'task-started', 'task-succeeded']",
        "but saw ['task-received', 'task-succeeded']",
        "timed out after 0.2s waiting for task-failed uuid='t1'; saw 2 event(s)",
        "closest: #1 has exception='\\x1b[2Jxxxxxxxxxx...xxxxxxxxxxxxxxxxxx' (expected 'y')",
    ]:
        assert expected in output
    assert "\x1b[2J" not in output
    # The helpers hide their own frames: the traceback ends in the test.
    assert "recording.py" not in output


def test_a_receiver_or_dispatcher_left_open_is_closed_with_a_warning(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        """
        import threading

        from evcore import Dispatcher, Receiver

        left = []

        def test_leaves_them_open(evcore_bus_url):
            left.append(Receiver(evcore_bus_url))
            left.append(Dispatcher(evcore_bus_url, hostname="leaky@host"))
            with Receiver(evcore_bus_url):  # closed: no warning
                pass
            capturing = Receiver(evcore_bus_url)  # capturing forever in a thread
            left.append(threading.Thread(target=capturing.capture, daemon=True))
            left[-1].start()

        def test_they_were_closed():
            receiver, dispatcher, thread = left
            assert receiver.closed and dispatcher.closed
            thread.join(timeout=5)
            assert not thread.is_alive()
        """
    )
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    output = result.stdout.str()
    for expected in [
        "EvcoreLeakWarning: test_a_receiver_or_dispatcher_left_open_is_closed_with_a_warning.py"
        "::test_leaves_them_open left <Receiver celeryev.",
        "EvcoreLeakWarning: test_a_receiver_or_dispatcher_left_open_is_closed_with_a_warning.py"
        "::test_leaves_them_open left <Dispatcher leaky@host topic:celeryev enabled> open on "
        "memory://pytest-",
    ]:
        assert expected in output
    assert output.count("EvcoreLeakWarning:") == 3


ISOLATION_TESTS = """
import pytest

from evcore import Dispatcher

@pytest.mark.parametrize("number", range(12))
def test_sees_only_its_own_events(number, evcore_bus_url, evcore_recorder):
    with Dispatcher(evcore_bus_url, hostname=f"w{number}@host") as dispatcher:
        for step in range(3):
            dispatcher.send("task-received", uuid=f"{number}-{step}")
    with open(f"urls-{number}.txt", "w") as out:
        out.write(evcore_bus_url)
    assert {event["hostname"] for event in evcore_recorder.events} == {f"w{number}@host"}
    assert len(evcore_recorder.events) == 3
"""


def test_tests_in_parallel_xdist_workers_never_see_each_others_events(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(ISOLATION_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=12)
    urls = {(project.path / f"urls-{number}.txt").read_text() for number in range(12)}
    assert len(urls) == 12
    # Both xdist workers ran tests; the worker's name is part of each bus name.
    assert {url.split("-")[1] for url in urls} == {"gw0", "gw1"}


def test_the_sample_project_passes_as_an_outside_user_runs_it() -> None:
    """``integration/sample_project``: its own rootdir and conftest, run as its users would
    (evcore.celery through the worker fixture, and the kombu bridge)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error::UserWarning"],
        cwd=SAMPLE_PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout
    assert "EvcoreLeakWarning" not in done.stdout
