"""Redis transport without a broker: URLs, options, channel names, patterns, error mapping."""

from __future__ import annotations

import re
import socket
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from evcore.errors import (
    ChannelError,
    ConnectionLost,
    InvalidURL,
    MissingDependency,
    UnsupportedOperation,
)
from evcore.registry import connect
from evcore.routing import binding_matches
from evcore.transport import FANOUT, TOPIC, Exchange, OutgoingMessage, QueueOptions
from evcore_redis import RedisTransport, parse_settings
from evcore_redis.client import connection_for, translate
from evcore_redis.settings import binding_glob, glob_escape


def redis_glob_regex(pattern: str) -> re.Pattern[str]:
    """Redis's glob rules for ``*``, ``?`` and backslash escapes, as a regex."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            index += 1
            out.append(re.escape(pattern[index]))
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- URLs -------------------------------------------------------------------------------


def test_defaults_follow_kombu() -> None:
    settings = parse_settings("redis://")
    assert (settings.kind, settings.host, settings.port, settings.db) == (
        "tcp",
        "127.0.0.1",
        6379,
        0,
    )
    assert settings.fanout_prefix == "/0."
    assert settings.fanout_patterns is True
    assert settings.global_keyprefix == ""


def test_full_url_with_credentials_and_db() -> None:
    settings = parse_settings("redis://al%40ice:p%2Fss@redis.example:6380/5")
    assert settings.username == "al@ice"
    assert settings.password == "p/ss"
    assert (settings.host, settings.port, settings.db) == ("redis.example", 6380, 5)
    assert settings.fanout_prefix == "/5."
    assert "p/ss" not in repr(settings)


def test_password_only_url() -> None:
    settings = parse_settings("redis://:secret@localhost/2")
    assert settings.username is None
    assert settings.password == "secret"


def test_ipv6_host() -> None:
    settings = parse_settings("redis://[::1]:7000/1")
    assert (settings.host, settings.port) == ("::1", 7000)


@pytest.mark.parametrize(
    ("url", "db"), [("redis://h", 0), ("redis://h/", 0), ("redis://h/0", 0), ("redis://h/15", 15)]
)
def test_db_from_path(url: str, db: int) -> None:
    assert parse_settings(url).db == db


def test_query_options_are_parsed() -> None:
    settings = parse_settings(
        "redis://h/3?socket_timeout=2.5&socket_connect_timeout=1&health_check_interval=10"
        "&client_name=evcore-x&global_keyprefix=app:&socket_keepalive=false&max_drain=50"
    )
    assert settings.socket_timeout == 2.5
    assert settings.socket_connect_timeout == 1.0
    assert settings.health_check_interval == 10.0
    assert settings.client_name == "evcore-x"
    assert settings.global_keyprefix == "app:"
    assert settings.socket_keepalive is False
    assert settings.max_drain == 50


def test_keyword_options_override_the_query_string() -> None:
    settings = parse_settings("redis://h/3?client_name=a", db=7, client_name="b")
    assert settings.db == 7
    assert settings.client_name == "b"
    assert settings.fanout_prefix == "/7."


def test_db_in_path_and_query_is_refused() -> None:
    with pytest.raises(InvalidURL, match="db is given twice"):
        parse_settings("redis://h/3?db=4")


def test_socket_url() -> None:
    settings = parse_settings("redis+socket:///run/redis/redis.sock?virtual_host=4")
    assert (settings.kind, settings.path, settings.db) == ("unix", "/run/redis/redis.sock", 4)
    assert settings.address == "/run/redis/redis.sock/4"
    assert parse_settings("redis+socket:///tmp/r.sock?db=2").db == 2


def test_socket_url_with_password() -> None:
    settings = parse_settings("redis+socket://:pw@/tmp/r.sock")
    assert settings.password == "pw"
    assert settings.path == "/tmp/r.sock"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "not a Redis URL"),
        ("redis://h/x", "not a database number"),
        ("redis://h/-1", "not a database number"),
        ("redis://h:99999", "cannot parse"),
        ("redis+socket://host/tmp/r.sock", "absolute socket path"),
        ("redis+socket://", "absolute socket path"),
        ("redis://h?socket_timeout=soon", "not a number of seconds"),
        ("redis://h?socket_timeout=-1", "must not be negative"),
        ("redis://h?fanout_patterns=maybe", "not a boolean"),
        ("redis://h?fanout_prefix=x", "must start with '/'"),
        ("redis://h?visibility_timeout=3", "unknown Redis option"),
        ("redis://h?db=1&virtual_host=2", "not both"),
        ("redis://h?max_drain=0", "whole number from 1"),
        ("redis://h?ssl_cert_reqs=required", "need a rediss:// URL"),
        ("rediss://h?ssl_cert_reqs=sometimes", "must be one of"),
        ("redis+socket:///tmp/r.sock?ssl=true", "Unix socket"),
    ],
)
def test_bad_urls_raise_invalid_url(url: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        parse_settings(url)


def test_bad_port_option() -> None:
    with pytest.raises(InvalidURL, match="not a TCP port"):
        parse_settings("redis://h", port="http")


# -- TLS --------------------------------------------------------------------------------


def test_rediss_requires_certificates_by_default() -> None:
    settings = parse_settings("rediss://h:6380/1")
    assert settings.kind == "tls"
    assert settings.ssl == {"ssl_cert_reqs": "required"}


@pytest.mark.parametrize("value", ["CERT_NONE", "none", "cert_none"])
def test_rediss_cert_reqs_none_disables_hostname_check(value: str) -> None:
    settings = parse_settings(f"rediss://h?ssl_cert_reqs={value}")
    assert settings.ssl == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


def test_rediss_certificate_files() -> None:
    settings = parse_settings(
        "rediss://h?ssl_cert_reqs=CERT_OPTIONAL&ssl_ca_certs=/ca.pem"
        "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert settings.ssl == {
        "ssl_cert_reqs": "optional",
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
    }


def test_ssl_mapping_turns_tls_on_for_redis_scheme() -> None:
    import ssl

    settings = parse_settings("redis://h", ssl={"ssl_cert_reqs": ssl.CERT_NONE})
    assert settings.kind == "tls"
    assert settings.ssl["ssl_cert_reqs"] == "none"


def test_tls_connection_class_gets_the_options() -> None:
    connection = connection_for(parse_settings("rediss://h?ssl_cert_reqs=none"))
    assert type(connection).__name__ == "SSLConnection"
    assert connection.check_hostname is False


# -- channel names and patterns -----------------------------------------------------------


def test_publish_channels_follow_kombu() -> None:
    settings = parse_settings("redis://h/3")
    assert settings.publish_channel("celeryev", "task.succeeded") == "/3.celeryev/task.succeeded"
    assert settings.publish_channel("celeryev", "") == "/3.celeryev"


def test_older_layouts() -> None:
    no_patterns = parse_settings("redis://h/3?fanout_patterns=false")
    assert no_patterns.publish_channel("celeryev", "task.multi") == "/3.celeryev"
    assert no_patterns.subscribe_patterns("celeryev", "#") == ["/3.celeryev"]
    no_prefix = parse_settings("redis://h/3", fanout_prefix=False)
    assert no_prefix.publish_channel("celeryev", "task.multi") == "celeryev/task.multi"
    custom = parse_settings("redis://h/3?fanout_prefix=/legacy{db}.")
    assert custom.publish_channel("celeryev", "a.b") == "/legacy3.celeryev/a.b"


def test_global_keyprefix_prefixes_channels_and_patterns() -> None:
    settings = parse_settings("redis://h/1", global_keyprefix="tenant:")
    assert settings.publish_channel("celeryev", "task.sent") == "tenant:/1.celeryev/task.sent"
    assert settings.subscribe_patterns("celeryev", "#")[0] == "tenant:/1.celeryev/*"


def test_patterns_are_kombus() -> None:
    settings = parse_settings("redis://h/3")
    assert settings.subscribe_patterns("celeryev", "#") == ["/3.celeryev/*"]
    assert settings.subscribe_patterns("celeryev", "worker.#") == ["/3.celeryev/worker.*"]
    assert settings.subscribe_patterns("celeryev", "task.multi") == ["/3.celeryev/task.multi"]


def test_glob_characters_in_names_are_escaped() -> None:
    settings = parse_settings("redis://h/0")
    assert settings.subscribe_patterns("ev[1]", "a?") == [r"/0.ev\[1\]/a\?"]
    assert glob_escape("plain.name") == "plain.name"


@pytest.mark.parametrize(
    ("binding", "glob"),
    [
        ("#", "*"),
        ("*", "*"),
        ("worker.#", "worker.*"),
        ("#.sent", "*.sent"),
        ("a.#.b", "a.*.b"),
        ("x?y.#", "x\\?y.*"),
    ],
)
def test_binding_glob(binding: str, glob: str) -> None:
    assert binding_glob(binding) == glob


words = st.sampled_from(["task", "worker", "multi", "sent", "a", "", "x?y", "[z]", "*", "#"])
keys = st.lists(words, min_size=1, max_size=5).map(".".join)
routing_words = st.sampled_from(["task", "worker", "multi", "sent", "a", "", "x?y", "[z]"])


@given(binding=keys, data=st.data())
def test_pattern_never_misses_what_kombu_routes(binding: str, data: st.DataObject) -> None:
    """Every routing key the binding matches with each ``#`` standing for at least one
    word reaches the subscription (the core then filters by the exact binding)."""
    words: list[str] = []
    for word in binding.split("."):
        if word == "*":
            words.append(data.draw(routing_words))
        elif word == "#":
            words.extend(data.draw(st.lists(routing_words, min_size=1, max_size=3)))
        else:
            words.append(word)
    routing_key = ".".join(words)
    assume(routing_key != "")
    assert binding_matches(binding, routing_key)
    settings = parse_settings("redis://h/2")
    channel = settings.publish_channel("celeryev", routing_key)
    patterns = settings.subscribe_patterns("celeryev", binding)
    assert any(redis_glob_regex(p).fullmatch(channel) for p in patterns)


def test_like_kombu_a_hash_standing_for_no_word_is_missed() -> None:
    settings = parse_settings("redis://h/2")
    (pattern,) = settings.subscribe_patterns("celeryev", "worker.#")
    assert binding_matches("worker.#", "worker")
    assert not redis_glob_regex(pattern).fullmatch(settings.publish_channel("celeryev", "worker"))


# -- transport object ------------------------------------------------------------------


def test_registered_schemes_build_the_transport() -> None:
    for url in ("redis://127.0.0.1/1", "rediss://127.0.0.1/1", "redis+socket:///tmp/x.sock"):
        transport = connect(url)
        assert isinstance(transport, RedisTransport)
        assert transport.driver_type == "redis"
        assert transport.capabilities.exact_routing is False
        assert transport.capabilities.persistent is False
        assert transport.capabilities.exchange_types == frozenset({FANOUT})
        transport.close()


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[redis\]'"):
        RedisTransport.from_url("redis://")


def test_topic_exchange_is_unsupported() -> None:
    transport = RedisTransport.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(UnsupportedOperation, match=r"'ev'.*'topic'"):
        transport.publish(Exchange("ev", TOPIC), [OutgoingMessage("a", b"{}")])
    with pytest.raises(UnsupportedOperation):
        transport.subscribe(Exchange("ev", TOPIC), "#", QueueOptions("q"))


def test_refused_connection_is_connection_lost_and_transport_stays_usable() -> None:
    transport = RedisTransport.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1
    )
    exchange = Exchange("ev", FANOUT)
    for _ in range(2):
        # A broker never reached is named as such, not as a connection lost while working.
        with pytest.raises(ConnectionLost, match=r"^could not connect to Redis at 127\.0\.0\.1:"):
            transport.publish(exchange, [OutgoingMessage("a", b"{}")])
        with pytest.raises(ConnectionLost, match=r"^could not connect to Redis at 127\.0\.0\.1:"):
            transport.subscribe(exchange, "#", QueueOptions("q"))
    transport.close()
    with pytest.raises(ConnectionLost, match="closed"):
        transport.publish(exchange, [OutgoingMessage("a", b"{}")])


def test_empty_publish_is_a_no_op() -> None:
    transport = RedisTransport.from_url(f"redis://127.0.0.1:{free_port()}/0")
    transport.publish(Exchange("ev", FANOUT), [])
    transport.close()


def test_error_translation() -> None:
    import redis

    settings = parse_settings("redis://h:1/2")
    assert isinstance(translate(redis.ConnectionError("reset"), "x", settings), ConnectionLost)
    assert isinstance(translate(redis.TimeoutError("slow"), "x", settings), ConnectionLost)
    assert isinstance(translate(OSError("down"), "x", settings), ConnectionLost)
    refused = translate(redis.AuthenticationError("WRONGPASS"), "x", settings)
    assert isinstance(refused, ChannelError)
    assert "h:1/2" in str(refused)
    assert isinstance(translate(redis.ResponseError("NOPERM"), "x", settings), ChannelError)


def test_certificate_verification_failure_is_a_channel_error() -> None:
    import ssl

    import redis

    settings = parse_settings("rediss://h:1/2")
    plain = redis.ConnectionError("Error 1 connecting: certificate verify failed")
    assert isinstance(translate(plain, "x", settings), ConnectionLost)
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as inner:
            raise redis.ConnectionError(f"Error 1 connecting: {inner}")  # noqa: B904
    except redis.ConnectionError as exc:
        refused = translate(exc, "x", settings)
    assert isinstance(refused, ChannelError)
    assert "ssl_ca_certs" in str(refused)
