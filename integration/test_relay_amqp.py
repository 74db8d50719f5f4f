"""``evcore relay`` from RabbitMQ (Celery's amqp:// layout, a topic exchange) into durable
streams: the relay reads with the source's own exchange rule from a private queue."""

from __future__ import annotations

import threading
import uuid

import pytest
from _amqp_support import delete_exchanges, probe
from _net import wait_for
from celery import Celery

from evcore import Dispatcher, Receiver
from evcore.relay import Relay
from evcore.transport import EARLIEST, TOPIC, StreamOptions

pytestmark = pytest.mark.amqp


def _reader(streams: str, exchange: str) -> tuple[list[dict[str, object]], Receiver]:
    """A monitor of the streams from their earliest event, keeping what it applies."""
    applied: list[dict[str, object]] = []
    reader = Receiver(
        streams,
        handlers={"*": applied.append},
        exchange=exchange,
        stream=StreamOptions(start=EARLIEST),
    )
    return applied, reader


def test_celery_events_over_amqp_reach_the_stream_once_in_order(
    amqp_url: str, exchange_name: str
) -> None:
    streams = f"memory+stream://{uuid.uuid4().hex}?partitions=3"
    relay = Relay(amqp_url, streams, exchange=exchange_name)
    assert relay.source_exchange.type == TOPIC
    runner = threading.Thread(target=relay.run, daemon=True)
    runner.start()
    app = Celery("evcore-relay-amqp", broker=amqp_url, set_as_current=False)
    app.conf.event_exchange = exchange_name
    sent = [("task-received", f"t{n}") for n in range(40)]
    sent += [("task-started", f"t{n}") for n in range(40)]
    try:
        with app.connection_for_write() as connection:
            worker = app.events.Dispatcher(
                connection, hostname="w1@relayamqp", buffer_group={"task"}
            )
            worker.send("worker-online", freq=2.0)
            for type_, task_id in sent:
                worker.send(type_, uuid=task_id, name="add")
            worker.flush()
            worker.close()
        assert wait_for(lambda: relay.stats.forwarded == len(sent) + 1, timeout=15)
    finally:
        relay.stop()
        runner.join(timeout=10)
        relay.close()
        app.close()
        delete_exchanges(amqp_url, {exchange_name})
    assert relay.stats.messages < len(sent)  # Celery's task.multi batches arrived as such
    applied, reader = _reader(streams, exchange_name)
    reader.capture(limit=len(sent) + 1, timeout=5)
    reader.capture(timeout=0.2)
    reader.close()
    assert len(applied) == len(sent) + 1
    for n in range(40):
        kinds = [e["type"] for e in applied if e.get("uuid") == f"t{n}"]
        assert kinds == ["task-received", "task-started"]
    # Appended to each of the 3 partitions, applied once.
    assert [e["type"] for e in applied].count("worker-online") == 1
    assert reader.stats.duplicates == 2


def test_a_named_queue_keeps_what_is_published_while_the_relay_is_away(
    amqp_url: str, exchange_name: str
) -> None:
    streams = f"memory+stream://{uuid.uuid4().hex}?partitions=2"
    queue = f"evtest-relay-{uuid.uuid4().hex[:10]}"
    source = Dispatcher(amqp_url, hostname="w1@relayqueue", exchange=exchange_name)
    try:
        first = Relay(amqp_url, streams, exchange=exchange_name, queue=queue)
        for n in range(10):
            source.send("task-received", uuid=f"before-{n}", name="add")
        first.run(duration=0.5)
        first.close()
        assert first.stats.forwarded == 10
        for n in range(10):  # no relay running: the broker keeps them in the queue
            source.send("task-received", uuid=f"away-{n}", name="add")
        second = Relay(amqp_url, streams, exchange=exchange_name, queue=queue)
        assert wait_for(lambda: (second.run(duration=0.1), second.stats.forwarded)[1] == 10)
        second.close()
    finally:
        source.close()
        connection = probe(amqp_url)
        connection.channel().queue_delete(queue)
        connection.close()
        delete_exchanges(amqp_url, {exchange_name})
    applied, reader = _reader(streams, exchange_name)
    reader.capture(limit=20, timeout=5)
    reader.close()
    assert sorted(str(e["uuid"]) for e in applied) == sorted(
        [f"before-{n}" for n in range(10)] + [f"away-{n}" for n in range(10)]
    )

