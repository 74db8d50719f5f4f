"""Unit tests of the AMQP transport that need no broker: URLs, options, queue arguments,
error mapping, confirm bookkeeping and message properties."""

from __future__ import annotations

import ssl
import sys

import pytest
from pika import exceptions as pe

from evcore import codec, connect
from evcore.errors import (
    ChannelError,
    ConfigurationError,
    ConnectionLost,
    InvalidURL,
    MissingDependency,
    UnsupportedOperation,
)
from evcore.transport import Exchange, OutgoingMessage, QueueOptions
from evcore_amqp import AMQPTransport, parse_url, queue_arguments
from evcore_amqp.connection import connection_parameters, load_pika
from evcore_amqp.failures import inequivalent_arg, translate
from evcore_amqp.publisher import Publisher, _Confirms

# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://guest:guest@127.0.0.1:5672", "/"),
        ("amqp://h/%2F", "/"),
        ("amqp://h/events", "events"),
        ("amqp://h/%2Fevents", "/events"),
        ("amqp://h//events", "/events"),
    ],
)
def test_vhost_follows_kombu(url: str, vhost: str) -> None:
    assert parse_url(url).vhost == vhost


def test_credentials_host_and_port() -> None:
    options = parse_url("pyamqp://us%40er:p%3Ass@broker.example:5673/v")
    assert (options.username, options.password) == ("us@er", "p:ss")
    assert [(e.host, e.port) for e in options.endpoints] == [("broker.example", 5673)]
    assert options.tls is None


def test_defaults_as_kombu() -> None:
    options = parse_url("amqp://")
    assert (options.username, options.password, options.vhost) == ("guest", "guest", "/")
    assert [(e.host, e.port) for e in options.endpoints] == [("localhost", 5672)]
    assert options.confirm_publish is False
    assert options.connection_attempts == 1
    # One bound with the receivers' (evcore.codec), so nothing is sent that they would refuse.
    assert options.max_message_bytes == codec.DEFAULT_MAX_MESSAGE_BYTES == 4 * 1024 * 1024


def test_amqps_uses_tls_and_port_5671() -> None:
    options = parse_url("amqps://u:p@secure.example//")
    assert options.endpoints[0].port == 5671
    assert options.tls is not None
    assert options.tls.cert_reqs == ssl.CERT_REQUIRED


def test_amqps_refuses_ssl_false() -> None:
    with pytest.raises(InvalidURL, match="always uses TLS"):
        parse_url("amqps://h//?ssl=false")


def test_failover_list() -> None:
    options = parse_url("amqp://u:p@h1:5672//;amqp://u:p@h2:5673//")
    assert [(e.host, e.port) for e in options.endpoints] == [("h1", 5672), ("h2", 5673)]


def test_query_options_are_typed() -> None:
    options = parse_url(
        "amqp://h//?heartbeat=15&connection_attempts=3&socket_timeout=2.5"
        "&blocked_connection_timeout=none&confirm_publish=yes&confirm_timeout=4"
        "&max_message_bytes=1000&prefetch_count=50&connection_name=monitor-1"
    )
    assert options.heartbeat == 15
    assert options.connection_attempts == 3
    assert options.socket_timeout == 2.5
    assert options.blocked_connection_timeout is None
    assert options.confirm_publish is True
    assert options.confirm_timeout == 4.0
    assert options.max_message_bytes == 1000
    assert options.prefetch_count == 50
    assert options.connection_name == "monitor-1"


def test_keyword_options_win_over_query() -> None:
    options = parse_url("amqp://h//?heartbeat=15&confirm_publish=1", {"heartbeat": 30,
                                                                       "confirm_publish": False})
    assert options.heartbeat == 30
    assert options.confirm_publish is False


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h", "not an AMQP URL"),
        ("h:5672", "not an AMQP URL"),
        ("amqp://h:notaport//", "cannot parse"),
        ("amqp://h//?hearbeat=5", "unknown AMQP option"),
        ("amqp://h//?heartbeat=soon", "must be a number"),
        ("amqp://h//?connection_attempts=0", "must be >= 1"),
        ("amqp://h//?confirm_publish=maybe", "must be a boolean"),
        ("amqp://h//?ssl_cert_reqs=sometimes", "CERT_NONE"),
        ("", "not an AMQP URL"),
    ],
)
def test_bad_urls_raise_invalid_url(url: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        parse_url(url)


def test_unknown_keyword_option() -> None:
    with pytest.raises(InvalidURL, match="unknown AMQP option"):
        AMQPTransport.from_url("amqp://h//", transport_options={})


def test_ssl_dict_as_kombu() -> None:
    options = parse_url(
        "amqp://h//",
        {"ssl": {"cert_reqs": ssl.CERT_NONE, "server_hostname": "rabbit.internal"}},
    )
    assert options.tls is not None
    assert options.tls.cert_reqs == ssl.CERT_NONE
    context = options.tls.build_context()
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_ssl_query_options_enable_tls() -> None:
    options = parse_url("amqps://h//?ssl_cert_reqs=CERT_OPTIONAL&ssl_server_hostname=x.test")
    assert options.tls is not None
    assert options.tls.cert_reqs == ssl.CERT_OPTIONAL
    parameters = connection_parameters(
        options, options.endpoints[0], "n", heartbeat=None, blocked_connection_timeout=None
    )
    assert parameters.ssl_options is not None
    assert parameters.ssl_options.server_hostname == "x.test"


def test_ssl_context_is_used_as_is() -> None:
    context = ssl.create_default_context()
    options = parse_url("amqp://h//", {"ssl": context})
    assert options.tls is not None
    assert options.tls.build_context() is context
    with pytest.raises(InvalidURL, match="not both"):
        parse_url("amqp://h//?ssl_ca_certs=/x.pem", {"ssl": context})


def test_ssl_dict_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidURL, match="unknown keys"):
        parse_url("amqp://h//", {"ssl": {"verify": False}})


def test_connection_parameters() -> None:
    options = parse_url("amqp://u:p@h:1234/v?heartbeat=7&socket_timeout=3", {})
    parameters = connection_parameters(
        options, options.endpoints[0], "evcore-test", heartbeat=0, blocked_connection_timeout=9
    )
    assert (parameters.host, parameters.port, parameters.virtual_host) == ("h", 1234, "v")
    assert parameters.credentials.username == "u"
    assert parameters.heartbeat == 0
    assert parameters.socket_timeout == 3
    assert parameters.blocked_connection_timeout == 9
    assert parameters.client_properties["connection_name"] == "evcore-test"
    assert parameters.ssl_options is None


# -- the transport object -------------------------------------------------------------------


def test_registry_builds_it_without_connecting() -> None:
    for url in ("amqp://127.0.0.1:1//", "pyamqp://127.0.0.1:1//", "amqps://127.0.0.1:1//"):
        transport = connect(url)
        assert isinstance(transport, AMQPTransport)
        assert transport.driver_type == "amqp"
        assert transport.capabilities.exact_routing
        assert {"message_ttl", "expires", "max_length"} <= transport.capabilities.queue_options
        transport.close()


def test_unreachable_broker_is_connection_lost() -> None:
    transport = AMQPTransport.from_url("amqp://127.0.0.1:1//?socket_timeout=1")
    with pytest.raises(ConnectionLost, match=r"127\.0\.0\.1:1"):
        transport.publish(Exchange("x"), [OutgoingMessage("k", b"{}")])
    with pytest.raises(ConnectionLost):
        transport.subscribe(Exchange("x"), "#", QueueOptions("q"))
    transport.close()


def test_closed_transport_refuses() -> None:
    transport = AMQPTransport.from_url("amqp://127.0.0.1:1//")
    transport.close()
    transport.close()
    with pytest.raises(ConnectionLost, match="closed"):
        transport.publish(Exchange("x"), [OutgoingMessage("k", b"{}")])
    with pytest.raises(ConnectionLost, match="closed"):
        transport.subscribe(Exchange("x"), "#", QueueOptions("q"))


def test_unsupported_exchange_type() -> None:
    transport = AMQPTransport.from_url("amqp://127.0.0.1:1//")
    with pytest.raises(UnsupportedOperation, match="headers"):
        transport.publish(Exchange("x", "headers"), [OutgoingMessage("k", b"{}")])
    transport.close()


def test_missing_pika_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(MissingDependency, match=r"pip install 'evcore\[amqp\]'"):
        load_pika()
    with pytest.raises(MissingDependency):
        AMQPTransport.from_url("amqp://h//")


def test_missing_pamqp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pamqp.commands", None)
    with pytest.raises(MissingDependency, match=r"needs pamqp: pip install 'evcore\[amqp\]'"):
        AMQPTransport.from_url("amqp://h//")


# -- queue arguments ------------------------------------------------------------------------


def test_queue_arguments_as_celery() -> None:
    assert queue_arguments(QueueOptions("celeryev.x")) == {
        "x-message-ttl": 5000,
        "x-expires": 60000,
    }
    gossip = QueueOptions("celeryev.g", message_ttl=2.0, expires=None)
    assert queue_arguments(gossip) == {"x-message-ttl": 2000}
    assert isinstance(queue_arguments(gossip)["x-message-ttl"], int)


def test_queue_arguments_max_length_drops_head() -> None:
    arguments = queue_arguments(QueueOptions("q", message_ttl=None, expires=None, max_length=10))
    assert arguments == {"x-max-length": 10, "x-overflow": "drop-head"}


def test_queue_arguments_validated() -> None:
    with pytest.raises(ConfigurationError, match="expires"):
        queue_arguments(QueueOptions("q", expires=0))
    with pytest.raises(ConfigurationError, match="message_ttl"):
        queue_arguments(QueueOptions("q", message_ttl=-1))
    with pytest.raises(ConfigurationError, match="max_length"):
        queue_arguments(QueueOptions("q", max_length=-1))
    assert queue_arguments(QueueOptions("q", message_ttl=0))["x-message-ttl"] == 0


# -- error mapping --------------------------------------------------------------------------

_TYPE_MISMATCH = (
    "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'evtest.x' in vhost '/': "
    "received 'topic' but current is 'fanout'"
)


def test_exchange_type_mismatch_names_both_types() -> None:
    error = translate(pe.ChannelClosedByBroker(406, _TYPE_MISMATCH))
    assert isinstance(error, ChannelError)
    assert "'evtest.x'" in str(error)
    assert "'fanout'" in str(error) and "'topic'" in str(error)
    assert inequivalent_arg(_TYPE_MISMATCH) == {
        "arg": "type",
        "kind": "exchange",
        "name": "evtest.x",
        "vhost": "/",
        "received": "topic",
        "current": "fanout",
    }


def test_durable_mismatch_is_channel_error() -> None:
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'celeryev' in vhost "
        "'/': received 'false' but current is 'true'"
    )
    error = translate(pe.ChannelClosedByBroker(406, text))
    assert isinstance(error, ChannelError)
    assert "durable=true" in str(error) and "durable=false" in str(error)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (pe.ChannelClosedByBroker(404, "NOT_FOUND - no exchange 'x'"), ChannelError),
        (pe.ChannelClosedByBroker(405, "RESOURCE_LOCKED - queue in use"), ChannelError),
        (pe.ConnectionClosedByBroker(320, "CONNECTION_FORCED - closed"), ConnectionLost),
        (pe.ConnectionClosedByBroker(530, "NOT_ALLOWED - vhost x not found"), ChannelError),
        (pe.ProbableAuthenticationError("bad login"), ChannelError),
        (pe.ProbableAccessDeniedError("no vhost"), ChannelError),
        (pe.StreamLostError("reset"), ConnectionLost),
        (pe.AMQPHeartbeatTimeout("missed"), ConnectionLost),
        (pe.ConnectionWrongStateError("closed"), ConnectionLost),
        (pe.ChannelWrongStateError("closed"), ConnectionLost),
        (ConnectionRefusedError(111, "refused"), ConnectionLost),
    ],
)
def test_client_failures_are_mapped(exc: BaseException, kind: type[Exception]) -> None:
    assert type(translate(exc, "testing")) is kind


def test_bugs_are_not_mapped() -> None:
    assert translate(TypeError("bug")) is None
    lost = ConnectionLost("already mapped")
    assert translate(lost) is lost


# -- publisher internals --------------------------------------------------------------------


def test_confirms_settle_single_and_multiple() -> None:
    confirms = _Confirms()
    confirms.expect(5)
    confirms.on_confirm(2, False, False)
    assert list(confirms.pending) == [1, 3, 4, 5]
    confirms.on_confirm(3, True, False)
    assert list(confirms.pending) == [4, 5]
    confirms.on_confirm(5, True, True)
    assert not confirms.pending
    assert confirms.nacked == 2
    confirms.expect(2)
    assert list(confirms.pending) == [6, 7]
    confirms.on_confirm(0, True, False)
    assert not confirms.pending


def test_properties_as_celery_sets_them_and_cached() -> None:
    publisher = Publisher(parse_url("amqp://127.0.0.1:1//"))
    message = OutgoingMessage("task.multi", b"[]", {"hostname": "w1@host"})
    properties = publisher._properties_of(message)
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "utf-8"
    assert properties.delivery_mode == 1
    assert properties.priority == 0
    assert properties.headers == {"hostname": "w1@host"}
    same = OutgoingMessage("task.sent", b"{}", {"hostname": "w1@host"})
    assert publisher._properties_of(same) is properties
    other = OutgoingMessage("task.sent", b"{}", {"hostname": "w2@host"})
    assert publisher._properties_of(other) is not properties
    nested = OutgoingMessage("x", b"{}", {"meta": {"a": 1}})
    assert publisher._properties_of(nested).headers == {"meta": {"a": 1}}


# -- documentation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["evcore_amqp.options", "evcore_amqp.failures", "evcore_amqp.transport"]
)
def test_docstring_examples(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0


def test_amqp_doc_examples_run() -> None:
    import re
    from pathlib import Path

    document = Path(__file__).resolve().parents[1] / "docs" / "transports" / "amqp.md"
    blocks = re.findall(r"^```python\n(.*?)^```", document.read_text("utf-8"), re.S | re.M)
    assert blocks
    for block in blocks:
        exec(compile(block, str(document), "exec"), {"__name__": "__docs__"})
