"""/healthz, /readyz and /metrics through Django's async test client (the demo routes them
with `include("myko_django.urls")`). Each way /readyz can fail is forced here;
tests/system/test_operations.py asks a real daphne."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from myko_django import checks as myko_checks
from myko_django import views
from myko_django.server import doorbell, drain, hub, metrics

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client():
    yield AsyncClient()
    hub.reset()


async def test_healthz_answers_without_asking_anything(client, monkeypatch):
    monkeypatch.setattr(views, "high_water", lambda: pytest.fail("healthz read the database"))
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok\n"
    assert "no-store" in response["Cache-Control"]
    assert (await client.post("/healthz")).status_code == 405


async def test_readyz_of_a_worker_whose_hub_has_not_started(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["hub"] == "not started"
    assert body["checks"]["layer"] in ("ok", "none (one process)")  # Redis, or in-memory


async def test_readyz_with_a_running_hub_says_how_far_behind_it_is(client, settings, monkeypatch):
    running = await hub.get_hub()
    body = (await client.get("/readyz")).json()
    assert body["checks"]["hub"] == "0 position(s) behind the log (at most 1000)"

    settings.MYKO = {"READY_MAX_LAG": 3}
    monkeypatch.setattr(views, "high_water", lambda: running.sequencer.applied + 4)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["hub"] == "4 position(s) behind the log (at most 3)"


async def test_readyz_is_503_when_the_database_fails(client, monkeypatch):
    def broken():
        raise OSError("connection refused")

    monkeypatch.setattr(views, "high_water", broken)
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"]["database"] == "error: OSError: connection refused"


async def test_readyz_is_503_when_the_layer_does_not_answer(client, monkeypatch):
    class DownLayer:
        async def group_send(self, group, message):
            raise ConnectionError("redis is down")

    monkeypatch.setattr(doorbell, "layer", lambda: DownLayer())
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["layer"] == "error: ConnectionError: redis is down"


async def test_readyz_is_503_while_draining(client, monkeypatch):
    monkeypatch.setattr(drain.DRAIN, "draining", True)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["drain"].startswith("draining")


async def test_metrics_are_off_by_default(client):
    assert (await client.get("/metrics")).status_code == 404


async def test_metrics_when_on(client, settings):
    settings.MYKO = {"METRICS": True}
    await hub.get_hub()
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "myko_hubs 1.0" in text
    assert "# TYPE myko_command_duration_seconds histogram" in text


def test_metrics_on_without_prometheus_client_is_a_system_error(settings, monkeypatch):
    settings.MYKO = {"METRICS": True}
    assert myko_checks.check_metrics() == []
    monkeypatch.setattr(metrics, "CollectorRegistry", None)
    [error] = myko_checks.check_metrics()
    assert error.id == "myko.E040"
    assert "myko-django[metrics]" in error.hint
    settings.MYKO = {"METRICS": False}
    assert myko_checks.check_metrics() == []
