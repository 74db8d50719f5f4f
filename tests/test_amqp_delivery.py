"""evcore_amqp.delivery: deliveries decoded as pika decodes them, other frames passed on."""

from __future__ import annotations

import random
from typing import Any

import pytest

pika = pytest.importorskip("pika")

from pika import frame, spec  # noqa: E402

from evcore.transport import IncomingMessage  # noqa: E402
from evcore_amqp.delivery import DeliveryReader  # noqa: E402

CHANNEL = 1
FRAME_MAX = 4096


def delivery_frames(
    exchange: str, routing_key: str, properties: Any, body: bytes, channel: int = CHANNEL
) -> bytes:
    """A delivery as a broker sends it, marshalled by pika."""
    deliver = spec.Basic.Deliver("ctag1.abc", 7, False, exchange, routing_key)
    pieces = [
        frame.Method(channel, deliver).marshal(),
        frame.Header(channel, len(body), properties).marshal(),
    ]
    step = FRAME_MAX - 8
    for start in range(0, len(body), step):
        pieces.append(frame.Body(channel, body[start : start + step]).marshal())
    return b"".join(pieces)


def as_pika_decodes(
    exchange: str, routing_key: str, properties: Any, body: bytes
) -> IncomingMessage:
    """What the subscription built from pika's own decoding of the same bytes."""
    decoded = spec.BasicProperties()
    decoded.decode(b"".join(properties.encode()))
    return IncomingMessage(
        body,
        routing_key,
        exchange,
        decoded.content_type,
        decoded.content_encoding,
        decoded.headers or {},
    )


def props(**fields: Any) -> Any:
    return spec.BasicProperties(**fields)


EVENT = props(
    content_type="application/json",
    content_encoding="utf-8",
    headers={"hostname": "w1@example", "evcore-boot": "0" * 32, "evcore-seq": 12},
    delivery_mode=1,
    priority=0,
)
DELIVERIES = [
    ("celeryev", "task.started", EVENT, b'{"type": "task-started"}'),
    ("celeryev", "task.multi", EVENT, b"[" + b"{}," * 3000 + b"{}]"),
    ("celeryev", "worker.heartbeat", props(headers={"hostname": "wörker@hôst"}), b"{}"),
    ("ev", "task.x", props(content_type="application/json"), b""),
    ("ev", "t", props(), b"x" * (FRAME_MAX - 8)),
    ("ev", "custom.é", props(headers={"flag": True, "n": -3}), b"{}"),
    # Shapes left to pika's decoder: a long integer, a nested table, more properties.
    ("ev", "a", props(headers={"evcore-seq": 2**40}), b"{}"),
    ("ev", "b", props(headers={"nested": {"a": 1}, "none": None}), b"{}"),
    ("ev", "c", props(content_type="text/plain", message_id="m1", timestamp=5), b"{}"),
    ("ev", "d", props(headers={"raw": b"\xff\xfe"}), b"{}"),
]


def other_frames() -> list[bytes]:
    return [
        frame.Heartbeat().marshal(),
        frame.Method(2, spec.Basic.Deliver("t", 1, False, "ev", "other.channel")).marshal(),
        frame.Method(CHANNEL, spec.Basic.Cancel("ctag1.abc")).marshal(),
    ]


def run(data: bytes, seed: int) -> tuple[list[IncomingMessage], list[bytes], DeliveryReader]:
    messages: list[IncomingMessage] = []
    passed: list[bytes] = []

    def decode(raw: bytes) -> tuple[Any, Any, Any]:
        properties = spec.BasicProperties()
        properties.decode(raw)
        return properties.content_type, properties.content_encoding, properties.headers

    reader = DeliveryReader(CHANNEL, messages.append, passed.append, decode)
    rnd = random.Random(seed)
    offset = 0
    while offset < len(data):
        step = rnd.choice((1, 3, 100, 4096, 20000))
        reader.feed(data[offset : offset + step])
        offset += step
    return messages, passed, reader


@pytest.mark.parametrize("seed", range(4))
def test_deliveries_decode_as_pika_decodes_them_in_any_chunking(seed: int) -> None:
    others = other_frames()
    stream = [others[0]]
    for index, delivery in enumerate(DELIVERIES):
        stream.append(delivery_frames(*delivery))
        stream.append(others[index % 2])
    stream.append(others[2])
    data = b"".join(stream)
    messages, passed, reader = run(data, seed)
    assert messages == [as_pika_decodes(*delivery) for delivery in DELIVERIES]
    expected_passed = [others[0]] + [others[i % 2] for i in range(len(DELIVERIES))] + [others[2]]
    assert passed == expected_passed
    assert reader.messages == len(DELIVERIES)
    assert reader.bytes_read + sum(map(len, passed)) == len(data)


def test_a_heartbeat_between_the_frames_of_one_delivery_is_passed_on() -> None:
    whole = delivery_frames("ev", "task.multi", EVENT, b"z" * (3 * FRAME_MAX))
    method_end = 8 + int.from_bytes(whole[3:7], "big")
    heartbeat = frame.Heartbeat().marshal()
    messages, passed, _ = run(whole[:method_end] + heartbeat + whole[method_end:], 0)
    assert passed == [heartbeat]
    assert messages == [as_pika_decodes("ev", "task.multi", EVENT, b"z" * (3 * FRAME_MAX))]


def test_a_frame_with_a_bad_end_octet_is_left_to_pika() -> None:
    bad = bytearray(delivery_frames("ev", "x", EVENT, b"{}"))
    method_end = 8 + int.from_bytes(bad[3:7], "big")
    bad[method_end - 1] = 0
    messages, passed, _ = run(bytes(bad[:method_end]), 0)
    assert messages == []
    assert passed == [bytes(bad[:method_end])]
