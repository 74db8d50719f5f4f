"""``evcore serve``'s HTTP API in-process: Flower's task endpoints, workers, probes, auth."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import httpx
import pytest
from _serve_support import event, lifecycle, monitor_app
from starlette.testclient import TestClient

from evcore import Dispatcher
from evcore.serve.app import create_app
from evcore.serve.auth import Credentials
from evcore.serve.monitor import Monitor, MonitorOptions

BASE = 1_750_000_000.0


@pytest.fixture
def client() -> TestClient:
    monitor, app = monitor_app()
    for number in range(6):
        outcome = "failed" if number % 3 == 0 else "succeeded"
        name = "proj.mul" if number % 2 else "proj.add"
        worker = "w2@example" if number >= 4 else "w1@example"
        monitor.apply(lifecycle(f"t{number}", name, worker, at=BASE + number * 10, outcome=outcome))
    monitor.apply([event("task-received", "w1@example", uuid="pending", name="proj.add")])
    return TestClient(app)


def test_tasks_default_order_is_newest_timestamp_first(client: TestClient) -> None:
    answer = client.get("/api/tasks").json()
    assert list(answer) == ["pending", "t5", "t4", "t3", "t2", "t1", "t0"]
    task = answer["t1"]
    assert task["uuid"] == "t1"
    assert task["worker"] == "w1@example"  # the hostname, as Flower writes it
    assert task["state"] == "SUCCESS"
    assert task["client"] == "gen4242@web-1"
    assert task["children"] == []
    # Celery's 31 fields, the keys of Flower's answer
    assert len(task) == 31


def test_tasks_filters_limit_offset(client: TestClient) -> None:
    assert list(client.get("/api/tasks?limit=2&offset=1").json()) == ["t5", "t4"]
    assert list(client.get("/api/tasks?state=FAILURE").json()) == ["t3", "t0"]
    assert list(client.get("/api/tasks?state=failure").json()) == ["t3", "t0"]
    assert list(client.get("/api/tasks?taskname=proj.mul").json()) == ["t5", "t3", "t1"]
    assert list(client.get("/api/tasks?workername=w2@example").json()) == ["t5", "t4"]
    assert len(client.get("/api/tasks?state=All&taskname=All").json()) == 7
    assert client.get("/api/tasks?offset=-5&limit=1").json().keys() == {"pending"}


def test_tasks_sort_by(client: TestClient) -> None:
    by_started = list(client.get("/api/tasks?sort_by=started").json())
    assert by_started[0] == "pending"  # no value sorts first, as in Flower
    assert by_started[1:] == ["t0", "t1", "t2", "t3", "t4", "t5"]
    descending = list(client.get("/api/tasks?sort_by=-started").json())
    assert descending == [*reversed(by_started[1:]), "pending"]
    by_name = list(client.get("/api/tasks?sort_by=name&limit=3").json())
    assert by_name == ["pending", "t0", "t2"]


def test_tasks_received_range(client: TestClient) -> None:
    start = time.strftime("%Y-%m-%d %H:%M", time.localtime(BASE + 21))
    answer = client.get("/api/tasks", params={"received_start": start}).json()
    received = {uuid: task["received"] for uuid, task in answer.items()}
    assert received
    assert all(value >= BASE + 21 - 60 for value in received.values())
    assert "t0" not in answer


def test_bad_parameters_are_400_with_a_message(client: TestClient) -> None:
    response = client.get("/api/tasks?sort_by=uuid")
    assert response.status_code == 400
    assert "Invalid sort_by 'uuid'" in response.json()["error"]
    response = client.get("/api/tasks?limit=ten")
    assert response.status_code == 400
    response = client.get("/api/tasks?received_start=yesterday")
    assert response.status_code == 400
    assert "YYYY-MM-DD HH:MM" in response.json()["error"]


def test_task_info_and_types(client: TestClient) -> None:
    info = client.get("/api/task/info/t3").json()
    assert info["state"] == "FAILURE"
    assert info["exception"] == "ValueError('bad')"
    assert info["worker"] == "w1@example"
    missing = client.get("/api/task/info/nope")
    assert missing.status_code == 404
    types = client.get("/api/task/types").json()
    assert types == {"task-types": ["proj.add", "proj.mul"]}


def test_search_terms(client: TestClient) -> None:
    assert list(client.get("/api/tasks?search=state:failure").json()) == ["t3", "t0"]
    assert set(client.get("/api/tasks?search=mul%20state:success").json()) == {"t1", "t5"}


def test_workers_from_events() -> None:
    monitor, app = monitor_app()
    now = time.time()
    monitor.apply(
        [
            event("worker-online", "w1@example", freq=2.0, sw_ver="5.7.0", sw_ident="py-celery"),
            event(
                "worker-heartbeat",
                "w1@example",
                freq=2.0,
                active=3,
                processed=10,
                loadavg=[0.1, 0.2, 0.3],
            ),
            event("worker-heartbeat", "w2@example", at=now - 3.0, freq=2.0, active=1),
            event("worker-heartbeat", "w3@example", at=now - 30.0, freq=2.0),
        ]
    )
    workers = TestClient(app).get("/api/workers").json()
    assert workers["w1@example"]["status"] == "online"
    assert workers["w1@example"]["active"] == 3
    assert workers["w1@example"]["processed"] == 10
    assert workers["w1@example"]["sw_ver"] == "5.7.0"
    assert workers["w2@example"]["status"] == "late"
    assert workers["w3@example"]["status"] == "offline"
    assert workers["w3@example"]["last_seen_ago"] >= 29
    offline = TestClient(app).get("/api/workers?status=offline").json()
    assert list(offline) == ["w3@example"]


def test_hostile_values_come_back_as_json_text() -> None:
    monitor, app = monitor_app()
    nasty = "<script>alert(1)</script>\x1b[31m"
    monitor.apply(
        [
            event(
                "task-received",
                "w1@example",
                uuid="x1",
                name=nasty,
                args=nasty,
                runtime=float("nan"),
            )
        ]
    )
    response = TestClient(app).get("/api/task/info/x1")
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.json()["name"] == nasty
    assert "<script>" not in response.headers.get("content-type", "")


def test_probes_and_readiness_follow_the_receiver(bus_url: str) -> None:
    monitor = Monitor(bus_url, MonitorOptions(ready_max_lag=5.0))
    app = create_app(monitor)
    unstarted = TestClient(app)  # no lifespan: nothing consumed yet
    assert unstarted.get("/healthz").status_code == 200
    assert unstarted.get("/readyz").status_code == 503
    with TestClient(app) as client:  # the lifespan starts the monitor
        assert client.get("/readyz").json()["connected"] is True
        with Dispatcher(bus_url, hostname="w9@example") as dispatcher:
            dispatcher.send("worker-online", freq=2.0)
            dispatcher.send("task-received", uuid="live", name="proj.add")
        deadline = time.monotonic() + 5
        while "live" not in client.get("/api/tasks").json() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/api/task/info/live").json()["worker"] == "w9@example"
        assert client.get("/api/workers").json()["w9@example"]["status"] == "online"
    assert monitor.receiver is not None
    assert not monitor.receiver.running


def test_readyz_fails_when_lag_exceeds_the_bound() -> None:
    monitor, app = monitor_app(ready_max_lag=1.0)

    class Lagging:
        connected = True

        def lag(self) -> float:
            return 2.5

    monitor.receiver = Lagging()  # type: ignore[assignment]
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    assert response.json()["lag_seconds"] == 2.5


def test_read_only_methods() -> None:
    _, app = monitor_app()
    client = TestClient(app)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.request(method, "/api/tasks").status_code == 405


@pytest.mark.parametrize(
    ("credentials", "header", "expected"),
    [
        (Credentials(token="s3cret"), "Bearer s3cret", 200),
        (Credentials(token="s3cret"), "Bearer s3cre", 401),
        (Credentials(token="s3cret"), None, 401),
        (Credentials(basic="ops:pw"), "Basic " + base64.b64encode(b"ops:pw").decode(), 200),
        (Credentials(basic="ops:pw"), "Basic " + base64.b64encode(b"ops:px").decode(), 401),
        (Credentials(basic="ops:pw"), "Basic !!notbase64", 401),
        (Credentials(basic="ops:pw"), "Bearer ops:pw", 401),
    ],
)
def test_auth(credentials: Credentials, header: str | None, expected: int) -> None:
    _, app = monitor_app(credentials=credentials)
    client = TestClient(app)
    headers = {"Authorization": header} if header else {}
    for path in ("/api/tasks", "/metrics", "/api/workers"):
        response = client.get(path, headers=headers)
        assert response.status_code == expected, path
        if expected == 401:
            assert "www-authenticate" in response.headers
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_credentials_are_checked_when_configured() -> None:
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        Credentials(basic="nopassword")


def test_hostile_requests_in_process() -> None:
    _, app = monitor_app()
    client = TestClient(app)
    assert client.get("/api/tasks?" + "a=1&" * 2000).status_code == 414
    assert client.get("/api/tasks", params={"taskname": "x" * 600}).status_code == 400
    assert client.get("/api/task/info/" + "x" * 5000).status_code == 404
    for path in ("/api/task/info/../../etc/passwd", "/../../etc/passwd", "/static/%2e%2e/x"):
        response = client.get(path)
        assert response.status_code == 404
        assert "root:" not in response.text
    assert client.get("/api/tasks?limit=%00%ff").status_code == 400
    assert client.get("/api/tasks?limit=99999999999999999999").status_code == 200


def test_with_httpx_asgi_transport() -> None:
    monitor, app = monitor_app()
    monitor.apply(lifecycle(str(uuid.uuid4()), at=BASE))

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://evcore") as http:
            return await http.get("/api/tasks?limit=1")

    response = asyncio.run(main())
    assert response.status_code == 200
    assert len(response.json()) == 1
