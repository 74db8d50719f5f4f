"""Hostile Redis payloads through ``evcore_adapter_helpers.envelope.unpack``: each one
either unpacks to a well-formed IncomingMessage or is refused with MessageRejected, never
anything else; what unpacks then goes through the Receiver without raising."""

from __future__ import annotations

import base64
import json
from typing import Any

from _fuzz_strategies import bodies, content_types, encodings, headers, values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_receive import FeedTransport, receiver_for

from evcore import State, codec
from evcore.errors import MessageRejected
from evcore.transport import IncomingMessage, OutgoingMessage
from evcore_adapter_helpers.envelope import pack, unpack


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A kombu envelope whose fields are each right, wrongly typed or missing."""
    body = draw(bodies)
    encoded = base64.b64encode(body).decode("ascii")
    envelope: dict[str, Any] = {
        "body": draw(st.one_of(st.just(encoded), st.text(max_size=12), values)),
        "content-type": draw(st.one_of(content_types, values)),
        "content-encoding": draw(st.one_of(encodings, values)),
        "headers": draw(st.one_of(headers, values)),
        "properties": draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "body_encoding": st.one_of(st.just("base64"), values),
                        "delivery_info": st.one_of(
                            st.fixed_dictionaries({"exchange": values, "routing_key": values}),
                            values,
                        ),
                    }
                ),
                values,
            )
        ),
    }
    for key in draw(st.lists(st.sampled_from(sorted(envelope)), max_size=2)):
        envelope.pop(key, None)
    return envelope


payloads = st.one_of(
    st.builds(lambda e: json.dumps(e).encode(), envelopes()),
    st.builds(lambda v: json.dumps(v).encode(), values),
    st.binary(max_size=64),
    st.text(max_size=64),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads, st.sampled_from(["", "task.started"]))
def test_unpack_returns_a_message_or_refuses(payload: bytes | str, default_key: str) -> None:
    try:
        message = unpack(payload, default_key)
    except MessageRejected as exc:
        assert exc.reason == "malformed"
        return
    assert isinstance(message.body, bytes)
    assert isinstance(message.routing_key, str) and isinstance(message.exchange, str)
    assert message.content_type is None or isinstance(message.content_type, str)
    assert message.content_encoding is None or isinstance(message.content_encoding, str)
    assert isinstance(message.headers, dict)
    transport, state = FeedTransport(), State()
    receiver = receiver_for(transport, state)
    transport.feed(message)
    receiver.capture(timeout=0.002)
    assert receiver.stats.messages == 1
    assert receiver.stats.handler_errors == 0


@settings(max_examples=100, deadline=None)
@given(bodies, headers, st.text(max_size=20))
def test_pack_then_unpack_keeps_every_field(
    body: bytes, message_headers: dict[str, Any], routing_key: str
) -> None:
    try:
        expected = codec.loads(codec.dumps(message_headers))
    except (TypeError, ValueError):
        return
    sent = OutgoingMessage(routing_key, body, message_headers)
    got = unpack(pack("celeryev", sent))
    assert got == IncomingMessage(
        body, routing_key, "celeryev", sent.content_type, sent.content_encoding, got.headers
    )
    assert json.dumps(got.headers, sort_keys=True) == json.dumps(expected, sort_keys=True)
