"""Slow readers over a real daphne (docs/protocol.md, "Slow readers"): a client that stops
reading while its subscriptions keep producing is closed with 1013 once more than
MAX_QUEUED_BYTES wait for it, and everything held for it is given back; a client that
reads is never closed. Before the bound, such a client stayed open and the worker kept
every frame (issue 13: ~1 GB in 3 s, never given back)."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from django.db import transaction

from tests.support.data import db
from tests.support.wsclient import WsClient, new_tx
from tests.system.test_operations import get, samples

pytestmark = [pytest.mark.django_db(transaction=True)]

OPS_SETTINGS = "tests.system.ops_settings"
QUEUED = 4_000_000
TIMEOUT = 20


async def seed(n: int) -> None:
    from tests.testapp.models import Gadget

    def create():
        with transaction.atomic():
            for i in range(n):
                Gadget.objects.create(id=f"g{i:03d}", label=f"l{i}", note="n" * 500)

    await db(create)


async def metrics(worker) -> dict[str, float]:
    status, text = await get(worker, "/metrics")
    assert status == 200
    return samples(text)


async def subscribe_and_cancel(ws: WsClient, times: int) -> None:
    """Each subscribe sends the whole result (~100 kB) again."""
    for _ in range(times):
        tx = new_tx()
        await ws.query("GetAllGadgets", "Gadget", tx=tx)
        await ws.send("ws:m:query-cancel", {"tx": tx})


async def test_a_client_that_stops_reading_is_closed_and_forgotten(daphne_workers):
    [worker] = daphne_workers(
        1,
        settings=OPS_SETTINGS,
        extra_env={"MYKO_METRICS": "1", "MYKO_TEST_MAX_QUEUED_BYTES": str(QUEUED)},
    )
    await seed(200)
    # websockets stops reading the socket once `max_queue` messages wait unread.
    async with await WsClient.socket(worker.url, max_queue=None) as reader:
        await reader.subscribe("GetAllGadgets", "Gadget")  # the store is loaded
        baseline = await metrics(worker)  # one connection open
        stalled = await WsClient.socket(worker.url, max_queue=1)
        await subscribe_and_cancel(stalled, 150)  # ~15 MB for a client that reads none
        await subscribe_and_cancel(reader, 20)
        got = [await reader.expect("ws:m:query-response") for _ in range(20)]
        assert all(len(r["upserts"]) == 200 for r in got)

        async with asyncio.timeout(TIMEOUT):
            while (await metrics(worker))["myko_slow_reader_closes_total"] < 1:
                await asyncio.sleep(0.2)
        # The stalled client's connection goes (close frame, or dropped if it does not
        # read it within a second); everything held for it is given back.
        async with asyncio.timeout(TIMEOUT):
            while (found := await metrics(worker))["myko_connections"] > 1:
                await asyncio.sleep(0.2)
        assert found["myko_outgoing_queued_bytes"] == 0, found
        assert found["myko_slow_reader_closes_total"] == 1, found
        assert found["myko_subscriptions"] == 1, found  # the reader's first
        assert found["myko_asyncio_tasks"] <= baseline["myko_asyncio_tasks"], found

        # What reached the stalled client before the close, then the close: 1013 if it
        # read the close frame in time, else a dropped connection (1006).
        code = None
        async with asyncio.timeout(TIMEOUT):
            while code is None:
                try:
                    await stalled.recv_frame(TIMEOUT)
                except websockets.ConnectionClosed:
                    code = stalled.close_code
        assert code in (1013, 1006)

        # The reading client was not touched.
        await reader.send("ws:m:ping", {"id": "still"})
        assert await reader.expect("ws:m:ping") == {"id": "still"}

    # Connections that come after it are served as usual.
    async with await WsClient.socket(worker.url) as late:
        tx, snapshot = await late.subscribe("GetAllGadgets", "Gadget")
        assert len(snapshot["upserts"]) == 200
