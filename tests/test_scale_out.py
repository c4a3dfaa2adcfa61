"""Several daphne workers through channels-redis: a write on one worker reaches
subscribers on every worker, in order, exactly once (DESIGN.md invariant 3)."""

import asyncio
import json
import os

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.db import connection

from myko_django.models import Event

pytestmark = [pytest.mark.django_db(transaction=True)]


def count_events() -> int:
    try:
        return Event.objects.count()
    finally:
        connection.close()  # asgiref's thread would otherwise hold the test database open


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("scale-out tests need REDIS_URL (bin/test sets it)")
    return url


async def subscribe(url: str, tx: str = "q"):
    ws = await websockets.connect(url)
    await ws.send(
        json.dumps(
            {
                "event": "ws:m:query",
                "data": {
                    "query": {"tx": tx},
                    "queryId": "GetAllGadgets",
                    "queryItemType": "Gadget",
                },
            }
        )
    )
    first = json.loads(await ws.recv())
    assert first["data"]["sequence"] == 0
    return ws


async def collect_until(ws, predicate, timeout: float = 10.0) -> list[dict]:
    """Query responses until `predicate(state)` holds; checks sequences as a client would."""
    state: dict[str, dict] = {}
    responses = []
    expected = 1
    async with asyncio.timeout(timeout):
        while not predicate(state):
            data = json.loads(await ws.recv())["data"]
            assert data["sequence"] == expected, "sequence numbers out of order"
            expected += 1
            for item_id in data["deletes"]:
                state.pop(item_id, None)
            for row in data["upserts"]:
                state[row["item"]["id"]] = row["item"]
            responses.append(data)
    return responses


async def test_commands_on_one_worker_reach_subscribers_on_all(daphne_workers):
    # A poll interval of a minute: only the doorbell can deliver within the timeout.
    workers = daphne_workers(3, redis_url=redis_url(), extra_env={"MYKO_TEST_POLL_INTERVAL": "60"})
    subscribers = [await subscribe(w.url) for w in workers]
    async with websockets.connect(workers[0].url) as writer:
        for i in range(20):
            await writer.send(
                json.dumps(
                    {
                        "event": "ws:m:command",
                        "data": {
                            "command": {"tx": f"c{i}", "labels": [f"n{i}"]},
                            "commandId": "MakeGadgets",
                        },
                    }
                )
            )
        for _ in range(20):
            assert json.loads(await writer.recv())["event"] in ("ws:m:command-response")
    expected = {f"g-n{i}" for i in range(20)}
    for ws in subscribers:
        responses = await collect_until(ws, lambda state: set(state) == expected)
        seen = [row["item"]["id"] for r in responses for row in r["upserts"]]
        assert sorted(seen) == sorted(expected)  # each exactly once
        await ws.close()
    assert await sync_to_async(count_events)() == 20
