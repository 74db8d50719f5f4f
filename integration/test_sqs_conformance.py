"""The SQS transport passes evcore's transport conformance suite against SNS and SQS as
moto's server provides them, and keeps names, sizes and the sweep in hand."""

from __future__ import annotations

import os
import time

import pytest
from _net import free_port
from _sqs_support import own_prefix, sqs_url

from evcore import Dispatcher, Receiver
from evcore.errors import ChannelError
from evcore.testing import TransportConformance
from evcore.testing.harness import bodies, body_seen, collect, unique_name
from evcore.transport import DIRECT, TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_sqs import MAX_MESSAGE, SqsTransport

pytestmark = pytest.mark.sqs


class TestSqsConformance(TransportConformance):
    # 256 KiB per message; binary bodies travel in base64.
    large_payload_size = 150_000
    invalid_urls = (
        "sqs://host.example/",
        "sqs://?wait_time_seconds=21",
        "sqs://?no_such_option=1",
        "sqs://?endpoint_url=ftp://x",
    )

    @pytest.fixture(autouse=True)
    def _moto(self, moto_endpoint: str) -> None:
        self.transport_url = sqs_url(moto_endpoint)
        self.unreachable_url = sqs_url(f"http://127.0.0.1:{free_port()}", connect_timeout="2")


def test_hostile_names_and_routing_keys(moto_endpoint: str) -> None:
    transport = SqsTransport.from_url(sqs_url(moto_endpoint))
    try:
        names = ["ev'; <x>&\"", "Évènements ✓", "x" * 300, "", "a.b/c\\d"]
        exchanges = [Exchange(name, TOPIC) for name in names]
        subscriptions = [
            transport.subscribe(e, "#", QueueOptions(f"q {e.name}")) for e in exchanges
        ]
        for index, exchange in enumerate(exchanges):
            transport.publish(
                exchange,
                [OutgoingMessage("task.\x01<b>&", f"{index}".encode(), {"h": "\x00'\""})],
            )
        for index, subscription in enumerate(subscriptions):
            got = collect(subscription, until=lambda kept: len(kept) >= 1, timeout=10)
            got += subscription.receive(0)
            assert bodies(got) == [f"{index}".encode()]
            assert got[0].routing_key == "task.\x01<b>&"
            assert got[0].headers == {"h": "\x00'\""}
    finally:
        transport.close()


def test_filter_policies_and_exact_routing(moto_endpoint: str, exchange_name: str) -> None:
    transport = SqsTransport.from_url(sqs_url(moto_endpoint))
    try:
        topic = Exchange(exchange_name, TOPIC)
        direct = Exchange(exchange_name + "-d", DIRECT)
        bound = {
            key: transport.subscribe(topic, key, QueueOptions(unique_name("q")))
            for key in ("worker.#", "task.*", "*.multi")
        }
        exact = transport.subscribe(direct, "task.sent", QueueOptions(unique_name("q")))
        keys = ["worker", "worker.online", "task.sent", "task.sent.x", "task.multi", "end.multi"]
        transport.publish(topic, [OutgoingMessage(k, k.encode()) for k in keys])
        transport.publish(direct, [OutgoingMessage(k, k.encode()) for k in keys])
        expected = {
            "worker.#": [b"worker", b"worker.online"],
            "task.*": [b"task.sent", b"task.multi"],
            "*.multi": [b"task.multi", b"end.multi"],
        }
        for key, subscription in bound.items():
            got = collect(subscription, until=body_seen(expected[key][-1]), timeout=10)
            assert bodies(got) == expected[key], key
        assert bodies(collect(exact, until=body_seen(b"task.sent"), timeout=10)) == [b"task.sent"]
    finally:
        transport.close()


def test_a_message_over_256_kib_is_refused_and_nothing_of_its_call_sent(
    moto_endpoint: str, exchange_name: str
) -> None:
    transport = SqsTransport.from_url(sqs_url(moto_endpoint))
    exchange = Exchange(exchange_name, TOPIC)
    try:
        subscription = transport.subscribe(exchange, "#", QueueOptions(unique_name("q")))
        fits = OutgoingMessage("task.sent", b"a" * 200_000)
        binary = OutgoingMessage("task.sent", os.urandom(200_000))  # 266,668 in base64
        with pytest.raises(ChannelError, match=str(MAX_MESSAGE)):
            transport.publish(exchange, [fits, binary])
        transport.publish(exchange, [fits, OutgoingMessage("task.sent", b"after")])
        got = collect(subscription, until=body_seen(b"after"), timeout=10)
        assert bodies(got) == [fits.body, b"after"]
    finally:
        transport.close()


def test_dispatcher_batches_and_a_refused_event_through_sns(
    moto_endpoint: str, exchange_name: str
) -> None:
    url = sqs_url(moto_endpoint)
    seen: list[dict[str, object]] = []
    with Receiver(url, exchange=exchange_name, handlers={"*": seen.append}) as receiver:
        with Dispatcher(
            url, hostname="w1@sqs", exchange=exchange_name, buffer_group={"task"}
        ) as dispatcher:
            for n in range(24):  # one task.multi batch of 24
                dispatcher.send("task-received", uuid=f"t{n}")
            assert dispatcher.send("task-failed", uuid="big", traceback="t" * 300_000) is None
            dispatcher.send("worker-offline")
            dispatcher.flush()
            assert dispatcher.stats.events_too_large == 1
        receiver.capture(limit=25, timeout=15)
    assert [e.get("uuid") for e in seen[:24]] == [f"t{n}" for n in range(24)]
    assert seen[24]["type"] == "worker-offline"
    assert receiver.stats.lost_events == {}


def test_closing_deletes_the_queue_and_the_sweep_removes_queues_of_dead_receivers(
    moto_endpoint: str, exchange_name: str
) -> None:
    prefix = own_prefix()
    transport = SqsTransport.from_url(sqs_url(moto_endpoint, queue_prefix=prefix))
    exchange = Exchange(exchange_name, TOPIC)
    try:
        _, sqs = transport._connected()

        def queues() -> list[str]:
            return sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls") or []

        closed = transport.subscribe(exchange, "#", QueueOptions("closed"))
        assert len(queues()) == 1
        closed.close()
        assert queues() == []

        alive = transport.subscribe(exchange, "#", QueueOptions("alive"))
        # A receiver that died: its queue stays, subscribed, with an old alive tag.
        dead = SqsTransport.from_url(sqs_url(moto_endpoint, queue_prefix=prefix))
        orphan = dead.subscribe(exchange, "#", QueueOptions("dead"))
        two_hours_ago = str(int(time.time()) - 7200)
        sqs.tag_queue(QueueUrl=orphan._queue_url, Tags={"evcore-alive": two_hours_ago})
        assert len(queues()) == 2

        swept = transport.sweep(older_than=3600)

        assert swept == [orphan.name]
        assert [url.rsplit("/", 1)[-1] for url in queues()] == [alive.name]
        transport.publish(exchange, [OutgoingMessage("task.sent", b"still")])
        assert bodies(collect(alive, until=body_seen(b"still"), timeout=10)) == [b"still"]
    finally:
        transport.close()
