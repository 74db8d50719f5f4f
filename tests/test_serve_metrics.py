"""``/metrics``: celery-exporter's names and labels, evcore's own, and bounded cardinality."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from _serve_support import event, lifecycle, monitor_app
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from starlette.testclient import TestClient

from evcore.serve import metrics as metrics_module
from evcore.serve.metrics import (
    MAX_AGE,
    OVERFLOW,
    Family,
    RenderedMetrics,
    exposition,
    normalise_hostname,
)

BASE = 1_750_000_000.0


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by name, then by sorted label pairs."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_task_counters_and_histograms_with_exporter_names() -> None:
    monitor, app = monitor_app()
    monitor.apply(lifecycle("a", "proj.add", "w1@example", at=BASE, runtime=0.3))
    monitor.apply(lifecycle("b", "proj.add", "w1@example", at=BASE + 5, outcome="failed"))
    samples = scrape(TestClient(app))
    labels = (("hostname", "w1@example"), ("name", "proj.add"), ("queue_name", "celery"))
    assert samples["celery_task_received_total"][labels] == 2
    assert samples["celery_task_started_total"][labels] == 2
    assert samples["celery_task_succeeded_total"][labels] == 1
    failed = (
        ("exception", "ValueError"),
        ("hostname", "w1@example"),
        ("name", "proj.add"),
        ("queue_name", "celery"),
    )
    assert samples["celery_task_failed_total"][failed] == 1
    # task-sent is labelled with the client, its pid folded away
    sent = (("hostname", "gen@web-1"), ("name", "proj.add"), ("queue_name", "celery"))
    assert samples["celery_task_sent_total"][sent] == 2
    assert samples["celery_task_runtime_count"][labels] == 1
    assert samples["celery_task_runtime_sum"][labels] == 0.3
    buckets = samples["celery_task_runtime_bucket"]
    assert buckets[tuple(sorted((("le", "0.25"), *labels)))] == 0
    assert buckets[tuple(sorted((("le", "0.5"), *labels)))] == 1
    # queue wait: received (at+1) -> started (at+2); delivery: sent (at) -> received (at+1)
    by_name = (("name", "proj.add"), ("queue_name", "celery"))  # not per worker
    assert samples["evcore_task_queue_wait_seconds_sum"][by_name] == 2.0
    assert samples["evcore_task_queue_wait_seconds_count"][by_name] == 2
    assert samples["evcore_task_delivery_latency_seconds_sum"][by_name] == 2.0


def test_worker_gauges_and_state_counters() -> None:
    monitor, app = monitor_app()
    now = time.time()
    monitor.apply(
        [
            event("worker-heartbeat", "w1@example", freq=2.0, active=4, at=now - 1.5, received=now),
            event(
                "worker-heartbeat", "w2@example", freq=2.0, active=1, at=now - 60, received=now - 60
            ),
            {"type": "task-received", "hostname": "w1@example"},  # refused: no uuid
        ]
    )
    monitor.state.record_loss("w1@example", 3)
    samples = scrape(TestClient(app))
    assert samples["celery_worker_up"][(("hostname", "w1@example"),)] == 1
    assert samples["celery_worker_up"][(("hostname", "w2@example"),)] == 0
    assert samples["celery_worker_tasks_active"][(("hostname", "w1@example"),)] == 4
    drift = samples["evcore_worker_clock_drift_seconds"][(("hostname", "w1@example"),)]
    assert abs(drift - 1.5) < 0.01
    lateness = samples["evcore_worker_heartbeat_lateness_seconds"]
    assert lateness[(("hostname", "w2@example"),)] >= 57
    assert samples["evcore_workers"][(("status", "offline"),)] == 1
    assert samples["evcore_workers"][(("status", "online"),)] == 1
    assert (
        samples["evcore_events_rejected_total"][(("reason", "missing-uuid"), ("stage", "state"))]
        == 1
    )
    assert samples["evcore_events_lost_total"][(("sender", "w1@example"),)] == 3
    assert samples["evcore_state_evictions_total"][(("kind", "tasks"),)] == 0


def test_label_sets_are_capped_with_an_overflow_series() -> None:
    monitor, app = monitor_app(max_label_sets=8)
    for number in range(20):
        monitor.apply(lifecycle(f"t{number}", f"proj.task{number}", at=BASE + number))
    samples = scrape(TestClient(app))
    # The task counters share one cap: each task uses two label sets (its client for
    # task-sent, its worker for the others), so tasks 0 to 3 fit.
    received = samples["celery_task_received_total"]
    assert len(received) == 5  # four label sets and the overflow series
    overflow = (("hostname", OVERFLOW), ("name", OVERFLOW), ("queue_name", OVERFLOW))
    assert received[overflow] == 16
    assert sum(received.values()) == 20  # nothing is dropped, only folded
    sent = samples["celery_task_sent_total"]
    assert len(sent) == 5 and sent[overflow] == 16
    assert samples["evcore_metrics_label_overflow_total"][(("metric", "task"),)] == 16 * 4
    # Histograms have a cap of their own, a quarter of the label sets.
    runtime = samples["celery_task_runtime_count"]
    assert len(runtime) == 3 and runtime[overflow] == 18


def test_client_names_are_normalised_so_clients_do_not_add_series() -> None:
    monitor, app = monitor_app()
    for pid in range(50):
        monitor.apply([event("task-sent", f"gen{pid}@web-1", uuid=f"c{pid}", name="proj.add")])
    sent = scrape(TestClient(app))["celery_task_sent_total"]
    assert list(sent.values()) == [50]
    assert normalise_hostname("gen@web-1") == "gen@web-1"
    assert normalise_hostname("generic@web-1") == "generic@web-1"
    assert normalise_hostname(None) == "unknown"
    assert len(normalise_hostname("w" * 5000)) == 200


def test_nothing_is_registered_globally() -> None:
    before = set(REGISTRY._names_to_collectors)
    monitor, app = monitor_app()
    monitor.apply(lifecycle("a", at=BASE))
    scrape(TestClient(app))
    assert set(REGISTRY._names_to_collectors) == before


def test_exposition_is_what_prometheus_client_writes_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast writer against ``generate_latest`` over the same collector, with label values
    that need escaping and every kind of family populated."""
    monitor, _ = monitor_app(max_label_sets=8)
    hostile = ['w"1@ex\\ample', "w2@ex\nample", "wörker@日本", ""]
    for number, host in enumerate(hostile):
        monitor.apply(lifecycle(f"h{number}", f'proj."add"\\{number}', host, at=BASE + number))
        monitor.apply(lifecycle(f"f{number}", "proj.add", host, at=BASE, outcome="failed"))
    for number in range(20):  # past the caps: overflow series
        monitor.apply(lifecycle(f"t{number}", f"proj.task{number}", at=BASE + number))
    monitor.apply([event("task-custom", uuid="h0", name="proj.add")])
    monitor.apply([event("worker-heartbeat", host, freq=2.0, active=3) for host in hostile])
    monitor.state.record_loss('gen1@"web"', 2**60)
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(time=lambda: BASE + 100))
    text = exposition(monitor.metrics)
    assert text == generate_latest(monitor.metrics.registry)
    assert b'hostname="w\\"1@ex\\\\ample"' in text and b'hostname="w2@ex\\nample"' in text


@pytest.mark.parametrize(
    "value",
    [
        0,
        7,
        -3,
        999_999,
        1_000_000,
        10**15,
        -(10**16),
        2**70,
        0.0,
        -0.0,
        0.25,
        1e-9,
        1234567.5,
        1e22,
        -1e22,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
    ],
)
def test_values_are_written_as_go_writes_floats(value: float) -> None:
    family = Family("gauge", "evcore_test", "A test.\\ with \n two lines", ("b", "a"))
    family.add(("x", "y"), value)
    out: list[str] = []
    family.write(out)

    class One(Collector):
        def collect(self) -> Iterator[Metric]:
            yield family.metric()

    assert "".join(out).encode() == generate_latest(One())


def received_total(body: bytes) -> float:
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "celery_task_received":
            return sum(sample.value for sample in family.samples)
    return 0.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_scrape_gets_a_rendering_at_most_max_age_old() -> None:
    monitor, _ = monitor_app()
    clock = FakeClock()
    rendered = RenderedMetrics(monitor.metrics, max_age=1.0, clock=clock)

    async def scrapes() -> list[bytes]:
        monitor.apply(lifecycle("a", at=BASE))
        first = await rendered.scrape()
        monitor.apply(lifecycle("b", at=BASE))
        clock.now += 0.9
        cached = await rendered.scrape()
        clock.now += 0.2  # the first rendering is 1.1 s old now
        return [first, cached, await rendered.scrape()]

    first, cached, fresh = asyncio.run(scrapes())
    assert cached is first and rendered.renders == 2
    assert received_total(first) == 1 and received_total(fresh) == 2


def test_while_scraped_the_metrics_are_rendered_ahead_then_no_longer() -> None:
    monitor, _ = monitor_app()
    clock = FakeClock()
    rendered = RenderedMetrics(monitor.metrics, interval=0.01, keep_warm=60.0, clock=clock)

    async def scenario() -> None:
        await rendered.scrape()
        refresher = asyncio.create_task(rendered.refresh())
        monitor.apply(lifecycle("a", at=BASE))
        deadline = time.monotonic() + 10
        while rendered.renders < 3 and time.monotonic() < deadline:
            clock.now += 0.001
            await asyncio.sleep(0.01)
        assert rendered.renders >= 3
        # With the clock still, the refresher's next rendering would be no newer: it stops.
        await asyncio.sleep(0.05)  # a rendering under way may still finish
        renders = rendered.renders
        # Within max_age of the refresher's rendering: the scrape takes it as it is.
        body = await rendered.scrape()
        assert rendered.renders == renders and received_total(body) == 1
        clock.now += 61  # no scrape for longer than keep_warm
        await asyncio.sleep(0.05)  # a rendering under way may still finish
        renders = rendered.renders
        for _ in range(20):  # time goes on: a refresher still rendering would render again
            clock.now += 0.001
            await asyncio.sleep(0.01)
        assert rendered.renders == renders
        refresher.cancel()

    asyncio.run(scenario())


def test_a_busy_loop_does_not_leave_scrapes_on_an_old_rendering() -> None:
    monitor, _ = monitor_app()
    rendered = RenderedMetrics(monitor.metrics, max_age=0.2, interval=0.05)

    async def scenario() -> bytes:
        refresher = asyncio.create_task(rendered.refresh())
        await rendered.scrape()
        monitor.apply(lifecycle("a", at=BASE))
        time.sleep(0.3)  # the loop is blocked: the refresher cannot run
        body = await rendered.scrape()
        refresher.cancel()
        return body

    assert received_total(asyncio.run(scenario())) == 1


def test_the_served_app_shows_new_events_within_max_age() -> None:
    monitor, app = monitor_app()
    with TestClient(app) as client:
        assert received_total(client.get("/metrics").content) == 0
        monitor.apply(lifecycle("a", at=BASE))
        time.sleep(MAX_AGE + 0.05)
        assert received_total(client.get("/metrics").content) == 1
