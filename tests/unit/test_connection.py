"""The myko protocol (docs/protocol.md) against `server.connection.Connection` directly: no
Django, no database, no socket, in well under a second.

The database side is `tests.support.memory` (an in-memory Backend and Hub on the real
engine and sequencer). The client is the suite's one WebSocket client,
`tests.support.wsclient.WsClient`, over its `ConnectionTransport`: it sends and decodes
frames in its format with json, msgpack and cbor2 directly, not with the package's codecs;
the core tests run in JSON, MessagePack and CBOR. The same behaviour over a real
database and the ASGI stack is tested in tests/asgi/. Section comments name the sections
of docs/protocol.md.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import msgpack
import pytest

from myko_django.server.connection import Connection
from myko_django.wire import codecs
from myko_django.wire import envelope as ev
from tests.support.memory import MemoryBackend, MemoryDatabase, MemoryHub, target
from tests.support.wsclient import ConnectionTransport, WsClient

ROOT = Path(__file__).resolve().parents[2]


def row(item: dict, item_type: str = "Target") -> dict:
    return {"item": item, "itemType": item_type}


def ids_of(response: dict) -> dict[str, dict]:
    return {u["item"]["id"]: u["item"] for u in response["upserts"]}


def window_order(ids: list[str], total: int, window: dict) -> list[dict]:
    return [{"kind": "windowOrder", "ids": ids, "total_count": total, "window": window}]


async def settle(turns: int = 40) -> None:
    """Let the loop run what the last message set off (tasks, scheduled flushes)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def transport_of(client: WsClient) -> ConnectionTransport:
    assert isinstance(client.transport, ConnectionTransport), client.transport
    return client.transport


def conn_of(client: WsClient) -> Connection:
    """The Connection a client of `connect` drives."""
    return transport_of(client).conn


def frames_of(client: WsClient) -> list[str | bytes]:
    """The frames its Connection has sent that the client has not received yet."""
    return transport_of(client).frames


@pytest.fixture(params=[codecs.JSON, codecs.MSGPACK, codecs.CBOR])
def fmt(request) -> str:
    return request.param


@pytest.fixture
def db() -> MemoryDatabase:
    return MemoryDatabase()


@pytest.fixture
def backend(db) -> MemoryBackend:
    return MemoryBackend(db)


@pytest.fixture
def hub(db):
    h = MemoryHub(db)
    yield h
    h.close()


@pytest.fixture
async def connect(hub, backend):
    """Open connections (`connect(fmt, **Connection options)`); closed at the end."""
    opened: list[WsClient] = []

    def open_one(f: str = codecs.JSON, **kw: Any) -> WsClient:
        peer = WsClient(ConnectionTransport(hub, backend, **kw), f)
        opened.append(peer)
        return peer

    yield open_one
    for peer in opened:
        await peer.close()


@pytest.fixture
async def client(connect, fmt) -> WsClient:
    """A client in each format, for what the format may change."""
    return connect(fmt)


@pytest.fixture
async def peer(connect) -> WsClient:
    """A JSON client, for what no format changes."""
    return connect(codecs.JSON)


# ---- Queries ------------------------------------------------------------------------------


async def test_empty_subscribe_gives_exactly_one_empty_snapshot(client):
    tx = await client.query("GetAllTargets", "Target")
    assert await client.recv() == {
        "event": "ws:m:query-response",
        "data": {"tx": tx, "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0},
    }
    await client.nothing()


async def test_snapshot_then_diffs(client, db):
    db.set("Target", target("a", "na"), target("b", "nb"))
    tx, first = await client.subscribe("GetAllTargets", "Target")
    assert ids_of(first) == {"a": target("a", "na"), "b": target("b", "nb")}
    assert first["deletes"] == [] and first["totalCount"] == 2

    await client.event("SET", "Target", {"id": "c", "name": "nc"})  # defaults filled
    set_c = await client.expect("ws:m:query-response")
    assert set_c == {
        "tx": tx,
        "sequence": 1,
        "upserts": [row(target("c", "nc"))],
        "deletes": [],
        "totalCount": 3,
    }
    db.set("Target", target("a", "renamed"))  # from elsewhere: the whole item again
    renamed = await client.expect("ws:m:query-response")
    assert (renamed["sequence"], renamed["upserts"]) == (2, [row(target("a", "renamed"))])
    assert renamed["totalCount"] == 3

    await client.event("DEL", "Target", {"id": "b"})
    deleted = await client.expect("ws:m:query-response")
    assert (deleted["sequence"], deleted["upserts"], deleted["deletes"]) == (3, [], ["b"])
    assert deleted["totalCount"] == 2
    await client.nothing()


async def test_identical_set_del_of_missing_id_and_changes_elsewhere_send_nothing(peer, db):
    db.set("Target", target("a", "na", "x"))
    await peer.subscribe("GetTargetsByQuery", "Target", params={"category": "x"})
    db.set("Target", target("a", "na", "x"))  # same item again
    await peer.event("DEL", "Target", {"id": "missing"})
    db.set("Target", target("b", "nb", "y"))  # outside the query
    db.set("Scene", {"id": "s", "name": "s"})  # another type
    await peer.nothing()


async def test_one_commit_is_one_message_per_subscription(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    ctx = await client.command("CreateTargets", {"ids": ["a", "b", "c"]})
    update = await client.expect("ws:m:query-response")
    assert (update["tx"], update["sequence"], set(ids_of(update))) == (tx, 1, {"a", "b", "c"})
    assert await client.expect("ws:m:command-response") == {"response": {"created": 3}, "tx": ctx}


async def test_derived_queries_by_ids_and_by_query(peer, db):
    db.set(
        "Target",
        target("a", "alpha", "x"),
        target("b", "beta", "x"),
        target("c", "gamma", "y"),
        target("d", "delta", None),
    )
    _, by_ids = await peer.subscribe("GetTargetsByIds", "Target", params={"ids": ["a", "c", "zz"]})
    assert set(ids_of(by_ids)) == {"a", "c"} and by_ids["totalCount"] == 2
    cases = [
        ({"category": "x"}, {"a", "b"}),
        ({"category": None, "name": "gamma"}, {"c"}),  # null matches anything
        ({}, {"a", "b", "c", "d"}),
        ({"seq": 0, "serviceId": "s", "createdAt": "x"}, {"a", "b", "c", "d"}),  # no filters
        ({"category": {"kind": "in", "value": ["y", "z"]}}, {"c"}),
        ({"category": {"kind": "in", "value": []}}, set()),
        ({"name": {"kind": "startsWith", "value": "g"}}, {"c"}),
        ({"name": {"kind": "contains", "value": "lt"}}, {"d"}),
        ({"id": {"kind": "range", "value": {"min": "b", "max": "c"}}}, {"b", "c"}),
        ({"category": {"kind": "eq", "value": "x"}, "id": "b"}, {"b"}),
    ]
    for params, expected in cases:
        _, data = await peer.subscribe("GetTargetsByQuery", "Target", params=params)
        assert set(ids_of(data)) == expected, params
        assert data["totalCount"] == len(expected)
    # A live by-ids query sees an id it names appear later.
    tx, _ = await peer.subscribe("GetTargetsByIds", "Target", params={"ids": ["later"]})
    db.set("Target", target("later"))
    data = await peer.expect("ws:m:query-response")
    assert (data["tx"], set(ids_of(data))) == (tx, {"later"})


async def test_query_errors(client):
    cases = [
        ("Nope", "Target", {}, "Query handler not found: Nope"),
        ("GetAllTargets", "Scene", {}, "GetAllTargets returns Target items, not 'Scene'"),
        ("GetTargetsByIds", "Target", {"ids": "a"}, '"ids" must be a list of strings'),
        ("GetTargetsByQuery", "Target", {"name": 5}, "name"),
        ("GetTargetsByQuery", "Target", {"name": {"kind": "regex", "value": "."}}, "name"),
    ]
    for query_id, item_type, params, message in cases:
        tx = await client.query(query_id, item_type, params)
        data = await client.expect("ws:m:query-error")
        assert set(data) == {"tx", "queryId", "message"}
        assert (data["tx"], data["queryId"]) == (tx, query_id)
        assert message in data["message"], data
    tx = await client.query("GetAllTargets", "Target", window={"offset": -1, "limit": 2})
    data = await client.expect("ws:m:query-error")
    assert (data["tx"], data["queryId"]) == (tx, "GetAllTargets") and "offset" in data["message"]
    # The upstream client cancels after a query-error: no reply. The tx is free again.
    await client.send("ws:m:query-cancel", {"tx": tx})
    await client.nothing()
    await client.subscribe("GetAllTargets", "Target", tx=tx)
    assert conn_of(client).bad_frames == 0


async def test_queryitemtype_may_be_absent(peer):
    await peer.subscribe("GetAllTargets", None)


# ---- Queries: duplicates, cancels ---------------------------------------------------------


async def test_duplicate_subscribe_with_an_active_tx_is_ignored(client, db):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.query("GetAllTargets", "Target", tx=tx)
    await client.query("GetTargetsByQuery", "Target", params={"seq": 0, "category": "x"}, tx=tx)
    await client.nothing()
    db.set("Target", target("a"))
    data = await client.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"]) == (tx, 1)  # not reset


async def test_back_to_back_duplicates_on_a_cold_store_answer_once(peer, hub):
    """The upstream peer sends a subscription made before the socket opened twice
    (the second with seq: 0), before the store has loaded."""
    tx = await peer.query("GetAllTargets", "Target")
    await peer.query("GetAllTargets", "Target", params={"seq": 0}, tx=tx)
    assert len(await peer.drain()) == 1
    assert hub.loads == ["Target"]


async def test_cancel_then_set_sends_nothing_and_any_cancel_cancels_the_tx(peer, db, hub):
    q, _ = await peer.subscribe("GetAllTargets", "Target")
    v, _ = await peer.subscribe("GetAllTargets", "Target", event="ws:m:view")
    r = await peer.report("CountAllTargets")
    await peer.expect("ws:m:report-response")
    await peer.send("ws:m:query-cancel", {"tx": q})
    await peer.send("ws:m:report-cancel", {"tx": v})  # any cancel cancels whatever holds tx
    await peer.send("ws:m:view-cancel", {"tx": r})
    db.set("Target", target("a"))
    await peer.nothing()
    assert hub.engine.stats()["subscriptions"] == 0


async def test_cancel_and_window_of_unknown_tx_send_nothing(peer):
    for event in ("ws:m:query-cancel", "ws:m:view-cancel", "ws:m:report-cancel"):
        await peer.send(event, {"tx": "unknown"})
    for event in ("ws:m:query-window", "ws:m:view-window"):
        await peer.send(event, {"tx": "unknown", "window": {"offset": 0, "limit": 1}})
    await peer.nothing()
    assert conn_of(peer).bad_frames == 0


async def test_cancel_while_the_store_loads(peer, hub, db):
    hub.load_gate = asyncio.Event()
    tx = await peer.query("GetAllTargets", "Target")
    await peer.send("ws:m:query-cancel", {"tx": tx})
    hub.load_gate.set()
    await peer.nothing()
    db.set("Target", target("a"))
    await peer.nothing()
    assert hub.engine.stats()["subscriptions"] == 0


# ---- Windows ------------------------------------------------------------------------------


async def test_windowed_subscribe_and_moving_the_window(client, db):
    db.set("Target", *(target(i, f"n{i}") for i in ("1", "10", "2", "3", "9")))
    w1 = {"offset": 0, "limit": 2}
    tx, first = await client.subscribe("GetAllTargets", "Target", window=w1)
    assert sorted(ids_of(first)) == ["1", "10"]  # code-point order: "10" < "2" < "9"
    assert first["deletes"] == [] and first["totalCount"] == 5 and first["window"] == w1
    assert first["changes"] == window_order(["1", "10"], 5, w1)

    await client.send("ws:m:query-window", {"tx": tx, "window": dict(w1)})
    await client.nothing()  # same window: nothing

    w2 = {"offset": 2, "limit": 2}
    await client.send("ws:m:query-window", {"tx": tx, "window": w2})
    moved = await client.expect("ws:m:query-response")
    assert moved["sequence"] == 1 and sorted(moved["deletes"]) == ["1", "10"]
    assert ids_of(moved) == {"2": target("2", "n2"), "3": target("3", "n3")}
    assert moved["totalCount"] == 5 and moved["window"] == w2
    assert moved["changes"] == window_order(["2", "3"], 5, w2)

    db.set("Target", target("9", "renamed"))  # outside the page, same total: nothing
    await client.nothing()

    db.set("Target", target("0", "n0"))  # before the page: "10" enters, "3" leaves
    shifted = await client.expect("ws:m:query-response")
    assert shifted["sequence"] == 2 and shifted["deletes"] == ["3"]
    assert ids_of(shifted) == {"10": target("10", "n10")} and shifted["totalCount"] == 6
    assert shifted["changes"] == window_order(["10", "2"], 6, w2)

    db.set("Target", target("2", "two"))  # on the page: the whole item
    changed = await client.expect("ws:m:query-response")
    assert changed["sequence"] == 3 and changed["upserts"] == [row(target("2", "two"))]
    assert changed["deletes"] == [] and changed["changes"] == window_order(["10", "2"], 6, w2)

    db.delete("Target", "10")  # the next row moves onto the page
    refilled = await client.expect("ws:m:query-response")
    assert refilled["sequence"] == 4 and refilled["deletes"] == ["10"]
    assert refilled["upserts"] == [row(target("3", "n3"))] and refilled["totalCount"] == 5

    await client.send("ws:m:query-window", {"tx": tx, "window": None})
    unwindowed = await client.expect("ws:m:query-response")
    assert unwindowed["sequence"] == 5 and set(ids_of(unwindowed)) == {"0", "1", "9"}
    assert unwindowed["deletes"] == [] and unwindowed["totalCount"] == 5
    assert "window" not in unwindowed and "changes" not in unwindowed


async def test_window_past_the_end_and_window_added_later(peer, db):
    db.set("Target", target("a"), target("b"), target("c"))
    w = {"offset": 5, "limit": 10}
    _, data = await peer.subscribe("GetAllTargets", "Target", window=w)
    assert data["upserts"] == [] and data["totalCount"] == 3
    assert data["changes"] == window_order([], 3, w)
    plain, _ = await peer.subscribe("GetAllTargets", "Target")
    w2 = {"offset": 1, "limit": 1}
    await peer.send("ws:m:query-window", {"tx": plain, "window": w2})
    data = await peer.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"]) == (plain, 1)
    assert sorted(data["deletes"]) == ["a", "c"] and data["upserts"] == []
    assert data["changes"] == window_order(["b"], 3, w2)


async def test_bad_window_update_is_an_error_and_leaves_the_subscription(peer, db):
    tx, _ = await peer.subscribe("GetAllTargets", "Target", window={"offset": 0, "limit": 1})
    await peer.send("ws:m:query-window", {"tx": tx, "window": {"offset": "x", "limit": 1}})
    data = await peer.expect("ws:m:query-error")
    assert (data["tx"], data["queryId"]) == (tx, "GetAllTargets")
    db.set("Target", target("a"))
    data = await peer.expect("ws:m:query-response")
    assert (data["sequence"], data["window"]) == (1, {"offset": 0, "limit": 1})


async def test_window_update_while_the_store_loads_applies_to_the_snapshot(peer, db, hub):
    db.set("Target", target("a"), target("b"))
    hub.load_gate = asyncio.Event()
    w = {"offset": 1, "limit": 1}
    tx = await peer.query("GetAllTargets", "Target")
    await peer.send("ws:m:query-window", {"tx": tx, "window": w})
    await peer.nothing()
    hub.load_gate.set()
    data = await peer.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"], list(ids_of(data))) == (tx, 0, ["b"])
    assert data["window"] == w and data["changes"] == window_order(["b"], 2, w)


async def test_bad_window_while_the_store_loads_leaves_the_subscription(connect, db, hub):
    client = connect(codecs.JSON)
    hub.load_gate = asyncio.Event()
    w = {"offset": 0, "limit": 5}
    tx = await client.query("GetAllTargets", "Target", window=w)
    await client.send("ws:m:query-window", {"tx": tx, "window": {"offset": -1, "limit": 1}})
    hub.load_gate.set()
    # As on a loaded store: an error for the bad window, and the subscription goes on.
    events = sorted(m["event"] for m in await client.drain())
    assert events == ["ws:m:query-error", "ws:m:query-response"]
    db.set("Target", target("a"))
    data = await client.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"], data["window"]) == (tx, 1, w)


async def test_cancelling_a_by_ids_query_next_to_an_empty_one(connect, hub):
    client = connect(codecs.JSON)
    a, _ = await client.subscribe("GetTargetsByIds", "Target", params={"ids": ["a"]})
    empty, _ = await client.subscribe("GetTargetsByIds", "Target", params={"ids": []})
    await client.send("ws:m:query-cancel", {"tx": a})
    await client.send("ws:m:query-cancel", {"tx": empty})  # KeyError, counted as bad
    assert conn_of(client).bad_frames == 0
    assert hub.engine.stats()["live_results"] == 0  # the empty result leaked


async def test_closing_after_a_by_ids_query_and_an_empty_one(connect, hub):
    c = connect()
    await c.subscribe("GetTargetsByIds", "Target", params={"ids": ["a"]})
    await c.subscribe("GetTargetsByQuery", "Target", params={"id": {"kind": "in", "value": []}})
    await c.subscribe("GetAllTargets", "Target")
    try:
        await conn_of(c).close()
        raised = None
    except KeyError as exc:  # the worker is not stopped, GetAllTargets stays subscribed
        raised = exc
    assert raised is None and hub.engine.stats()["subscriptions"] == 0


# ---- views --------------------------------------------------------------------------------


async def test_views_mirror_queries(client, db):
    db.set("Target", target("a"), target("b"))
    tx, first = await client.subscribe("GetAllTargets", "Target", event="ws:m:view")
    assert set(ids_of(first)) == {"a", "b"}
    db.set("Target", target("c"))
    data = await client.expect("ws:m:view-response")
    assert (data["tx"], data["sequence"], set(ids_of(data))) == (tx, 1, {"c"})
    w = {"offset": 0, "limit": 1}
    await client.send("ws:m:view-window", {"tx": tx, "window": w})
    data = await client.expect("ws:m:view-response")
    assert data["sequence"] == 2 and data["changes"] == window_order(["a"], 3, w)
    await client.query("GetAllTargets", "Target", event="ws:m:view", tx=tx)  # duplicate: ignored
    await client.send("ws:m:view-cancel", {"tx": tx})
    db.set("Target", target("0"))
    await client.nothing()

    bad = await client.query("Nope", "Target", event="ws:m:view")
    assert await client.expect("ws:m:view-error") == {
        "tx": bad,
        "viewId": "Nope",
        "message": "Query handler not found: Nope",
    }
    await client.send("ws:m:view-window", {"tx": tx, "window": {"offset": -1, "limit": 1}})
    await client.nothing()  # cancelled: an unknown tx


async def test_view_window_error_names_the_view(peer):
    tx, _ = await peer.subscribe(
        "GetAllTargets", "Target", event="ws:m:view", window={"offset": 0, "limit": 1}
    )
    await peer.send("ws:m:view-window", {"tx": tx, "window": {"offset": 0, "limit": "x"}})
    data = await peer.expect("ws:m:view-error")
    assert (data["tx"], data["viewId"]) == (tx, "GetAllTargets") and "limit" in data["message"]


# ---- Reports ------------------------------------------------------------------------------


async def test_count_report_is_sent_only_when_the_value_changes(client, db):
    tx = await client.report("CountAllTargets")
    assert await client.recv() == {
        "event": "ws:m:report-response",
        "data": {"response": {"count": 0}, "tx": tx},
    }
    db.set("Target", target("a"))
    assert await client.expect("ws:m:report-response") == {"response": {"count": 1}, "tx": tx}
    db.set("Target", target("a", "renamed"))  # recomputed to the same value
    db.delete("Target", "missing")
    await client.nothing()
    db.delete("Target", "a")
    assert await client.expect("ws:m:report-response") == {"response": {"count": 0}, "tx": tx}


async def test_count_with_params_by_id_and_user_reports(client, db):
    db.set("Target", target("a", "na", "x"), target("b", "nb", "y"))
    count = await client.report("CountTargets", {"category": "x"})
    assert await client.expect("ws:m:report-response") == {"response": {"count": 1}, "tx": count}
    by_id = await client.report("GetTargetById", {"id": "c"})
    assert await client.expect("ws:m:report-response") == {"response": None, "tx": by_id}
    names = await client.report("TargetNames")
    assert await client.expect("ws:m:report-response") == {"response": ["na", "nb"], "tx": names}

    db.set("Target", target("c", "nc", "x"))
    got = {d["tx"]: d["response"] for d in [m["data"] for m in await client.drain()]}
    assert got == {count: {"count": 2}, by_id: target("c", "nc", "x"), names: ["na", "nb", "nc"]}
    db.delete("Target", "c")
    got = {d["tx"]: d["response"] for d in [m["data"] for m in await client.drain()]}
    assert got == {count: {"count": 1}, by_id: None, names: ["na", "nb"]}


async def test_second_report_with_the_same_tx_replaces_and_resends(peer, db):
    db.set("Target", target("a"), target("b"))
    tx = await peer.report("GetTargetById", {"id": "a"})
    assert (await peer.expect("ws:m:report-response"))["response"]["id"] == "a"
    await peer.report("GetTargetById", {"id": "a"}, tx=tx)  # the same again: resent
    assert (await peer.expect("ws:m:report-response"))["response"]["id"] == "a"
    await peer.report("GetTargetById", {"id": "b"}, tx=tx)
    assert (await peer.expect("ws:m:report-response"))["response"]["id"] == "b"
    db.set("Target", target("a", "changed"))  # the replaced one is gone
    await peer.nothing()
    db.set("Target", target("b", "changed"))
    assert (await peer.expect("ws:m:report-response"))["response"]["name"] == "changed"


async def test_report_errors(peer):
    cases = [
        ("Nope", {}, "Report handler not found: Nope"),
        ("GetTargetById", {}, '"id" must be a string'),
        ("CountTargets", {"name": 1}, "name"),
        ("Explode", {}, "Explode failed: boom"),
    ]
    for report_id, params, message in cases:
        tx = await peer.report(report_id, params)
        data = await peer.expect("ws:m:report-error")
        assert set(data) == {"tx", "reportId", "message"}
        assert (data["tx"], data["reportId"]) == (tx, report_id)
        assert message in data["message"], data
    await peer.nothing()


# ---- Commands -----------------------------------------------------------------------------


async def test_command_success_shapes(client, db):
    db.set("Target", target("t"))
    tx = await client.command("RenameTarget", {"id": "t", "name": "x"})
    assert await client.recv() == {
        "event": "ws:m:command-response",
        "data": {"response": None, "tx": tx},
    }
    tx = await client.command("Echo", {"value": {"nested": [1, 2.5, True, None, "s"]}})
    assert await client.expect("ws:m:command-response") == {
        "response": {"nested": [1, 2.5, True, None, "s"]},
        "tx": tx,
    }
    assert db.tables["Target"]["t"]["name"] == "x"


async def test_command_errors_and_rollback(client, db):
    tx_sub, _ = await client.subscribe("GetAllTargets", "Target")
    cases = [
        ("Nope", {}, "Command handler not found: Nope"),
        ("DeleteTarget", {"id": "missing"}, "Target not found: missing"),
        ("RenameTarget", {}, "RenameTarget:"),
        ("FailAfterWrite", {"id": "x"}, "failed after writing x"),
    ]
    for command_id, params, message in cases:
        tx = await client.command(command_id, params)
        data = await client.expect("ws:m:command-error")
        assert set(data) == {"tx", "commandId", "message"}
        assert (data["tx"], data["commandId"]) == (tx, command_id)
        assert message in data["message"], data
    assert db.log == [] and db.tables["Target"] == {}  # nothing of it committed
    await client.nothing()


async def test_derived_delete_commands(peer, db):
    db.set("Target", target("a"), target("b"))
    tx = await peer.command("DeleteTarget", {"id": "a"})
    assert await peer.expect("ws:m:command-response") == {"response": {"deleted": True}, "tx": tx}
    tx = await peer.command("DeleteTargets", {"ids": ["b", "missing"]})
    assert await peer.expect("ws:m:command-response") == {
        "response": {"deletedCount": 1},
        "tx": tx,
    }
    assert db.tables["Target"] == {}


@pytest.mark.parametrize("push", [True, False], ids=["pushed", "log-only"])
async def test_command_response_comes_after_the_updates_it_caused(client, connect, hub, db, push):
    """docs/protocol.md, "Read-your-writes": every update of this client's queries, views
    and reports first.
    `log-only`: the hub hears of the commit only by reading the log (a silent doorbell),
    so the updates can only come from the connection's catch_up before the response."""
    db.set("Target", target("z"))
    other = connect()
    other_tx, _ = await other.subscribe("GetAllTargets", "Target")
    q, _ = await client.subscribe("GetAllTargets", "Target")
    v, _ = await client.subscribe(
        "GetTargetsByQuery", "Target", params={"category": "c"}, event="ws:m:view"
    )
    r1 = await client.report("CountAllTargets")
    r2 = await client.report("GetTargetById", {"id": "a"})
    r3 = await client.report("TargetNames")
    assert len(await client.drain()) == 3
    hub.push = push
    tx = await client.command("CreateTargets", {"ids": ["a", "b"], "category": "c"})
    seen: dict[str, list] = {}
    while True:
        message = await client.recv()
        if message["event"] == "ws:m:command-response":
            assert message["data"] == {"response": {"created": 2}, "tx": tx}
            break
        seen.setdefault(message["data"]["tx"], []).append(message["data"])
    assert set(seen) == {q, v, r1, r2, r3}
    for sub in (q, v):
        assert [d["sequence"] for d in seen[sub]] == [1]
        assert set(ids_of(seen[sub][0])) == {"a", "b"}
    assert [d["response"] for d in seen[r1]] == [{"count": 3}]
    assert [d["response"]["id"] for d in seen[r2]] == ["a"]
    assert [d["response"] for d in seen[r3]] == [["n", "na", "nb"]]
    await client.nothing()
    # The other connection's subscription got it too (once).
    data = await other.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"], set(ids_of(data))) == (other_tx, 1, {"a", "b"})
    await other.nothing()


async def test_command_response_waits_for_a_snapshot_still_loading(peer, hub):
    hub.load_gate = asyncio.Event()
    q = await peer.query("GetAllTargets", "Target")
    tx = await peer.command("CreateTargets", {"ids": ["a"]})
    await peer.nothing()  # the store still loads: no response yet
    hub.load_gate.set()
    snapshot = await peer.expect("ws:m:query-response")
    assert (snapshot["tx"], snapshot["sequence"], set(ids_of(snapshot))) == (q, 0, {"a"})
    assert await peer.expect("ws:m:command-response") == {"response": {"created": 1}, "tx": tx}
    await peer.nothing()


async def test_commands_run_in_order_while_pings_and_cancels_are_not_held_up(peer, backend, db):
    q, _ = await peer.subscribe("GetAllTargets", "Target")
    backend.command_gate = asyncio.Event()
    first = await peer.command("CreateTargets", {"ids": ["a"]})
    second = await peer.command("RenameTarget", {"id": "a", "name": "renamed"})
    await peer.ping("during")  # answered while the first command is held
    await peer.send("ws:m:query-cancel", {"tx": q})
    await settle()
    assert backend.commands_run == [("CreateTargets", first)]  # one at a time
    backend.command_gate.set()
    # In arrival order (the second sees the first's write); the cancel came first.
    assert await peer.expect("ws:m:command-response") == {"response": {"created": 1}, "tx": first}
    assert await peer.expect("ws:m:command-response") == {"response": None, "tx": second}
    assert db.tables["Target"]["a"]["name"] == "renamed"
    await peer.nothing()


async def test_a_command_result_json_cannot_carry_is_a_command_error(connect):
    json_client = connect(codecs.JSON)
    await json_client.command("Echo")
    await json_client.expect("ws:m:command-response")
    conn_of(json_client).backend = _NaNBackend(conn_of(json_client).backend)
    tx = await json_client.command("Echo")
    data = await json_client.expect("ws:m:command-error")
    assert (data["tx"], data["commandId"]) == (tx, "Echo")
    assert "cannot be sent as json" in data["message"]
    await json_client.ping()


class _NaNBackend:
    """A backend whose commands all return NaN (no JSON for it; a client cannot send it)."""

    def __init__(self, inner: MemoryBackend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def run_command(self, *args: Any, **kwargs: Any) -> tuple[Any, int]:
        _, position = await self.inner.run_command(*args, **kwargs)
        return float("nan"), position


# ---- Events -------------------------------------------------------------------------------


async def test_client_events_reach_every_subscriber(client, connect, db):
    other = connect(codecs.MSGPACK)
    tx_other, _ = await other.subscribe("GetAllTargets", "Target")
    await client.event(
        "SET",
        "Target",
        {"id": "a", "name": "na", "unknownKey": 1},
        createdAt="2024-01-01T00:00:00Z",
        tx="e1",
        sourceId=None,
        options={"preventPersist": True},
    )
    await client.nothing()  # no acknowledgement
    assert db.tables["Target"] == {"a": target("a", "na")}  # unknown keys dropped
    data = await other.expect("ws:m:query-response")
    assert (data["tx"], data["upserts"]) == (tx_other, [row(target("a", "na"))])


async def test_rejected_events_get_event_errors_and_valid_ones_commit(client, db):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    batch = [
        {"changeType": "SET", "itemType": "Target", "item": {"id": "a", "name": "na"}},
        {"changeType": "SET", "itemType": "Nope", "item": {"id": "x"}, "tx": "bad-type"},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "b", "name": 5}, "tx": "bad"},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "c"}},
        {"changeType": "DEL", "itemType": "Target", "item": {"id": "a"}},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "d", "name": "nd"}},
        "not an event",
    ]
    await client.send("ws:m:event-batch", batch)
    messages = await client.drain()
    errors = [m["data"] for m in messages if m["event"] == "ws:m:event-error"]
    assert [(e["tx"], e["itemType"]) for e in errors] == [
        ("bad-type", "Nope"),
        ("bad", "Target"),
        (None, "Target"),
        (None, None),
    ]
    assert errors[0]["message"] == "Unknown item type: Nope (known: Scene, Target)"
    assert "Target.name must be a string" in errors[1]["message"]
    assert "Target.name is required" in errors[2]["message"]
    # The valid ones committed together, in order: one update, a's SET and DEL folded.
    updates = [m["data"] for m in messages if m["event"] == "ws:m:query-response"]
    assert len(updates) == 1
    assert (updates[0]["tx"], updates[0]["sequence"], set(ids_of(updates[0]))) == (tx, 1, {"d"})
    assert updates[0]["deletes"] == [] and updates[0]["totalCount"] == 1
    assert set(db.tables["Target"]) == {"d"}


async def test_single_rejected_event_and_events_not_allowed(peer, backend, db):
    await peer.event("SET", "Scene", {"id": "s"}, tx="t1")
    assert await peer.expect("ws:m:event-error") == {
        "tx": "t1",
        "itemType": "Scene",
        "message": "Scene.name is required",
    }
    backend.allow_client_events = False
    await peer.send(
        "ws:m:event-batch",
        [{"changeType": "SET", "itemType": "Scene", "item": {"id": "s", "name": "s"}, "tx": "t2"}],
    )
    assert await peer.expect("ws:m:event-error") == {
        "tx": "t2",
        "itemType": "Scene",
        "message": "This server does not accept events from clients",
    }
    assert db.log == []
    await peer.nothing()


async def test_a_batch_the_backend_fails_on_gets_an_event_error_for_each_event(
    peer, backend, db, monkeypatch
):
    async def broken(events, *, user=None, source_id):
        raise RuntimeError("could not serialize access: secret row (42, 'hidden')")

    monkeypatch.setattr(backend, "apply_events", broken)
    batch = [
        {"changeType": "SET", "itemType": "Target", "item": {"id": "a", "name": "na"}, "tx": "1"},
        {"changeType": "DEL", "itemType": "Scene", "item": {"id": "s"}, "tx": "2"},
        "not an event",
    ]
    await peer.send("ws:m:event-batch", batch)
    errors = [m["data"] for m in await peer.drain() if m["event"] == "ws:m:event-error"]
    assert [(e["tx"], e["itemType"]) for e in errors] == [
        ("1", "Target"),
        ("2", "Scene"),
        (None, None),
    ]
    assert {e["message"] for e in errors} == {
        "The server failed to apply the events (RuntimeError)"
    }
    await peer.event("SET", "Target", {"id": "b", "name": "nb"}, tx="3")  # the worker goes on
    assert [m["data"]["tx"] for m in await peer.drain()] == ["3"]
    assert db.tables.get("Target", {}) == {}


# ---- Envelope: ping, benchmark -------------------------------------------------------------


async def test_ping_echoed_unchanged_and_benchmark_unanswered(client):
    data = {"id": "p-1", "timestamp": 1712345678901, "extra": [1, 2.5, None, {"k": True}]}
    await client.send("ws:m:ping", data)
    assert await client.recv() == {"event": "ws:m:ping", "data": data}
    await client.send("ws:m:benchmark", {"payload": "x" * 100})
    await client.send("ws:m:benchmark", [1, 2, 3])
    await client.nothing()
    assert conn_of(client).benchmarks == 2 and conn_of(client).bad_frames == 0


# ---- Formats ------------------------------------------------------------------------------


PING = {"event": "ws:m:ping", "data": {"id": "b", "timestamp": 2}}


def _msgpack_map16(message: dict) -> bytes:
    """A map in MessagePack's map16 form (first byte 0xde), as some encoders write."""
    body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in message.items())
    return b"\xde" + len(message).to_bytes(2, "big") + body


def _cbor_map16(message: dict) -> bytes:
    """A map as the TypeScript client writes it: 0xb9 and a 2-byte length."""
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in message.items())
    return b"\xb9" + len(message).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    ("frame", "fmt_after"),
    [
        (msgpack.packb(PING), codecs.MSGPACK),
        (_msgpack_map16(PING), codecs.MSGPACK),
        (cbor2.dumps(PING), codecs.CBOR),
        (_cbor_map16(PING), codecs.CBOR),
    ],
    ids=["msgpack-fixmap", "msgpack-map16", "cbor-map", "cbor-map16"],
)
async def test_first_binary_frame_fixes_the_format_by_its_first_byte(connect, frame, fmt_after):
    c = connect(codecs.JSON)
    tx, _ = await c.subscribe("GetAllTargets", "Target")  # text in, text out
    await c.send_raw(frame)
    c.fmt = fmt_after  # the echo and everything after come in the binary format
    assert await c.recv() == PING
    await c.send_raw('{"event":"ws:m:ping","data":{"id":"t","timestamp":3}}')  # text still read
    assert await c.recv() == {"event": "ws:m:ping", "data": {"id": "t", "timestamp": 3}}
    conn_of(c).hub.db.set("Target", target("a"))
    data = await c.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"]) == (tx, 1)
    assert (conn_of(c).fmt, conn_of(c).binary_fmt) == (fmt_after, fmt_after)


async def test_undecodable_binary_frames_do_not_fix_the_format(connect):
    c = connect(codecs.JSON)
    await c.send_raw(b"\xc1\xff\x00garbage")  # neither map
    await c.send_raw(b"")
    await c.send_raw(msgpack.packb(PING)[:5])  # a MessagePack map, cut short
    await c.send_raw(cbor2.dumps(PING)[:5])  # a CBOR map, cut short
    await c.nothing()
    assert conn_of(c).bad_frames == 4 and conn_of(c).binary_fmt is None
    await c.ping()  # still JSON
    await c.send_raw(cbor2.dumps(PING))  # the first that decodes: CBOR
    c.fmt = codecs.CBOR
    assert await c.recv() == PING
    await c.send_raw(msgpack.packb(PING))  # read as CBOR now: not a message
    await c.nothing()
    assert conn_of(c).bad_frames == 5 and conn_of(c).binary_fmt == codecs.CBOR
    await c.ping()


async def test_switch_text_replies_in_json_then_switches_to_msgpack(connect, db):
    c = connect(codecs.JSON)
    tx, _ = await c.subscribe("GetAllTargets", "Target")
    await c.send_raw("myko:switch-to-msgpack")
    assert frames_of(c) == ['{"event":"ws:m:protocol-switch","data":{"protocol":"msgpack"}}']
    frames_of(c).clear()
    c.fmt = codecs.MSGPACK
    await c.send_raw(codecs.encode({"event": "ws:m:ping", "data": {"id": 1}}, codecs.JSON))
    assert await c.recv() == {"event": "ws:m:ping", "data": {"id": 1}}  # text in, binary out
    await c.send_raw(msgpack.packb(PING))
    assert await c.recv() == PING
    db.set("Target", target("a"))
    assert (await c.expect("ws:m:query-response"))["sequence"] == 1
    await c.send_raw("myko:switch-to-msgpack")  # again: the reply is a JSON text frame again
    assert frames_of(c) == ['{"event":"ws:m:protocol-switch","data":{"protocol":"msgpack"}}']
    frames_of(c).clear()
    await c.ping()
    assert conn_of(c).bad_frames == 0


async def test_switch_text_on_a_binary_connection_replies_in_text(connect):
    c = connect(codecs.MSGPACK)
    await c.ping()
    await c.send_raw("myko:switch-to-msgpack")
    assert frames_of(c) == [ev.SWITCH_REPLY]
    frames_of(c).clear()
    await c.ping()


async def test_json_and_binary_twins_decode_to_equal_messages(connect, db):
    db.set("Target", target("a", "ünïcødé ✓", "x"), target("b", "", None))
    results = []
    for f in (codecs.JSON, codecs.MSGPACK, codecs.CBOR):
        c = connect(f)
        tx, data = await c.subscribe("GetAllTargets", "Target", tx="same")
        results.append(sorted(data["upserts"], key=lambda u: u["item"]["id"]))
    assert results[0] == results[1] == results[2]


# ---- Bad input ----------------------------------------------------------------------------


def _bad_messages() -> list[Any]:
    not_envelopes: list[Any] = [
        [1, 2],
        "ws:m:ping",
        5,
        None,
        {"data": {"id": 1}},
        {"event": 5, "data": {}},
        {"event": None},
    ]
    client_bound = [{"event": e, "data": {"tx": "q-x"}} for e in sorted(ev.SERVER_TO_CLIENT)]
    wrong_shapes = [
        {"event": "ws:m:nope", "data": {}},
        {"event": "ws:m:query", "data": {"query": {}, "queryId": "GetAllTargets"}},
        {"event": "ws:m:query", "data": "GetAllTargets"},
        {"event": "ws:m:view", "data": {"view": {"tx": 5}, "viewId": "GetAllTargets"}},
        {"event": "ws:m:query-cancel", "data": {}},
        {"event": "ws:m:report-cancel", "data": ["tx"]},
        {"event": "ws:m:query-window", "data": {"tx": "q-x"}},
        {"event": "ws:m:view-window", "data": None},
        {"event": "ws:m:report", "data": {"reportId": "CountAllTargets"}},
        {"event": "ws:m:command", "data": {"commandId": "Echo", "command": {}}},
        {"event": "ws:m:command", "data": None},
        {"event": "ws:m:event-batch", "data": {"changeType": "SET"}},
    ]
    return not_envelopes + client_bound + wrong_shapes


async def test_bad_messages_are_counted_unanswered_and_harmless(client, db):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.ping()
    raw: list[Any] = ["{not json", "", '{"event": "ws:m:ping"'] + (
        [b"\xc1\xff\x00garbage"] if client.fmt != codecs.JSON else []
    )
    messages = _bad_messages()
    for frame in raw:
        await client.send_raw(frame)
    for message in messages:
        await client.send_message(message)
    await client.nothing()
    assert conn_of(client).bad_frames == len(raw) + len(messages)
    # The connection and its subscription keep working.
    await client.ping()
    db.set("Target", target("a"))
    data = await client.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"]) == (tx, 1)
    tx = await client.command("Echo", {"value": 1})
    assert await client.expect("ws:m:command-response") == {"response": 1, "tx": tx}


async def test_lone_surrogate_escape_is_a_bad_frame(connect):
    c = connect(codecs.JSON)
    await c.send_raw('{"event":"ws:m:ping","data":{"id":"\\ud800"}}')
    await c.nothing()
    assert conn_of(c).bad_frames == 1
    await c.ping()


async def test_a_message_that_breaks_something_costs_only_that_message(connect, backend):
    c = connect(codecs.JSON)
    backend.resolve_query = _raise  # something unforeseen in the backend
    await c.query("GetAllTargets", "Target")
    await c.nothing()
    assert conn_of(c).bad_frames == 1
    await c.ping()
    backend.resolve_report = _raise  # a report that fails this way is answered
    tx = await c.report("CountAllTargets")
    assert await c.expect("ws:m:report-error") == {
        "tx": tx,
        "reportId": "CountAllTargets",
        "message": "CountAllTargets failed: 'unforeseen'",
    }


def _raise(*args: Any) -> Any:
    raise KeyError("unforeseen")


# ---- Server queries -----------------------------------------------------------------------


async def test_get_connected_server_and_peer_servers(connect, backend, fmt):
    c = connect(fmt, address=("10.0.0.7", 8001))
    tx = await c.query("GetConnectedServer", "Server")
    data = await c.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"], data["deletes"], data["totalCount"]) == (tx, 0, [], 1)
    [server] = data["upserts"]
    assert server["itemType"] == "Server"
    assert server["item"] == {
        "id": "memory-1",
        "version": "0.0.0",
        "address": "10.0.0.7",
        "port": 8001,
        "startedAt": "2024-01-01T00:00:00Z",
    }
    await c.query("GetConnectedServer", "Server", tx=tx)  # duplicate: ignored
    await c.nothing()

    # Always a result, never a query-error (it would crash a Node client), whatever it is sent.
    for item_type, params in (("Server", {}), (None, {"x": 1}), ("Target", {"seq": 0})):
        tx = await c.query("GetPeerServers", item_type, params)
        assert await c.expect("ws:m:query-response") == {
            "tx": tx,
            "sequence": 0,
            "deletes": [],
            "totalCount": 0,
            "upserts": [],
        }
    backend.peers = [{"id": "w2", "address": "10.0.0.8", "port": 8001}]
    tx = await c.query("GetPeerServers", "Server")
    data = await c.expect("ws:m:query-response")
    assert data["upserts"] == [row(backend.peers[0], "Server")] and data["totalCount"] == 1
    await c.send("ws:m:query-window", {"tx": tx, "window": {"offset": 0, "limit": 1}})
    await c.send("ws:m:query-cancel", {"tx": tx})
    await c.nothing()
    await c.query("GetPeerServers", "Server", tx=tx)  # cancelled: the tx is free again
    assert (await c.expect("ws:m:query-response"))["tx"] == tx


# ---- closing ------------------------------------------------------------------------------


async def test_close_drops_subscriptions_and_a_running_command_still_commits(
    client, hub, backend, db
):
    await client.subscribe("GetAllTargets", "Target")
    await client.subscribe("GetAllTargets", "Target", event="ws:m:view")
    await client.report("CountAllTargets")
    await client.expect("ws:m:report-response")
    hub.load_gate = asyncio.Event()
    await client.query("GetAllScenes", "Scene")  # still loading when the client goes
    backend.command_gate = asyncio.Event()
    await client.command("CreateTargets", {"ids": ["a"]})
    await settle()
    await client.close()
    assert hub.engine.stats()["subscriptions"] == 0 and conn_of(client) not in hub.sinks
    backend.command_gate.set()
    hub.load_gate.set()
    await settle()
    assert set(db.tables["Target"]) == {"a"}  # the running command finished
    db.set("Scene", {"id": "s", "name": "s"})
    await settle()
    assert frames_of(client) == []  # nothing after close
    assert hub.engine.stats()["subscriptions"] == 0


# ---- the suite needs no Django -------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def bare_import():
    """Everything this module imports (but pytest), its in-memory Django side included,
    imported in a bare interpreter without settings; started with the module so that it
    runs alongside the other tests."""
    tree = ast.parse(Path(__file__).read_text())
    modules = sorted(
        {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        | {
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        - {"__future__", "pytest"}
    )
    assert "tests.support.memory" in modules and "myko_django.server.connection" in modules
    code = (
        f"import sys, {', '.join(modules)}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'channels'))\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_the_protocol_suite_imports_no_django(bare_import):
    """The suite runs with no Django, no settings and no database at all."""
    _, stderr = bare_import.communicate(timeout=60)
    assert bare_import.returncode == 0, stderr
