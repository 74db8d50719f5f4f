"""The SQS transport without AWS: URLs, names, filter policies, the message format."""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evcore.errors import InvalidURL, MessageRejected, MissingDependency
from evcore.routing import binding_matches
from evcore.transport import OutgoingMessage
from evcore_sqs import SqsTransport, filter_policy, parse_settings, queue_name, topic_name
from evcore_sqs.payload import decode, encode, size_of

_WORDS = st.lists(
    st.sampled_from(["task", "worker", "multi", "a", "*", "#"]), min_size=1, max_size=4
)
_KEYS = st.lists(st.sampled_from(["task", "worker", "multi", "a", "b"]), max_size=4)


def test_url_and_options() -> None:
    settings = parse_settings(
        "sqs://AKIA:se%2Fcret@?region=eu-west-1&fifo=false&wait_time_seconds=20",
        queue_prefix="mon-",
    )
    assert (settings.access_key, settings.secret_key) == ("AKIA", "se/cret")
    assert (settings.region, settings.fifo, settings.wait_time_seconds) == ("eu-west-1", False, 20)
    assert settings.queue_prefix == "mon-"
    assert "se/cret" not in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        "sqs://sqs.us-east-1.amazonaws.com/",
        "sqs://?message_retention=10",
        "sqs://?queue_prefix=bad.prefix",
        "sqs://?fifo=maybe",
        "amqp://",
        "sqs://[x",
    ],
)
def test_unusable_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidURL):
        SqsTransport.from_url(url)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[sqs\]'"):
        SqsTransport.from_url("sqs://?region=us-east-1")


@given(st.text(max_size=300), st.booleans())
def test_names_are_valid_for_aws_and_keep_distinct_exchanges_apart(name: str, fifo: bool) -> None:
    settings = parse_settings("sqs://", fifo=fifo)
    topic, queue = topic_name(settings, name), queue_name(settings, name)
    base = r"[A-Za-z0-9_-]+" + (r"\.fifo" if fifo else "")
    assert re.fullmatch(base, topic) and len(topic) <= 256
    assert re.fullmatch(base, queue) and len(queue) <= 80
    assert queue_name(settings, name, "abc123") != queue
    assert topic_name(settings, name + "x") != topic


@given(_WORDS, _KEYS)
def test_filter_policy_lets_through_every_key_the_binding_matches(
    binding: list[str], key: list[str]
) -> None:
    binding_key, routing_key = ".".join(binding), ".".join(key)
    policy = filter_policy("topic", binding_key)
    if policy is None or not binding_matches(binding_key, routing_key):
        return
    (rule,) = policy["routing_key"]
    if isinstance(rule, dict):
        passes = routing_key.startswith(rule["prefix"])
    else:
        passes = routing_key == rule
    assert passes, (binding_key, routing_key, policy)


def test_filter_policies() -> None:
    assert filter_policy("topic", "#") is None
    assert filter_policy("fanout", "task.sent") is None
    assert filter_policy("topic", "worker.#") == {"routing_key": [{"prefix": "worker"}]}
    assert filter_policy("topic", "task.*") == {"routing_key": [{"prefix": "task."}]}
    assert filter_policy("direct", "task.sent") == {"routing_key": ["task.sent"]}
    assert filter_policy("topic", "*.multi") is None


@given(
    body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
    key=st.text(max_size=30),
)
def test_message_round_trip_in_valid_sqs_text(body: bytes, key: str) -> None:
    text, attributes = encode(OutgoingMessage(key, body, {"hostname": "w\x00"}))
    forbidden = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
    assert text and not forbidden.search(text)
    assert not any(forbidden.search(a["StringValue"]) for a in attributes.values())
    assert size_of(text, attributes) >= len(text)
    got = decode(text, attributes, "ev")
    assert (got.body, got.routing_key, got.headers) == (body, key, {"hostname": "w\x00"})


@pytest.mark.parametrize("body", ["", "x", "b!!!", "t{}"])
def test_foreign_messages_are_rejected(body: str) -> None:
    with pytest.raises(MessageRejected, match="malformed"):
        decode(body, {}, "ev")
