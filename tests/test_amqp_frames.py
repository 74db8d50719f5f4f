"""evcore_amqp.frames: basic.publish frames byte for byte as pika encodes them, and read
back by pamqp (the codec of the publishing connection) as the message that was sent."""

from __future__ import annotations

from typing import Any

import pytest

pika = pytest.importorskip("pika")

from pika import frame, spec  # noqa: E402

pamqp_frame = pytest.importorskip("pamqp.frame")

from evcore.transport import OutgoingMessage  # noqa: E402
from evcore_amqp.frames import PublishEncoder  # noqa: E402
from evcore_amqp.options import parse_url  # noqa: E402
from evcore_amqp.publisher import Publisher  # noqa: E402
from evcore_amqp.wire import PublishConnection  # noqa: E402

FRAME_MAX = 131072


def pika_frames(channel: int, exchange: str, message: OutgoingMessage, frame_max: int) -> bytes:
    """What pika's Connection._send_message writes for this publish."""
    properties = spec.BasicProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        headers=dict(message.headers),
    )
    method = spec.Basic.Publish(exchange=exchange, routing_key=message.routing_key)
    pieces = [
        frame.Method(channel, method).marshal(),
        frame.Header(channel, len(message.body), properties).marshal(),
    ]
    body_max = frame_max - 8
    for start in range(0, len(message.body), body_max):
        pieces.append(frame.Body(channel, message.body[start : start + body_max]).marshal())
    return b"".join(pieces)


def ours(channel: int, exchange: str, message: OutgoingMessage, frame_max: int) -> bytes:
    out: list[bytes] = []
    assert PublishEncoder(channel, frame_max).encode(exchange, message, out)
    return b"".join(out)


def event_headers(seq: int, hostname: str = "w1@example") -> dict[str, Any]:
    return {"hostname": hostname, "evcore-boot": "0" * 32, "evcore-seq": seq}


MESSAGES = [
    OutgoingMessage("task.started", b'{"type": "task-started"}', event_headers(1)),
    OutgoingMessage("worker.heartbeat", b"{}", event_headers(2**31 - 1)),
    OutgoingMessage("task.multi", b"[" + b"{}," * 5000 + b"{}]", event_headers(2**31)),
    OutgoingMessage("task.failed", b"x" * (FRAME_MAX - 8), event_headers(-5)),
    OutgoingMessage("task.failed", b"y" * (FRAME_MAX - 7), event_headers(2**40)),
    OutgoingMessage("task.sent", bytes(range(256)) * 2000, event_headers(7, "wörker@hôst-ü")),
    OutgoingMessage("task.sent", b"", {"hostname": "naïve"}),
    OutgoingMessage("custom.é", b"{}", {}),
    OutgoingMessage("task.x", b"{}", {"a": 1, "b": "two", "c": -(2**63)}, "text/plain", "x"),
    OutgoingMessage("task.x", b"{}", event_headers(3), delivery_mode=2, priority=9),
]


@pytest.mark.parametrize("message", MESSAGES, ids=range(len(MESSAGES)))
@pytest.mark.parametrize("channel", [1, 7])
def test_frames_are_byte_identical_to_pikas(message: OutgoingMessage, channel: int) -> None:
    assert ours(channel, "celeryev", message, FRAME_MAX) == pika_frames(
        channel, "celeryev", message, FRAME_MAX
    )


def test_small_frame_max_splits_the_body_as_pika_does() -> None:
    message = OutgoingMessage("task.multi", b"0123456789" * 1000, event_headers(42))
    assert ours(1, "ev", message, 4096) == pika_frames(1, "ev", message, 4096)


def test_templates_are_reused_across_sequence_numbers() -> None:
    encoder = PublishEncoder(1, FRAME_MAX)
    for seq in (1, 2, 2**31, 3):
        message = OutgoingMessage("task.started", b"{}", event_headers(seq))
        out: list[bytes] = []
        assert encoder.encode("celeryev", message, out)
        assert b"".join(out) == pika_frames(1, "celeryev", message, FRAME_MAX)
    assert len(encoder._headers) == 1


@pytest.mark.parametrize(
    "message",
    [
        OutgoingMessage("task.x", b"{}", {"flag": True}),
        OutgoingMessage("task.x", b"{}", {"ratio": 0.5}),
        OutgoingMessage("task.x", b"{}", {"nothing": None}),
        OutgoingMessage("task.x", b"{}", {"raw": b"bytes"}),
        OutgoingMessage("task.x", b"{}", {"huge": 2**64}),
        OutgoingMessage("task.x", b"{}", {"k" * 256: "long name"}),
        OutgoingMessage("k" * 256, b"{}", {}),
        OutgoingMessage("task.x", b"{}", {}, delivery_mode=256),
    ],
)
def test_what_the_encoder_does_not_cover_is_left_to_pamqp(message: OutgoingMessage) -> None:
    out: list[bytes] = []
    assert not PublishEncoder(1, FRAME_MAX).encode("celeryev", message, out)
    assert out == []


def read_back(data: bytes) -> tuple[Any, Any, bytes]:
    """The publish method, the content header and the body, decoded by pamqp."""
    values = []
    while data:
        size, _channel, value = pamqp_frame.unmarshal(data)
        values.append(value)
        data = data[size:]
    method, header, *bodies = values
    return method, header, b"".join(body.value for body in bodies)


def assert_carries(data: bytes, exchange: str, message: OutgoingMessage) -> None:
    method, header, body = read_back(data)
    assert (method.exchange, method.routing_key) == (exchange, message.routing_key)
    assert header.body_size == len(message.body) and body == message.body
    properties = header.properties
    assert properties.content_type == message.content_type
    assert properties.content_encoding == message.content_encoding
    assert properties.delivery_mode == message.delivery_mode
    assert properties.priority == message.priority
    assert (properties.headers or {}) == dict(message.headers)


@pytest.mark.parametrize("message", MESSAGES, ids=range(len(MESSAGES)))
def test_pamqp_reads_our_frames_as_the_message_sent(message: OutgoingMessage) -> None:
    assert_carries(ours(1, "celeryev", message, FRAME_MAX), "celeryev", message)


@pytest.mark.parametrize(
    "message",
    [
        OutgoingMessage("task.x", b"{}", {"flag": True, "ratio": 0.5, "meta": {"a": [1, "b"]}}),
        OutgoingMessage("task.x", b"{}", {"nothing": None, "huge": 2**40}),
        OutgoingMessage("task.x", b"z" * (3 * 4096), {"n": 1}),
    ],
)
def test_messages_left_to_pamqp_carry_the_same(message: OutgoingMessage) -> None:
    """What the templates do not cover goes out encoded by pamqp, in the frame size of the
    connection."""
    options = parse_url("amqp://127.0.0.1:1//")
    connection = PublishConnection(options, "test")
    connection.channel, connection.frame_max = 1, 4096
    frames = Publisher(options)._encode_with_pamqp(connection, "celeryev", message)
    assert all(len(frame) <= 4096 for frame in frames)
    assert_carries(b"".join(frames), "celeryev", message)
