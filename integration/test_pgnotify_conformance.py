"""The PostgreSQL LISTEN/NOTIFY transport passes evcore's transport conformance suite
against a real PostgreSQL, and keeps hostile names and oversized messages in hand."""

from __future__ import annotations

import json
import os

import pytest
from _net import free_port
from _pgnotify_support import notify_url

from evcore import Dispatcher, Receiver
from evcore.errors import ChannelError
from evcore.testing import TransportConformance
from evcore.testing.harness import bodies, body_seen, collect
from evcore.transport import TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_pgnotify import MAX_PAYLOAD, NotifyTransport, channel_for

pytestmark = pytest.mark.postgres


class TestNotifyConformance(TransportConformance):
    # A notification carries at most 7999 bytes; binary bodies travel in base64.
    large_payload_size = 5000
    invalid_urls = (
        "postgresql+notify://127.0.0.1:99999/test",
        "postgresql+notify://127.0.0.1/test?max_drain=0",
        "postgresql+notify://127.0.0.1/test?no_such_libpq_option=1",
        "postgresql://127.0.0.1/test",
    )

    @pytest.fixture(autouse=True)
    def _postgres(self, postgres_url: str) -> None:
        self.transport_url = notify_url(postgres_url)
        self.unreachable_url = f"postgresql+notify://postgres@127.0.0.1:{free_port()}/test"


HOSTILE_NAMES = [
    'ev"; NOTIFY celeryev, \'pwned\'; --',
    "ev'); SELECT pg_sleep(10); --",
    "Évènements ✓ 🎉",
    "MiXeD.Case",
    "with space and\ttab",
    "x" * 63,
    "x" * 63 + "-longer-than-an-identifier-a",
    "x" * 63 + "-longer-than-an-identifier-b",
    "",
]


def test_hostile_exchange_names_reach_only_their_own_subscribers(postgres_url: str) -> None:
    transport = NotifyTransport.from_url(notify_url(postgres_url))
    try:
        exchanges = [Exchange(f"{name}", TOPIC) for name in HOSTILE_NAMES]
        subscriptions = [transport.subscribe(e, "#", QueueOptions("q")) for e in exchanges]
        for index, exchange in enumerate(exchanges):
            body = json.dumps({"to": index, "quote": "'\"\\;--"}).encode()
            transport.publish(
                exchange,
                [OutgoingMessage("task.'\";--", body, {"hostname": "w'\";--@x"})],
            )
        for index, subscription in enumerate(subscriptions):
            got = collect(subscription, until=lambda kept: len(kept) >= 1, timeout=10)
            got += subscription.receive(0.3)  # anything meant for another exchange
            assert [json.loads(m.body)["to"] for m in got] == [index]
            assert got[0].routing_key == "task.'\";--"
            assert got[0].headers == {"hostname": "w'\";--@x"}
    finally:
        transport.close()
    assert channel_for(HOSTILE_NAMES[6]) != channel_for(HOSTILE_NAMES[7])
    assert all(0 < len(channel_for(n).encode()) <= 63 for n in HOSTILE_NAMES)


def test_a_message_too_large_for_a_notification_is_refused_and_nothing_of_its_call_sent(
    postgres_url: str, exchange_name: str
) -> None:
    transport = NotifyTransport.from_url(notify_url(postgres_url))
    exchange = Exchange(exchange_name, TOPIC)
    try:
        subscription = transport.subscribe(exchange, "#", QueueOptions("q"))
        fits = OutgoingMessage("task.sent", b"a" * 7800)
        binary = OutgoingMessage("task.sent", os.urandom(6000))  # 8000 in base64
        with pytest.raises(ChannelError, match=str(MAX_PAYLOAD)):
            transport.publish(exchange, [fits, binary])
        transport.publish(exchange, [fits, OutgoingMessage("task.sent", b"after")])
        got = collect(subscription, until=body_seen(b"after"), timeout=10)
        assert bodies(got) == [fits.body, b"after"]
    finally:
        transport.close()


def test_dispatcher_splits_batches_to_fit_and_counts_an_event_too_large(
    postgres_url: str, exchange_name: str
) -> None:
    url = notify_url(postgres_url)
    seen: list[dict[str, object]] = []
    with Receiver(url, exchange=exchange_name, handlers={"*": seen.append}) as receiver:
        with Dispatcher(
            url, hostname="w1@pg", exchange=exchange_name, buffer_group={"task"}
        ) as dispatcher:
            for n in range(24):  # about 24 kB in one batch: four notifications or more
                dispatcher.send("task-received", uuid=f"t{n}", args="a" * 800)
            assert dispatcher.send("task-failed", uuid="big", traceback="t" * 9000) is None
            dispatcher.send("worker-offline")
            dispatcher.flush()
            assert dispatcher.stats.events_too_large == 1
            assert dispatcher.stats.events_sent == 25
            assert dispatcher.stats.messages_sent >= 5
        receiver.capture(limit=25, timeout=10)
    assert [e.get("uuid") for e in seen[:24]] == [f"t{n}" for n in range(24)]
    assert seen[24]["type"] == "worker-offline"
    assert receiver.stats.lost_events == {}
