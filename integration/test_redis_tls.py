"""rediss:// against a TLS redis-server of the test's own, with a throw-away certificate."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _net import free_port, wait_for
from _redis_support import PrivateRedis, private_redis

from evcore import Dispatcher, Receiver
from evcore.errors import ChannelError
from evcore.transport import FANOUT, Exchange, IncomingMessage, OutgoingMessage, QueueOptions
from evcore_redis import RedisTransport

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate", pytrace=False)
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[PrivateRedis, int]]:
    cert, key = certificate
    port = free_port()
    args = (
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
    )
    with private_redis(*args) as server:
        yield server, port


def round_trip(transport: RedisTransport, exchange: Exchange) -> list[IncomingMessage]:
    subscription = transport.subscribe(exchange, "#", QueueOptions("q"))
    transport.publish(exchange, [OutgoingMessage("worker.online", b"{}")])
    got: list[IncomingMessage] = []
    wait_for(lambda: bool(got.extend(subscription.receive(0.2))) or bool(got), 5)
    return got


def test_verified_tls_round_trip(
    tls_server: tuple[PrivateRedis, int], certificate: tuple[Path, Path], exchange_name: str
) -> None:
    _, port = tls_server
    url = f"rediss://127.0.0.1:{port}/9?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={certificate[0]}"
    transport = RedisTransport.from_url(url)
    assert transport.settings.kind == "tls"
    got = round_trip(transport, Exchange(exchange_name, FANOUT))
    transport.close()
    assert [m.routing_key for m in got] == ["worker.online"]


def test_dispatcher_and_receiver_over_tls(
    tls_server: tuple[PrivateRedis, int], certificate: tuple[Path, Path], exchange_name: str
) -> None:
    _, port = tls_server
    url = f"rediss://localhost:{port}/9?ssl_ca_certs={certificate[0]}"
    receiver = Receiver(url, exchange=exchange_name)
    with Dispatcher(url, hostname="w1@tls", exchange=exchange_name) as dispatcher:
        dispatcher.send("worker-online")
    seen = [e["type"] for e in receiver.itercapture(limit=1, timeout=10)]
    receiver.close()
    assert seen == ["worker-online"]


def test_unverifiable_certificate_is_a_channel_error(
    tls_server: tuple[PrivateRedis, int], exchange_name: str
) -> None:
    _, port = tls_server
    transport = RedisTransport.from_url(f"rediss://127.0.0.1:{port}/9")
    exchange = Exchange(exchange_name, FANOUT)
    with pytest.raises(ChannelError, match="ssl_ca_certs"):
        transport.publish(exchange, [OutgoingMessage("a", b"{}")])
    with pytest.raises(ChannelError, match="failed verification"):
        transport.subscribe(exchange, "#", QueueOptions("q"))
    transport.close()


def test_cert_reqs_none_skips_verification(
    tls_server: tuple[PrivateRedis, int], exchange_name: str
) -> None:
    _, port = tls_server
    transport = RedisTransport.from_url(f"rediss://localhost:{port}/9?ssl_cert_reqs=none")
    got = round_trip(transport, Exchange(exchange_name, FANOUT))
    transport.close()
    assert [m.routing_key for m in got] == ["worker.online"]
