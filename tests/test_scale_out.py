"""Several daphne workers through channels-redis: a write on one worker reaches
subscribers on every worker, in order, exactly once (DESIGN.md invariant 3)."""

import asyncio
import json
import os
import subprocess

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


class Watcher:
    """A subscriber that applies responses as a client would and checks their order."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.state: dict[str, dict] = {}
        self.next_sequence = 1
        self.upserted: list[str] = []

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.state):
                data = json.loads(await self.ws.recv())["data"]
                assert data["sequence"] == self.next_sequence, "sequence numbers out of order"
                self.next_sequence += 1
                for item_id in data["deletes"]:
                    self.state.pop(item_id, None)
                for row in data["upserts"]:
                    self.state[row["item"]["id"]] = row["item"]
                    self.upserted.append(row["item"]["id"])

    async def close(self) -> None:
        await self.ws.close()


async def subscribe(url: str, tx: str = "q") -> Watcher:
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
    return Watcher(ws)


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
    for watcher in subscribers:
        await watcher.until(lambda state: set(state) == expected)
        assert sorted(watcher.upserted) == sorted(expected)  # each exactly once
        await watcher.close()
    assert await sync_to_async(count_events)() == 20


async def send_commands(url: str, count: int, prefix: str) -> None:
    async with websockets.connect(url) as writer:
        for i in range(count):
            await writer.send(
                json.dumps(
                    {
                        "event": "ws:m:command",
                        "data": {
                            "command": {"tx": f"{prefix}{i}", "labels": [f"{prefix}{i}"]},
                            "commandId": "MakeGadgets",
                        },
                    }
                )
            )
        for _ in range(count):
            assert json.loads(await writer.recv())["event"] == "ws:m:command-response"


async def test_dropped_doorbell_messages_are_repaired_from_the_log(daphne_workers):
    """A layer that holds one message per channel drops most of a burst (channels-redis
    refuses sends to a full channel): subscribers still get every change, in order."""
    workers = daphne_workers(2, redis_url=redis_url(), extra_env={"MYKO_LAYER_CAPACITY": "1"})
    watcher = await subscribe(workers[1].url)
    await asyncio.gather(*(send_commands(workers[0].url, 15, f"w{n}-") for n in range(3)))
    expected = {f"g-w{n}-{i}" for n in range(3) for i in range(15)}
    await watcher.until(lambda state: set(state) == expected)
    await watcher.close()


async def test_worker_killed_other_workers_unaffected_clients_resubscribe(daphne_workers):
    doomed, survivor = daphne_workers(2, redis_url=redis_url())
    victim = await subscribe(doomed.url)
    watcher = await subscribe(survivor.url)
    await send_commands(doomed.url, 3, "before")
    doomed.kill()
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await victim.ws.recv()
    await send_commands(survivor.url, 3, "after")
    expected = {f"g-before{i}" for i in range(3)} | {f"g-after{i}" for i in range(3)}
    await watcher.until(lambda state: set(state) == expected)
    # The killed worker's client reconnects elsewhere with the same tx: a fresh snapshot.
    async with websockets.connect(survivor.url) as again:
        await again.send(
            json.dumps(
                {
                    "event": "ws:m:query",
                    "data": {
                        "query": {"tx": "q"},
                        "queryId": "GetAllGadgets",
                        "queryItemType": "Gadget",
                    },
                }
            )
        )
        snapshot = json.loads(await again.recv())["data"]
        assert snapshot["sequence"] == 0
        assert {row["item"]["id"] for row in snapshot["upserts"]} == expected
    await watcher.close()


async def test_redis_down_then_back_loses_nothing(daphne_workers, tmp_path):
    """Commands keep committing while Redis is down; subscribers on other workers get
    their updates from the log (poll), and fan-out resumes when Redis returns."""
    from tests.servers import free_port

    port = free_port()

    def start_redis():
        return subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
        )

    redis = start_redis()
    try:
        await asyncio.sleep(0.3)
        writer_worker, reader_worker = daphne_workers(2, redis_url=f"redis://127.0.0.1:{port}/0")
        watcher = await subscribe(reader_worker.url)
        await send_commands(writer_worker.url, 2, "up")
        redis.terminate()
        redis.wait()
        await send_commands(writer_worker.url, 3, "down")
        got = {f"g-up{i}" for i in range(2)} | {f"g-down{i}" for i in range(3)}
        await watcher.until(lambda state: set(state) == got, timeout=15)
        redis = start_redis()
        await asyncio.sleep(1.5)  # let the hub's listener rejoin
        await send_commands(writer_worker.url, 3, "back")
        expected = got | {f"g-back{i}" for i in range(3)}
        await watcher.until(lambda state: set(state) == expected, timeout=15)
        assert sorted(watcher.upserted) == sorted(expected)  # no duplicates after Redis returns
        await watcher.close()
    finally:
        redis.terminate()
        redis.wait()
