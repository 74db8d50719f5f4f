"""Asserting on a Celery app's events, in-process, without a broker."""

import uuid

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from shop.tasks import app, charge, total

from evcore.recording import EventRecorder


# 1. evcore.celery: the plugin's worker fixture runs the app, its events on the test's bus.
@pytest.fixture
def evcore_celery_app():
    return app


def test_a_task_succeeds_and_another_fails(evcore_celery_worker, evcore_recorder, evcore_state):
    ok, declined = total.delay([1.5, 2.25]), charge.delay("4242")
    evcore_recorder.wait_for("task-succeeded", uuid=ok.id, result="3.75")
    evcore_recorder.assert_task_events(
        ok.id, ["task-sent", "task-received", "task-started", "task-succeeded"]
    )
    evcore_recorder.assert_sent("task-received", uuid=ok.id, name="shop.total")
    assert evcore_state.tasks[ok.id].state == "SUCCESS"

    failed = evcore_recorder.wait_for("task-failed", uuid=declined.id)
    assert failed["exception"] == "PermissionError('card 4242 declined')"


# 2. The kombu bridge: Celery's own events on its in-memory broker, read by evcore through
#    kombu. kombu's memory broker is shared by the whole process: an exchange of the
#    test's own keeps tests apart.
def test_celerys_own_events_through_the_kombu_bridge():
    plain = Celery("plain", broker="memory://", backend="cache+memory://")
    exchange = f"celeryev.{uuid.uuid4().hex}"
    plain.conf.update(
        event_exchange=exchange,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_transport_options={"polling_interval": 0.01},
    )

    @plain.task(name="plain.double")
    def double(x):
        return 2 * x

    with EventRecorder("kombu+memory://", exchange=exchange) as recorder:
        with start_worker(plain, pool="solo", perform_ping_check=False):
            result = double.delay(21)
            recorder.wait_for("task-succeeded", uuid=result.id, result="42")
        assert recorder.types(result.id)[-1] == "task-succeeded"
