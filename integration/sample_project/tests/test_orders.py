"""Asserting on the events code under test publishes: point it at the test's bus."""

import pytest
from shop.orders import OrderService


@pytest.fixture
def service(evcore_bus_url):
    service = OrderService(evcore_bus_url)
    yield service
    service.close()


def test_an_order_is_accepted(service, evcore_recorder):
    assert service.place("o-1", ["book", "pen"]) == 2
    evcore_recorder.assert_sent("order-accepted", order="o-1", items=2)
    evcore_recorder.assert_not_sent("order-rejected")
    assert evcore_recorder.types() == ["worker-online", "order-received", "order-accepted"]


def test_an_empty_order_is_rejected(service, evcore_recorder):
    with pytest.raises(ValueError):
        service.place("o-2", [])
    event = evcore_recorder.assert_sent("order-rejected", order="o-2")
    assert event["reason"] == "empty" and event["hostname"] == "shop@web"


def test_the_service_shows_as_a_worker(service, evcore_state):
    assert [worker.hostname for worker in evcore_state.alive_workers()] == ["shop@web"]
