"""The PostgreSQL LISTEN/NOTIFY transport without a server: URLs, channels, payloads."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evcore.errors import InvalidURL, MessageRejected, MissingDependency
from evcore.transport import OutgoingMessage
from evcore_pgnotify import MAX_PAYLOAD, NotifyTransport, channel_for, parse_settings
from evcore_pgnotify.payload import decode, encode


def test_url_is_a_libpq_url_with_evcore_defaults_and_options() -> None:
    settings = parse_settings(
        "postgresql+notify://u:p%40ss@db:5433/app?sslmode=require&max_drain=50",
        application_name="mon",
    )
    assert settings.address == "db:5433/app"
    assert settings.max_drain == 50
    assert settings.conninfo.startswith("postgresql://u:p%40ss@db:5433/app?")
    assert settings.libpq["sslmode"] == "require"
    assert settings.libpq["application_name"] == "mon"
    assert "max_drain" not in settings.libpq
    assert "p@ss" not in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db/app",
        "postgresql+notify://db:70000/app",
        "postgresql+notify://db/app?max_drain=none",
        "postgresql+notify://db/app?bogus_libpq_option=1",
        "postgresql+notify://[db",
    ],
)
def test_unusable_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidURL):
        NotifyTransport.from_url(url)


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[postgres\]'"):
        NotifyTransport.from_url("postgresql+notify://db/app")


@given(st.text(max_size=200))
def test_every_exchange_name_gets_a_whole_channel_of_its_own(name: str) -> None:
    channel = channel_for(name)
    raw = channel.encode("utf-8", "surrogatepass")
    assert 0 < len(raw) <= 63 and b"\x00" not in raw
    assert channel == name or channel.startswith("evcore.")


@given(
    body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
    routing_key=st.text(max_size=40),
    hostname=st.text(max_size=40),
    utf8=st.booleans(),
)
def test_payload_round_trip(body: bytes, routing_key: str, hostname: str, utf8: bool) -> None:
    message = OutgoingMessage(routing_key, body, {"hostname": hostname, "evcore-seq": 7})
    payload = encode(message, 3, utf8)
    assert "\x00" not in payload
    assert utf8 or payload.isascii()
    got = decode(payload, "ev")
    assert (got.body, got.routing_key, got.exchange) == (body, routing_key, "ev")
    assert got.headers == {"hostname": hostname, "evcore-seq": 7}


def test_event_bodies_travel_as_text_and_identical_messages_differ_on_the_wire() -> None:
    message = OutgoingMessage("task.multi", b'[{"type":"task-received"}]')
    first, second = encode(message, 1, True), encode(message, 2, True)
    assert first.endswith('\n[{"type":"task-received"}]') and first != second
    assert MAX_PAYLOAD == 7999


@pytest.mark.parametrize(
    "payload", ["no metadata line", "{not json\nbody", "[1]\nbody", '{"b": 1}\n!!!']
)
def test_foreign_payloads_are_rejected_as_malformed(payload: str) -> None:
    with pytest.raises(MessageRejected, match="malformed"):
        decode(payload, "ev")
