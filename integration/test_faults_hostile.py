"""Hostile messages published on real brokers, behind the transports' backs: garbage
envelopes on Redis channels, raw AMQP messages with pickle and missing content types,
oversized and deeply nested bodies, junk batch elements, wrongly typed event fields and
sequence headers. The receiver keeps going, counts each refusal with its reason, never
unpickles, and the good event published last still arrives."""

from __future__ import annotations

import _pickle
import json
import pickle
from collections.abc import Iterator
from typing import Any

import pika
import pytest
import redis
from _amqp_support import delete_exchanges, probe
from _net import wait_for
from _redis_support import TEST_DB, with_db

from evcore import Receiver, State
from evcore.transport import OutgoingMessage
from evcore_adapter_helpers.envelope import pack

MAX_BYTES = 10_000
PICKLE = "application/x-python-serialize"
GOOD = {"type": "worker-online", "hostname": "good@host", "timestamp": 1.7e9, "clock": 1}
BAD_FIELDS = {"type": "task-started", "uuid": 5, "hostname": "w", "timestamp": 1.0}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


#: (body, content type, headers) of each hostile message the receiver must refuse or
#: tolerate, and what it must count for it.
HOSTILE: list[tuple[bytes, str | None, dict[str, Any]]] = [
    (pickle.dumps(GOOD), PICKLE, {}),
    (pickle.dumps(GOOD), "application/json", {}),
    (b"\x00\xff not json", "application/json", {}),
    (b"x" * (MAX_BYTES + 1), "application/json", {}),
    (b"[" * 500 + b"]" * 500, "application/json", {}),
    (dumps([1, "x", None, [], {"no": "type"}]), "application/json", {}),
    (dumps(BAD_FIELDS), "application/json", {}),
    (dumps({**GOOD, "hostname": "seq@h"}), "application/json", {"evcore-seq": "1"}),
    (dumps({**GOOD, "hostname": "boot@h"}), None, {"evcore-boot": 7, "evcore-seq": 2**62}),
]
#: What the receiver counts for HOSTILE, by reason.
EXPECTED_REJECTED = {
    "content-type": 1,
    "malformed": 2,
    "too-large": 1,
    "too-deep": 1,
    "not-an-event": 5,
}


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append("unpickle")
        raise AssertionError("something tried to unpickle a received body")

    for module in (pickle, _pickle):
        monkeypatch.setattr(module, "loads", refuse)
        monkeypatch.setattr(module, "load", refuse)
    yield calls
    assert calls == []


def capture_until_good(receiver: Receiver, seen: list[dict[str, Any]]) -> None:
    assert wait_for(
        lambda: (
            receiver.capture(timeout=0.2) >= 0 and any(e["hostname"] == "good@host" for e in seen)
        ),
        timeout=20,
        step=0,
    ), "the good event published after the hostile ones never arrived"


def check(
    receiver: Receiver, state: State, seen: list[dict[str, Any]], unpackable: int = 0
) -> None:
    expected = {**EXPECTED_REJECTED, "malformed": EXPECTED_REJECTED["malformed"] + unpackable}
    assert dict(receiver.stats.rejected) == expected
    assert receiver.stats.handler_errors == 0
    assert state.rejected == {"bad-uuid": 1}
    assert {e["hostname"] for e in seen} == {"w", "seq@h", "boot@h", "good@host"}
    assert set(state.workers) == {"seq@h", "boot@h", "good@host"}


@pytest.mark.redis
def test_hostile_messages_on_a_redis_channel(redis_url: str, exchange_name: str) -> None:
    url = with_db(redis_url)
    state, seen = State(), []

    def handle(event: dict[str, Any]) -> None:
        seen.append(event)
        state.event(event)

    receiver = Receiver(
        url, exchange=exchange_name, handlers={"*": handle}, max_message_bytes=MAX_BYTES
    )
    client = redis.Redis.from_url(url)
    channel = f"/{TEST_DB}.{exchange_name}/task.started"
    envelope = json.loads(pack(exchange_name, OutgoingMessage("task.started", b"{}")))
    garbage_envelopes = [
        b"not json at all",
        b"[1, 2, 3]",
        json.dumps({**envelope, "body": "***not base64***"}).encode(),
        json.dumps({**envelope, "body": None, "properties": {}}).encode(),
    ]
    try:
        for payload in garbage_envelopes:
            client.publish(channel, payload)
        for body, content_type, headers in HOSTILE:
            message = OutgoingMessage(
                "task.started", body, headers, content_type=content_type or ""
            )
            client.publish(channel, pack(exchange_name, message))
        client.publish(channel, pack(exchange_name, OutgoingMessage("worker.online", dumps(GOOD))))
        capture_until_good(receiver, seen)
        subscription = receiver._subscription
        assert subscription is not None
        # Envelopes the adapter cannot even unpack are counted by it and by the Receiver.
        assert subscription.rejected == len(garbage_envelopes)  # type: ignore[attr-defined]
    finally:
        receiver.close()
        client.close()
    check(receiver, state, seen, unpackable=len(garbage_envelopes))


@pytest.mark.amqp
def test_hostile_messages_on_a_rabbitmq_exchange(amqp_url: str, exchange_name: str) -> None:
    state, seen = State(), []

    def handle(event: dict[str, Any]) -> None:
        seen.append(event)
        state.event(event)

    receiver = Receiver(
        amqp_url, exchange=exchange_name, handlers={"*": handle}, max_message_bytes=MAX_BYTES
    )
    connection = probe(amqp_url)
    try:
        channel = connection.channel()
        for body, content_type, headers in HOSTILE:
            properties = pika.BasicProperties(content_type=content_type, headers=headers)
            channel.basic_publish(exchange_name, "task.started", body, properties)
        nested_headers = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            headers={"x": {"y": [1, {"z": b"\x00"}]}},
        )
        channel.basic_publish(exchange_name, "worker.online", dumps(GOOD), nested_headers)
        capture_until_good(receiver, seen)
    finally:
        receiver.close()
        connection.close()
        delete_exchanges(amqp_url, {exchange_name})
    check(receiver, state, seen)
