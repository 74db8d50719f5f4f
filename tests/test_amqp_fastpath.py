"""evcore_amqp.fastpath: the fast path runs only when asked for, on a tested pika."""

from __future__ import annotations

import logging

import pytest

pika = pytest.importorskip("pika")

from evcore_amqp import AMQPTransport, fastpath  # noqa: E402


def test_off_unless_asked_for() -> None:
    assert not fastpath.fast_path_enabled(False)
    assert not AMQPTransport.from_url("amqp://127.0.0.1//").fast_path


def test_on_when_asked_for_on_a_tested_pika(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pika, "__version__", sorted(fastpath.TESTED_PIKA_VERSIONS)[0])
    assert AMQPTransport.from_url("amqp://127.0.0.1//?fast_path=true").fast_path


def test_an_untested_pika_gets_the_public_path_and_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pika, "__version__", "1.99.0")
    monkeypatch.setattr(fastpath, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="evcore_amqp.fastpath"):
        assert not AMQPTransport.from_url("amqp://127.0.0.1//", fast_path=True).fast_path
        assert not fastpath.fast_path_enabled(True)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "pika 1.99.0 is not one of the versions it was tested against" in warnings[0]

