"""Per-connection abuse limits (issue 9; docs/protocol.md, "Limits") against
`server.connection.Connection` with the in-memory backend: each limit hit with an error
reply for that message, and not hit by honest heavy use at the defaults (1,000 messages/s,
10,000 items per batch). The ASGI test (tests/asgi/test_limits.py) closes a connection
with 1008 and reads the limits from the MYKO settings.

Time is a fake clock given to the Connection, so the message rate is exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from myko_django.server.connection import ABUSE_SECONDS, CLOSE_POLICY, Connection, Limits
from myko_django.wire import codecs
from tests.support.memory import MemoryBackend, MemoryDatabase, MemoryHub, target
from tests.support.wsclient import ConnectionTransport, WsClient

LIMIT = "Limit exceeded: "


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def settle(turns: int = 40) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def conn_of(client: WsClient) -> Connection:
    assert isinstance(client.transport, ConnectionTransport)
    return client.transport.conn


@pytest.fixture
def db() -> MemoryDatabase:
    return MemoryDatabase()


@pytest.fixture
def hub(db):
    h = MemoryHub(db)
    yield h
    h.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def connect(hub, db, clock):
    """`connect(fmt, **limits)`: a client whose connection has those limits (the rest at
    their defaults) and the fake clock."""
    opened: list[WsClient] = []

    def open_one(fmt: str = codecs.JSON, **limits: int) -> WsClient:
        backend = MemoryBackend(db, Limits(**limits))
        client = WsClient(ConnectionTransport(hub, backend, clock=clock), fmt)
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        await client.close()


@pytest.fixture(params=[codecs.JSON, codecs.MSGPACK, codecs.CBOR])
def fmt(request) -> str:
    return request.param


async def expect_limit(client: WsClient, event: str, **fields: Any) -> str:
    """The next message is `event` with `fields` and a "Limit exceeded: " message; returns
    the message."""
    data = await client.expect(event)
    assert {k: data.get(k) for k in fields} == fields, data
    assert data["message"].startswith(LIMIT), data
    return data["message"]


def test_defaults_leave_room_for_honest_heavy_use():
    limits = Limits()
    assert dataclasses.astuple(limits) == (10_000, 1_000, 5_000, 10_000, 10_000, 16 * 2**20)
    assert limits.messages_per_second >= 1_000 and limits.batch_items >= 10_000
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.ids = 1  # type: ignore[misc]


# ---- messages per second (token bucket) ---------------------------------------------------


async def test_1000_messages_per_second_for_ten_seconds_pass_at_the_default(connect, clock):
    client = connect()
    for i in range(10_000):
        clock.advance(0.001)
        await client.send("ws:m:ping", {"id": i, "timestamp": 0})
    echoed = await client.drain(0)
    assert [m["data"]["id"] for m in echoed] == list(range(10_000))
    assert conn_of(client).limited == 0


async def test_the_default_burst_and_rate_pass_and_one_more_is_refused(connect, clock):
    client = connect()
    conn = conn_of(client)
    for i in range(5_000):  # a burst of a second's worth, at one instant
        await client.send("ws:m:benchmark", {"i": i})
    assert (conn.benchmarks, conn.limited) == (5_000, 0)
    tx = await client.command("Echo", {"value": 1})  # one more at the same instant
    message = await expect_limit(client, "ws:m:command-error", tx=tx, commandId="Echo")
    assert message == (
        "Limit exceeded: more than 5000 messages per second on this connection "
        "(MAX_MESSAGES_PER_SECOND); send more slowly"
    )
    clock.advance(1.0)
    for i in range(10_000):  # then the full rate for two seconds
        await client.send("ws:m:benchmark", {"i": i})
        clock.advance(1 / 5_000)
    assert (conn.benchmarks, conn.limited, conn.close_code) == (15_000, 1, None)


async def test_over_the_rate_every_message_gets_its_error_reply(connect, clock, db, fmt):
    client = connect(fmt, messages_per_second=10)
    db.set("Target", target("a"))
    q, _ = await client.subscribe("GetAllTargets", "Target")
    r = await client.report("CountAllTargets")
    await client.expect("ws:m:report-response")
    for i in range(8):  # the rest of the burst
        await client.ping(f"p{i}")
    conn = conn_of(client)
    assert conn.limited == 0

    tx = await client.query("GetAllTargets", "Target")
    await expect_limit(client, "ws:m:query-error", tx=tx, queryId="GetAllTargets")
    tx = await client.query("GetAllScenes", "Scene", event="ws:m:view")
    await expect_limit(client, "ws:m:view-error", tx=tx, viewId="GetAllScenes")
    tx = await client.report("CountTargets", {"name": "x"})
    await expect_limit(client, "ws:m:report-error", tx=tx, reportId="CountTargets")
    tx = await client.command("DeleteTargets", {"ids": ["a"]})
    await expect_limit(client, "ws:m:command-error", tx=tx, commandId="DeleteTargets")
    await client.event("SET", "Target", target("b"), tx="ev-1")
    await expect_limit(client, "ws:m:event-error", tx="ev-1", itemType="Target")
    batch = [{"changeType": "SET", "itemType": "Target", "item": target("c"), "tx": "ev-2"}]
    await client.send("ws:m:event-batch", batch)
    await expect_limit(client, "ws:m:event-error", tx=None, itemType=None)  # one for the batch
    await client.send("ws:m:query-window", {"tx": q, "window": {"offset": 0, "limit": 1}})
    await expect_limit(client, "ws:m:query-error", tx=q, queryId="GetAllTargets")
    await client.send("ws:m:ping", {"id": "dropped", "timestamp": 0})
    await client.send("ws:m:benchmark", {})
    await client.send_raw("myko:switch-to-msgpack")
    await client.send_raw("{not json" if fmt == codecs.JSON else b"\xc1")
    await client.nothing()
    assert conn.limited == 11 and conn.benchmarks == 0 and conn.bad_frames == 0
    assert set(db.tables["Target"]) == {"a"}  # nothing refused was applied

    # A cancel only releases: it is applied over the rate too.
    await client.send("ws:m:report-cancel", {"tx": r})
    assert r not in conn.requests and q in conn.requests
    await client.nothing()

    # The bucket refills: the connection works as before.
    clock.advance(1.0)
    await client.event("SET", "Target", target("b"))
    update = await client.expect("ws:m:query-response")
    assert (update["tx"], update["sequence"]) == (q, 1)
    await client.ping()
    assert conn.close_code is None


async def test_sustained_abuse_sets_close_code_1008_and_nothing_more_is_read(connect, clock):
    rate = 10
    client = connect(messages_per_second=rate)
    for i in range(rate):
        await client.ping(f"p{i}")
    conn = conn_of(client)
    for _ in range(rate * ABUSE_SECONDS):  # ten seconds' worth refused at once: not yet
        await client.send("ws:m:ping", {"id": "x", "timestamp": 0})
    assert conn.close_code is None
    tx = await client.command("Echo")
    await expect_limit(client, "ws:m:command-error", tx=tx)  # the last reply
    assert conn.close_code == CLOSE_POLICY == 1008
    assert conn.limited == rate * ABUSE_SECONDS + 1
    clock.advance(60)
    await client.send("ws:m:ping", {"id": "after", "timestamp": 0})
    await client.command("Echo")
    await client.nothing()  # the endpoint closes it; nothing more is handled


@pytest.mark.parametrize(
    ("times_the_rate", "closed_within"),
    [(2, (11.0, 13.0)), (11, (1.0, 1.3)), (1.05, None), (1.0, None)],
)
async def test_how_soon_a_client_over_the_rate_is_closed(
    connect, clock, times_the_rate, closed_within
):
    rate = 20
    client = connect(messages_per_second=rate)
    conn = conn_of(client)
    step = 1 / (rate * times_the_rate)
    start = clock.now
    for _ in range(int(60 / step)):  # a minute of it
        await client.send("ws:m:benchmark", {})
        if conn.close_code is not None:
            break
        clock.advance(step)
    if closed_within is None:
        assert conn.close_code is None
        assert conn.limited <= 0.05 * conn.benchmarks + rate
    else:
        assert conn.close_code == 1008
        low, high = closed_within
        assert low <= clock.now - start <= high, clock.now - start


async def test_a_burst_then_backing_off_is_forgiven(connect, clock):
    rate = 10
    client = connect(messages_per_second=rate)
    conn = conn_of(client)
    for _round in range(5):  # five bursts of five seconds' worth, a minute apart
        for _ in range(5 * rate):
            await client.send("ws:m:benchmark", {})
        clock.advance(60)
    assert conn.limited == 5 * 4 * rate and conn.close_code is None
    await client.ping()


# ---- live subscriptions ----------------------------------------------------------------------


async def test_subscriptions_over_the_limit_get_their_error(connect, fmt):
    client = connect(fmt, subscriptions=3)
    conn = conn_of(client)
    q, _ = await client.subscribe("GetAllTargets", "Target")
    _, _ = await client.subscribe("GetConnectedServer", "Server")  # counts until cancelled
    r = await client.report("CountAllTargets")
    await client.expect("ws:m:report-response")
    assert conn._subscription_count() == 3

    tx = await client.query("GetAllScenes", "Scene")
    message = await expect_limit(client, "ws:m:query-error", tx=tx, queryId="GetAllScenes")
    assert message == (
        "Limit exceeded: 3 live subscriptions on this connection (MAX_SUBSCRIPTIONS); "
        "cancel one first"
    )
    tx = await client.query("GetAllScenes", "Scene", event="ws:m:view")
    await expect_limit(client, "ws:m:view-error", tx=tx, viewId="GetAllScenes")
    tx = await client.report("CountAllScenes")
    await expect_limit(client, "ws:m:report-error", tx=tx, reportId="CountAllScenes")
    # At the limit, what adds no subscription still works: a duplicate subscribe is
    # ignored, a report with an active tx is replaced, commands run.
    await client.query("GetAllScenes", "Scene", tx=q)
    await client.nothing()
    await client.report("CountTargets", {"name": "x"}, tx=r)
    assert await client.expect("ws:m:report-response") == {"response": {"count": 0}, "tx": r}
    await client.command("Echo")
    await client.expect("ws:m:command-response")
    assert conn.limited == 3

    await client.send("ws:m:query-cancel", {"tx": q})
    tx, _ = await client.subscribe("GetAllScenes", "Scene")  # room again
    assert conn._subscription_count() == 3


async def test_10000_subscriptions_pass_at_the_default_and_one_more_is_refused(connect, clock):
    client = connect()
    for i in range(10_000):
        clock.advance(0.001)
        await client.query("GetTargetsByQuery", "Target", {"name": f"n{i % 100}"})
        await client.expect("ws:m:query-response")
    conn = conn_of(client)
    assert conn._subscription_count() == 10_000 and conn.limited == 0
    clock.advance(0.001)
    await client.report("CountAllTargets")
    await expect_limit(client, "ws:m:report-error", reportId="CountAllTargets")


# ---- commands in flight ---------------------------------------------------------------------


async def test_commands_in_flight_over_the_limit_are_refused_at_once(connect, db, fmt):
    client = connect(fmt, commands_in_flight=3)
    conn = conn_of(client)
    backend = conn.backend
    assert conn._work.maxsize == 3  # the queue itself is bounded
    backend.command_gate = asyncio.Event()
    held = [await client.command("CreateTargets", {"ids": [f"t{i}"]}) for i in range(2)]
    await client.event("SET", "Target", target("e"))
    await settle()
    assert len(backend.commands_run) == 1  # one running, two waiting

    tx = await client.command("Echo")
    message = await expect_limit(client, "ws:m:command-error", tx=tx, commandId="Echo")
    assert message == (
        "Limit exceeded: 3 commands and events already waiting or running on this "
        "connection (MAX_COMMANDS_IN_FLIGHT); wait for their responses"
    )
    await client.event("SET", "Target", target("x"), tx="ev-x")
    await expect_limit(client, "ws:m:event-error", tx="ev-x", itemType="Target")
    await client.send("ws:m:event-batch", [{"changeType": "SET", "itemType": "Target"}])
    await expect_limit(client, "ws:m:event-error", tx=None)
    await client.ping()  # not held up
    assert conn.limited == 3 and conn._work.qsize() == 2

    backend.command_gate.set()
    for tx in held:
        assert (await client.expect("ws:m:command-response"))["tx"] == tx
    await client.barrier()
    assert set(db.tables["Target"]) == {"t0", "t1", "e"}  # the refused ones never ran
    assert conn._in_flight == 0


async def test_1000_commands_in_flight_pass_at_the_default(connect, clock):
    client = connect()
    conn = conn_of(client)
    conn.backend.command_gate = asyncio.Event()
    txs = [await client.command("Echo", {"value": i}) for i in range(1_000)]
    tx = await client.command("Echo")
    await expect_limit(client, "ws:m:command-error", tx=tx)
    conn.backend.command_gate.set()
    responses = [await client.expect("ws:m:command-response") for _ in txs]
    assert [r["tx"] for r in responses] == txs
    assert conn.limited == 1 and conn._in_flight == 0


# ---- items in one event batch -----------------------------------------------------------------


def batch(n: int, prefix: str = "b") -> list[dict]:
    return [
        {"changeType": "SET", "itemType": "Target", "item": target(f"{prefix}{i}"), "tx": f"e{i}"}
        for i in range(n)
    ]


async def test_an_event_batch_over_the_limit_is_refused_whole(connect, db, fmt):
    client = connect(fmt, batch_items=5)
    await client.send("ws:m:event-batch", batch(6))
    message = await expect_limit(client, "ws:m:event-error", tx=None, itemType=None)
    assert message == (
        "Limit exceeded: an event batch of 6 events, over 5 (MAX_BATCH_ITEMS); none was "
        "applied, send it in parts"
    )
    await client.nothing()
    assert db.tables["Target"] == {}
    await client.send("ws:m:event-batch", batch(5))
    await client.barrier()
    assert len(db.tables["Target"]) == 5 and conn_of(client).limited == 1


async def test_a_batch_of_10000_passes_at_the_default_and_10001_is_refused(connect, db):
    client = connect(codecs.MSGPACK)
    q, _ = await client.subscribe("GetAllTargets", "Target")
    await client.send("ws:m:event-batch", batch(10_000))
    update = await client.expect("ws:m:query-response")
    assert (update["tx"], len(update["upserts"]), update["totalCount"]) == (q, 10_000, 10_000)
    await client.send("ws:m:event-batch", batch(10_001, "c"))
    await expect_limit(client, "ws:m:event-error", tx=None)
    assert len(db.tables["Target"]) == 10_000 and conn_of(client).limited == 1


# ---- ids in one request --------------------------------------------------------------------


async def test_ids_over_the_limit_in_any_request_are_refused(connect, db, fmt):
    client = connect(fmt, ids=3)
    db.set("Target", *(target(i) for i in "abcd"))
    four, three = list("abcd"), list("abc")

    tx = await client.query("GetTargetsByIds", "Target", {"ids": four})
    message = await expect_limit(client, "ws:m:query-error", tx=tx, queryId="GetTargetsByIds")
    assert message == 'Limit exceeded: 4 ids in "ids", over 3 (MAX_IDS); ask in parts'
    tx = await client.query("GetTargetsByIds", "Target", {"ids": four}, event="ws:m:view")
    await expect_limit(client, "ws:m:view-error", tx=tx, viewId="GetTargetsByIds")
    in_four = {"id": {"kind": "in", "value": four}}
    tx = await client.query("GetTargetsByQuery", "Target", in_four)
    message = await expect_limit(client, "ws:m:query-error", tx=tx)
    assert message == (
        'Limit exceeded: 4 values in the "in" filter of "id", over 3 (MAX_IDS); ask in parts'
    )
    tx = await client.report("CountTargets", {"name": {"kind": "in", "value": four}})
    await expect_limit(client, "ws:m:report-error", tx=tx, reportId="CountTargets")
    tx = await client.command("DeleteTargets", {"ids": four})
    await expect_limit(client, "ws:m:command-error", tx=tx, commandId="DeleteTargets")
    await client.barrier()
    assert len(db.tables["Target"]) == 4  # nothing deleted
    assert conn_of(client).limited == 5 and conn_of(client)._subscription_count() == 0

    _, by_ids = await client.subscribe("GetTargetsByIds", "Target", {"ids": three})
    assert by_ids["totalCount"] == 3
    _, by_in = await client.subscribe(
        "GetTargetsByQuery", "Target", {"id": {"kind": "in", "value": three}}
    )
    assert by_in["totalCount"] == 3
    tx = await client.command("DeleteTargets", {"ids": three})
    await client.expect("ws:m:query-response")
    await client.expect("ws:m:query-response")
    assert await client.expect("ws:m:command-response") == {
        "response": {"deletedCount": 3},
        "tx": tx,
    }


async def test_10000_ids_pass_at_the_default_and_10001_are_refused(connect, db):
    client = connect(codecs.MSGPACK)
    db.set("Target", *(target(f"t{i}") for i in range(10_000)))
    ids = [f"t{i}" for i in range(10_000)]
    _, data = await client.subscribe("GetTargetsByIds", "Target", {"ids": ids})
    assert data["totalCount"] == 10_000
    tx = await client.query("GetTargetsByIds", "Target", {"ids": [*ids, "one more"]})
    await expect_limit(client, "ws:m:query-error", tx=tx)
    tx = await client.command("DeleteTargets", {"ids": ids})
    await client.expect("ws:m:query-response")
    assert await client.expect("ws:m:command-response") == {
        "response": {"deletedCount": 10_000},
        "tx": tx,
    }
    assert conn_of(client).limited == 1
