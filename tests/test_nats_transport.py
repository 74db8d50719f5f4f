"""The NATS transports' pure parts, without a server: subjects, settings, the wire format,
and the errors a missing client or an unreachable server give."""

from __future__ import annotations

import socket
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evcore.errors import ConnectionLost, InvalidURL, MissingDependency, UnsupportedOperation
from evcore.routing import binding_matches
from evcore.transport import DIRECT, FANOUT, TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_nats import NatsTransport, parse_settings
from evcore_nats.subjects import (
    escape_token,
    publish_subject,
    routing_key_of,
    subscribe_subjects,
    unescape_token,
)
from evcore_nats.wire import HEADERS, header_bytes, incoming, nats_headers


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS's subject matching: ``*`` is one token, ``>`` one or more trailing tokens."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(wanted) == len(tokens)


def delivered(subjects: list[str], subject: str) -> bool:
    return any(nats_matches(pattern, subject) for pattern in subjects)


HOSTILE_WORDS = ["a", "b", "", "*", ">", "#", "x y", "%", "%2E", "é", "\r\n", "a>b", "\x00"]
routing_words = st.sampled_from(HOSTILE_WORDS)
routing_keys = st.lists(routing_words, min_size=1, max_size=4).map(".".join)
binding_keys = st.lists(
    st.sampled_from(["a", "b", "", "*", "#", "x y", ">"]), min_size=1, max_size=4
).map(".".join)
names = st.text(min_size=0, max_size=12)


# -- subjects ---------------------------------------------------------------------------


@given(st.text(max_size=30))
def test_a_token_is_one_plain_subject_token_and_round_trips(word: str) -> None:
    token = escape_token(word)
    assert token and all(char.isascii() and (char.isalnum() or char in "-_%") for char in token)
    assert token not in ("*", ">")
    assert unescape_token(token) == word.encode("utf-8", "surrogatepass").decode(
        "utf-8", "replace"
    )


@settings(max_examples=400)
@given(binding_keys, routing_keys, st.sampled_from(["", "evcore", "a.b"]))
def test_nats_matches_topic_bindings_exactly_or_as_a_superset_the_core_filters(
    binding_key: str, routing_key: str, prefix: str
) -> None:
    subjects, exact = subscribe_subjects(prefix, "ev", TOPIC, binding_key)
    got = delivered(subjects, publish_subject(prefix, "ev", routing_key))
    if exact:
        assert got == binding_matches(binding_key, routing_key)
    else:
        assert got or not binding_matches(binding_key, routing_key)


@given(names, names, routing_keys)
def test_no_exchange_name_reaches_another_exchanges_subjects(
    first: str, second: str, routing_key: str
) -> None:
    subjects, _ = subscribe_subjects("", second, FANOUT, "#")
    assert delivered(subjects, publish_subject("", first, routing_key)) == (first == second)


@given(names, routing_keys)
def test_the_routing_key_comes_back_from_the_subject(exchange: str, routing_key: str) -> None:
    subject = publish_subject("evcore", exchange, routing_key)
    assert " " not in subject and "\r" not in subject
    assert routing_key_of(subject, "evcore", exchange) == routing_key


@pytest.mark.parametrize(
    ("binding_key", "subjects", "exact"),
    [
        ("#", ["ev.>"], True),
        ("task.*", ["ev.task.*"], True),
        # AMQP's # may match no word at all; NATS's > needs one, so the bare prefix is
        # subscribed as well.
        ("worker.#", ["ev.worker.>", "ev.worker"], True),
        ("*.#", ["ev.*.>", "ev.*"], True),
        # A # before the end has no NATS form: > from there on, filtered by the core.
        ("#.heartbeat", ["ev.>"], False),
        ("a.#.b", ["ev.a.>"], False),
        # Wildcard characters inside a word are literal in AMQP, escaped here.
        ("ta*k.>", ["ev.ta%2Ak.%3E"], True),
    ],
)
def test_where_amqp_and_nats_wildcards_differ(
    binding_key: str, subjects: list[str], exact: bool
) -> None:
    assert subscribe_subjects("", "ev", TOPIC, binding_key) == (subjects, exact)


def test_zero_words_for_hash_are_delivered_and_a_middle_hash_is_filtered() -> None:
    worker, _ = subscribe_subjects("", "ev", TOPIC, "worker.#")
    assert delivered(worker, publish_subject("", "ev", "worker"))
    middle, exact = subscribe_subjects("", "ev", TOPIC, "#.heartbeat")
    superset = publish_subject("", "ev", "worker.online")
    assert not exact and delivered(middle, superset)
    assert not binding_matches("#.heartbeat", "worker.online")  # the core drops it


def test_fanout_and_direct_subjects() -> None:
    assert subscribe_subjects("", "ev", FANOUT, "task.*") == (["ev.>"], True)
    assert subscribe_subjects("", "ev", DIRECT, "task.*") == (["ev.task.%2A"], True)
    assert subscribe_subjects("p", "a.b", DIRECT, "") == (["p.a%2Eb.%"], True)


# -- settings ---------------------------------------------------------------------------


def test_settings_from_url_and_options() -> None:
    parsed = parse_settings(
        "nats://alice:s%3Acret@nats.example:4333?name=mon&flush_timeout=2.5",
        subject_prefix="evcore.prod",
    )
    assert (parsed.host, parsed.port, parsed.user, parsed.password) == (
        "nats.example",
        4333,
        "alice",
        "s:cret",
    )
    assert parsed.name == "mon" and parsed.flush_timeout == 2.5
    assert parsed.subject_prefix == "evcore.prod"
    assert "s:cret" not in repr(parsed)
    assert parse_settings("nats://tok3n@h").token == "tok3n"
    assert parse_settings("nats://").address == "127.0.0.1:4222"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "nats://[unclosed",
        "nats://h/path",
        "nats://h:0",
        "nats://h?ping_interval=-1",
        "nats://h?max_buffered=0",
        "nats://h?subject_prefix=a..b",
        "nats://h?subject_prefix=%3E",
        "nats://h?bogus=1",
        "nats://h?name=a&name=b",
    ],
)
def test_bad_urls_are_invalid_url(url: str) -> None:
    with pytest.raises(InvalidURL):
        NatsTransport.from_url(url)


def test_missing_nats_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[nats\]'"):
        NatsTransport.from_url("nats://")


# -- the wire format --------------------------------------------------------------------


def test_properties_and_headers_round_trip_through_nats_headers() -> None:
    message = OutgoingMessage(
        "task.sent",
        b"{}",
        {"hostname": "w\u00f6rker\r\n@h", "evcore-seq": 7, "nested": [1, None]},
        content_type="application/x-test",
        content_encoding="binary",
    )
    headers = nats_headers(message)
    assert all(value.isascii() and "\n" not in value for value in headers.values())
    back = incoming(message.body, "task.sent", "ev", headers)
    assert back.headers == message.headers
    assert (back.content_type, back.content_encoding) == ("application/x-test", "binary")
    wire = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    assert header_bytes(headers) == len(wire.encode())


def test_foreign_and_broken_headers() -> None:
    plain = incoming(b"x", "k", "ev", None)
    assert (plain.content_type, plain.headers, plain.rejected) == ("application/json", {}, None)
    for raw in ("not json", "[1, 2]"):
        assert incoming(b"x", "k", "ev", {HEADERS: raw}).rejected == "malformed"
    with pytest.raises(ValueError):
        nats_headers(OutgoingMessage("k", b"", content_type="text/plain\r\nX-Evil: 1"))
    with pytest.raises(ValueError):
        nats_headers(OutgoingMessage("k", b"", {"blob": b"\x00"}))


# -- without a server -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_connection_lost_and_no_thread_is_left() -> None:
    before = set(threading.enumerate())
    transport = NatsTransport.from_url(f"nats://127.0.0.1:{free_port()}?connect_timeout=1")
    exchange = Exchange("ev", TOPIC)
    for _ in range(2):
        with pytest.raises(ConnectionLost, match=r"cannot connect to NATS at 127\.0\.0\.1"):
            transport.publish(exchange, [OutgoingMessage("a", b"{}")])
        with pytest.raises(ConnectionLost):
            transport.subscribe(exchange, "#", QueueOptions("q"))
    transport.close()
    transport.close()
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionLost, match="closed"):
        transport.publish(exchange, [OutgoingMessage("a", b"{}")])


def test_unknown_exchange_type_is_unsupported() -> None:
    transport = NatsTransport.from_url("nats://127.0.0.1:1")
    with pytest.raises(UnsupportedOperation, match=r"'ev'.*'headers'"):
        transport.publish(Exchange("ev", "headers"), [OutgoingMessage("a", b"{}")])
    transport.close()
