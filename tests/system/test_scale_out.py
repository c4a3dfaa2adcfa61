"""Several daphne workers through channels-redis: a write on one worker reaches
subscribers on every worker, in order, exactly once."""

import asyncio
import os
import subprocess

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.db import connection

from myko_django.models import Event
from myko_django.testing import free_port
from tests.support.wsclient import WsClient

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

    def __init__(self, ws: WsClient) -> None:
        self.ws = ws
        self.state: dict[str, dict] = {}
        self.next_sequence = 1
        self.upserted: list[str] = []

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.state):
                data = (await self.ws.recv(timeout=None))["data"]
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
    ws = await WsClient.socket(url)
    await ws.query("GetAllGadgets", "Gadget", tx=tx)
    first = await ws.recv(timeout=None)
    assert first["data"]["sequence"] == 0
    return Watcher(ws)


async def test_commands_on_one_worker_reach_subscribers_on_all(daphne_workers):
    # A poll interval of a minute: only the doorbell can deliver within the timeout.
    workers = daphne_workers(3, redis_url=redis_url(), extra_env={"MYKO_TEST_POLL_INTERVAL": "60"})
    subscribers = [await subscribe(w.url) for w in workers]
    async with await WsClient.socket(workers[0].url) as writer:
        for i in range(20):
            await writer.command("MakeGadgets", {"labels": [f"n{i}"]}, tx=f"c{i}")
        for _ in range(20):
            assert (await writer.recv(timeout=None))["event"] in ("ws:m:command-response")
    expected = {f"g-n{i}" for i in range(20)}
    for watcher in subscribers:
        await watcher.until(lambda state: set(state) == expected)
        assert sorted(watcher.upserted) == sorted(expected)  # each exactly once
        await watcher.close()
    assert await sync_to_async(count_events)() == 20


async def send_commands(url: str, count: int, prefix: str) -> None:
    async with await WsClient.socket(url) as writer:
        for i in range(count):
            await writer.command("MakeGadgets", {"labels": [f"{prefix}{i}"]}, tx=f"{prefix}{i}")
        for _ in range(count):
            assert (await writer.recv(timeout=None))["event"] == "ws:m:command-response"


async def test_dropped_doorbell_messages_are_repaired_from_the_log(daphne_workers):
    """A layer that holds one message per channel drops most of a burst (channels-redis
    refuses sends to a full channel): subscribers still get every change, in order."""
    workers = daphne_workers(
        2, redis_url=redis_url(), extra_env={"MYKO_LAYER": "core", "MYKO_LAYER_CAPACITY": "1"}
    )
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
                await victim.ws.recv_frame(timeout=None)
    await send_commands(survivor.url, 3, "after")
    expected = {f"g-before{i}" for i in range(3)} | {f"g-after{i}" for i in range(3)}
    await watcher.until(lambda state: set(state) == expected)
    # The killed worker's client reconnects elsewhere with the same tx: a fresh snapshot.
    async with await WsClient.socket(survivor.url) as again:
        await again.query("GetAllGadgets", "Gadget", tx="q")
        snapshot = (await again.recv(timeout=None))["data"]
        assert snapshot["sequence"] == 0
        assert {row["item"]["id"] for row in snapshot["upserts"]} == expected
    await watcher.close()


async def test_redis_down_then_back_loses_nothing(daphne_workers, tmp_path):
    """Commands keep committing while Redis is down; subscribers on other workers get
    their updates from the log (poll), and fan-out resumes when Redis returns."""
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


# ---- order against the log ---------------------------------------------------------------


def log_positions() -> dict[tuple[str, str], int]:
    """(item id, note) -> the position of the event that gave the item that state."""
    try:
        return {
            (e.item_id, e.item["note"]): e.position
            for e in Event.objects.filter(item_type="Gadget", change_type="SET")
        }
    finally:
        connection.close()


def final_state() -> dict[str, str]:
    """Each Gadget's note as the log leaves it."""
    try:
        state: dict[str, str] = {}
        for e in Event.objects.filter(item_type="Gadget").order_by("position"):
            if e.change_type == "SET":
                state[e.item_id] = e.item["note"]
            else:
                state.pop(e.item_id, None)
        return state
    finally:
        connection.close()


class Recorder(Watcher):
    """Keeps every response so its diffs can be compared with the log afterwards."""

    def __init__(self, ws: WsClient, snapshot: dict) -> None:
        super().__init__(ws)
        self.messages = [snapshot]
        for row in snapshot["upserts"]:
            self.state[row["item"]["id"]] = row["item"]

    async def until(self, predicate, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.state):
                data = (await self.ws.recv(timeout=None))["data"]
                assert data["sequence"] == self.next_sequence, "sequence numbers out of order"
                self.next_sequence += 1
                self.messages.append(data)
                for item_id in data["deletes"]:
                    self.state.pop(item_id, None)
                for row in data["upserts"]:
                    self.state[row["item"]["id"]] = row["item"]

    def notes(self) -> dict[str, str]:
        return {item_id: item["note"] for item_id, item in self.state.items()}

    def check_order(self, positions: dict[tuple[str, str], int]) -> None:
        """Every state shown was committed, each once, and each message holds only states
        newer than everything in the message before it (coalescing allowed, no reordering)."""
        seen: set[tuple[str, str]] = set()
        previous_max = 0
        for data in self.messages[1:]:
            states = [(row["item"]["id"], row["item"]["note"]) for row in data["upserts"]]
            assert not seen & set(states), f"a state shown twice: {seen & set(states)}"
            seen |= set(states)
            found = [positions[s] for s in states]  # KeyError: a state the log never had
            if found:
                assert min(found) > previous_max, "a message showed an older state"
                previous_max = max(found)


async def record(url: str, tx: str = "q") -> Recorder:
    ws = await WsClient.socket(url, max_size=None)
    await ws.query("GetAllGadgets", "Gadget", tx=tx)
    first = (await ws.recv(timeout=None))["data"]
    assert first["sequence"] == 0
    return Recorder(ws, first)


async def write_notes(url: str, writer: str, count: int, pause: float = 0.0) -> None:
    """`count` commands, each setting an item of this writer's own and the shared one."""
    async with await WsClient.socket(url) as ws:
        for i in range(count):
            items = [
                {"id": f"{writer}-{i}", "label": "own", "note": f"{writer}-{i}"},
                {"id": "shared", "label": "shared", "note": f"{writer}-{i}"},
            ]
            await ws.command("SetGadgets", {"items": items}, tx=f"{writer}-{i}")
            reply = await ws.recv(timeout=None)
            assert reply["event"] == "ws:m:command-response", reply
            if pause:
                await asyncio.sleep(pause)


async def test_concurrent_writers_on_every_worker_no_subscriber_misses_or_reorders(
    daphne_workers,
):
    workers = daphne_workers(3, redis_url=redis_url())
    recorders = [await record(w.url) for w in workers for _ in range(2)]
    await asyncio.gather(*(write_notes(w.url, f"w{n}", 12) for n, w in enumerate(workers)))
    expected = await sync_to_async(final_state)()
    assert len(expected) == 3 * 12 + 1
    positions = await sync_to_async(log_positions)()
    for recorder in recorders:
        await recorder.until(lambda state, r=recorder: r.notes() == expected)
        recorder.check_order(positions)
        await recorder.close()


async def test_worker_started_late_loads_then_follows_without_gaps_or_doubles(daphne_workers):
    """A worker that starts (or restarts) while writes go on: its snapshot is at a known
    position and it follows from there; nothing between the two is missed or doubled."""
    first, late = daphne_workers(2, redis_url=redis_url())
    late.stop()  # it "starts late": down while the first writes begin
    writing = asyncio.ensure_future(write_notes(first.url, "a", 40, pause=0.02))
    await asyncio.sleep(0.3)
    await sync_to_async(late.start)()
    recorders = [await record(late.url, tx=f"late{i}") for i in range(2)]
    await writing
    await write_notes(late.url, "b", 5)
    expected = await sync_to_async(final_state)()
    positions = await sync_to_async(log_positions)()
    for recorder in recorders:
        await recorder.until(lambda state, r=recorder: r.notes() == expected)
        recorder.check_order(positions)
        # The snapshot was a committed state of the log, at one position.
        snapshot = {
            row["item"]["id"]: row["item"]["note"] for row in recorder.messages[0]["upserts"]
        }
        at = max((positions[s] for s in snapshot.items()), default=0)
        assert all(positions[(item_id, note)] <= at for item_id, note in snapshot.items()), (
            "snapshot mixes positions"
        )
        await recorder.close()


async def test_python_client_reconnects_to_another_worker_with_a_fresh_snapshot(
    daphne_workers,
):
    """The upstream behaviour on reconnect (same tx re-sent, fresh sequence 0) through the
    Python client, when its worker is killed and it moves to the next URL it was given."""
    from myko_django.client import connect

    doomed, survivor = daphne_workers(2, redis_url=redis_url())
    await write_notes(survivor.url, "before", 3)
    async with connect([doomed.url, survivor.url], "msgpack", backoff=(0.05, 0.5)) as client:
        query = client.query("GetAllGadgets", "Gadget")
        async with asyncio.timeout(15):
            await query.ready()
        tx = query.tx
        doomed.kill()
        await write_notes(survivor.url, "during", 3)
        expected = await sync_to_async(final_state)()
        async with asyncio.timeout(15):
            async for items in query:
                if {i: item["note"] for i, item in items.items()} == expected:
                    break
        assert client.reconnects == 1 and client.url == survivor.url and query.tx == tx
        fresh = [r for r in query.responses if r["sequence"] == 0]
        assert len(fresh) == 2 and fresh[-1]["tx"] == tx
        assert {r["item"]["id"] for r in fresh[-1]["upserts"]} >= {f"before-{i}" for i in range(3)}
        await write_notes(survivor.url, "after", 2)
        expected = await sync_to_async(final_state)()
        async with asyncio.timeout(15):
            async for items in query:
                if {i: item["note"] for i, item in items.items()} == expected:
                    break


async def test_many_idle_connections_survive_a_quiet_period_then_all_get_the_update(
    daphne_workers,
):
    """channels-redis once closed idle consumers (1011) when its blocking read
    outlasted Redis' socket timeout (5 s), and capped its pool at 100 connections. Here 300
    connections sit idle past that timeout, then one write from another worker reaches all."""
    writer_worker, reader_worker = daphne_workers(
        2,
        redis_url=redis_url(),
        extra_env={"MYKO_TEST_POLL_INTERVAL": "60"},  # doorbell only
    )
    watchers = [await subscribe(reader_worker.url, tx=f"idle{i}") for i in range(300)]
    await asyncio.sleep(6.5)
    await send_commands(writer_worker.url, 1, "wake")
    for watcher in watchers:
        await watcher.until(lambda state: set(state) == {"g-wake0"})
    assert all(w.ws.close_code is None for w in watchers)
    await asyncio.gather(*(w.close() for w in watchers))
