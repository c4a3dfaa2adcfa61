"""Operating real daphne workers: /healthz, /readyz (also with a database that does not
exist), /metrics after some traffic (and 404 when off), and SIGTERM draining a worker
whose client has a live query and a slow command in flight, so the client carries on at
another worker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from myko_django.client import connect
from myko_django.testing import DaphneServer, current_database_url
from tests.support.wsclient import WsClient
from tests.testapp.models import Gadget

pytestmark = [pytest.mark.django_db(transaction=True)]

TIMEOUT = 15
OPS_SETTINGS = "tests.system.ops_settings"


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("operations tests need REDIS_URL (bin/test sets it)")
    return url


def http_get(worker: DaphneServer, path: str) -> tuple[int, str]:
    """(status, body) of a GET to the worker; an error status is an answer too."""
    url = f"http://127.0.0.1:{worker.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(worker: DaphneServer, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, worker, path)


def samples(text: str) -> dict[str, float]:
    """{series with labels: value} of Prometheus' text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


@sync_to_async
def gadgets_labelled(label: str) -> int:
    try:
        return Gadget.objects.filter(label=label).count()
    finally:
        connections.close_all()


async def subscribe(url: str) -> WsClient:
    ws = await WsClient.socket(url)
    await ws.subscribe("GetAllGadgets", "Gadget")
    return ws


# ---- health and readiness ---------------------------------------------------------------


async def test_healthz_and_readyz_of_a_worker(daphne_workers):
    [worker] = daphne_workers(1, redis_url=redis_url())
    assert await get(worker, "/healthz") == (200, "ok\n")
    status, body = await get(worker, "/readyz")
    assert status == 200
    assert json.loads(body) == {
        "ready": True,
        "checks": {"database": "ok", "layer": "ok", "hub": "not started"},
    }
    async with await subscribe(worker.url) as ws:
        await ws.command("MakeGadgets", {"labels": ["a", "b"]})
        await ws.expect("ws:m:query-response")
        await ws.expect("ws:m:command-response")
        status, body = await get(worker, "/readyz")
        assert status == 200
        assert json.loads(body)["checks"]["hub"] == "0 position(s) behind the log (at most 1000)"


async def test_readyz_is_503_when_the_database_does_not_exist(transactional_db, tmp_path):
    url = urllib.parse.urlsplit(current_database_url())
    missing = url._replace(path=url.path + "_does_not_exist").geturl()
    worker = DaphneServer(tmp_path, database_url=missing).start()
    try:
        assert await get(worker, "/healthz") == (200, "ok\n")  # the process is alive
        status, body = await get(worker, "/readyz")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["database"].startswith("error: ")
        assert checks["hub"] == "not started"
    finally:
        worker.stop()


# ---- metrics --------------------------------------------------------------------------------


async def test_metrics_are_off_unless_enabled(daphne_workers):
    [worker] = daphne_workers(1)
    status, _ = await get(worker, "/metrics")
    assert status == 404


async def test_metrics_after_some_traffic(daphne_workers):
    [worker] = daphne_workers(1, redis_url=redis_url(), extra_env={"MYKO_METRICS": "1"})
    async with await subscribe(worker.url) as ws:
        for i in range(3):
            await ws.command("MakeGadgets", {"labels": [f"m{i}"]})
            await ws.expect("ws:m:query-response")
            await ws.expect("ws:m:command-response")
        await ws.command("MakeGadgets", {"labels": ["x"], "failAfter": 0})
        await ws.expect("ws:m:command-error")
        status, text = await get(worker, "/metrics")
    assert status == 200
    found = samples(text)
    assert found["myko_connections"] == 1
    assert found["myko_connections_opened_total"] == 1
    assert found["myko_subscriptions"] == 1
    assert found["myko_events_applied_total"] == 3
    assert found["myko_fanout_lag_positions"] == 0
    assert found["myko_fanout_lag_seconds_count"] >= 1
    assert found['myko_fanout_lag_seconds_bucket{le="+Inf"}'] >= 1
    assert found["myko_gap_repairs_total"] == 0
    assert found['myko_doorbell_failures_total{direction="ring"}'] == 0
    assert found['myko_doorbell_failures_total{direction="listen"}'] == 0
    assert found['myko_command_duration_seconds_count{outcome="ok"}'] == 3
    assert found['myko_command_duration_seconds_count{outcome="error"}'] == 1
    assert found['myko_command_duration_seconds_sum{outcome="ok"}'] > 0
    # A snapshot, then per command an update and a response, and the error.
    assert found["myko_frames_sent_total"] == 1 + 3 * 2 + 1
    assert found["myko_bytes_sent_total"] > 500
    assert found["process_resident_memory_bytes"] > 0


# ---- close codes ------------------------------------------------------------------------


async def test_daphne_sends_the_protocols_close_codes(daphne_workers):
    """autobahn's sendClose, which daphne closes with, takes only 1000 and 3000-4999 from
    an application; without server/endpoint.py's fix_daphne_close_codes a 1009 (or 1008,
    1012) ended the application with an exception and the client saw 1011."""
    [worker] = daphne_workers(
        1, settings=OPS_SETTINGS, extra_env={"MYKO_TEST_MAX_MESSAGE_SIZE": "1000"}
    )
    async with await WsClient.socket(worker.url) as ws:
        await ws.send_raw("x" * 2000)
        assert await ws.wait_closed(TIMEOUT) == 1009
    assert "Exception inside application" not in worker.output()


# ---- SIGTERM ----------------------------------------------------------------------------------


async def test_sigterm_drains_a_worker_and_its_client_carries_on_at_another(daphne_workers, caplog):
    caplog.set_level(logging.INFO, logger="myko_django.client")
    doomed, other = daphne_workers(2, redis_url=redis_url(), settings=OPS_SETTINGS)
    watcher = await subscribe(doomed.url)  # a second socket on the doomed worker
    async with connect([doomed.url, other.url], "json", backoff=(0.05, 0.2)) as client:
        query = client.query("GetAllGadgets", "Gadget")
        await asyncio.wait_for(query.ready(), TIMEOUT)
        command = asyncio.ensure_future(client.command("SlowCount", label="slow", wait=3))
        await asyncio.sleep(0.5)  # running on the doomed worker, inside its transaction

        doomed.proc.send_signal(signal.SIGTERM)
        # A socket with nothing running is closed with 1012 at once.
        assert await watcher.wait_closed(TIMEOUT) == 1012
        # It stops accepting: not ready, and a new socket is closed with 1012 at once.
        status, body = await get(doomed, "/readyz")
        assert status == 503 and "draining" in json.loads(body)["checks"]["drain"]
        assert await get(doomed, "/healthz") == (200, "ok\n")
        late = await WsClient.socket(doomed.url)
        assert await late.wait_closed(TIMEOUT) == 1012
        assert not command.done() and client.url == doomed.url

        # The running command commits; its update, then its response arrive; then the close.
        assert await asyncio.wait_for(command, TIMEOUT) == 1
        assert "slow" in {item["label"] for item in query.items.values()}

        # The client reconnects to the other worker, with its live query.
        async with asyncio.timeout(TIMEOUT):
            while not (client.connected and client.url == other.url):
                await asyncio.sleep(0.02)
        assert client.reconnects == 1
        assert f"myko: connection to {doomed.url} lost (code 1012)" in caplog.messages
        await client.command("MakeGadgets", labels=["after"])
        assert {"slow", "after"} <= {item["label"] for item in query.items.values()}

    assert await asyncio.to_thread(doomed.proc.wait, TIMEOUT) == 0
    assert "myko: drained" in doomed.output()
    assert await gadgets_labelled("slow") == 1


async def test_a_command_past_the_drain_timeout_commits_once_and_answers_from_another_worker(
    daphne_workers,
):
    doomed, other = daphne_workers(
        2,
        redis_url=redis_url(),
        settings=OPS_SETTINGS,
        extra_env={"MYKO_TEST_DRAIN_TIMEOUT": "0.5"},
    )
    async with connect([doomed.url, other.url], "json", backoff=(0.05, 0.2)) as client:
        await client.ping()
        command = asyncio.ensure_future(client.command("SlowCount", label="long", wait=4))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        doomed.proc.send_signal(signal.SIGTERM)
        # Closed at the deadline, the command still running there: the client re-sends it
        # to the other worker, which waits for the first run to commit and answers with its
        # response (commands are idempotent by commandId, tx and user).
        async with asyncio.timeout(TIMEOUT):
            while client.url != other.url:
                await asyncio.sleep(0.02)
        assert time.monotonic() - started < 2.5
        assert not command.done()
        assert await asyncio.wait_for(command, TIMEOUT) == 1
    # The doomed worker waited for its command before it exited.
    assert await asyncio.to_thread(doomed.proc.wait, TIMEOUT) == 0
    assert await gadgets_labelled("long") == 1
