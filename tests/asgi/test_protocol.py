"""Conformance of the WebSocket protocol to docs/protocol.md (section comments name its
sections).

Every test talks to the project's real ASGI application (origin check, auth middleware,
router, consumer, runtime, database) through Channels' WebsocketCommunicator; nothing is
mocked. Each test runs once in JSON and once in MessagePack through the
`client` fixture (tests/support/wsclient.py).
"""

from __future__ import annotations

import json
import logging

import cbor2
import msgpack
import pytest

from tests.support.data import count_rows, items_by_id, row, seed_targets, target
from tests.support.wsclient import AsgiTransport, WsClient, new_tx

pytestmark = [pytest.mark.django_db(transaction=True)]


# ---- Connecting ---------------------------------------------------------------------


async def test_endpoint_paths_and_origin(asgi_app, fmt):
    cases = [
        ("/myko", [], True),
        ("/", [], True),
        ("/myko", [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")], True),
        ("/myko", [(b"origin", b"http://evil.example"), (b"host", b"evil.example")], False),
        ("/myko", [(b"origin", b"http://evil.example"), (b"host", b"localhost")], False),
    ]
    for path, headers, accepted in cases:
        transport = AsgiTransport(asgi_app, path, headers)
        connected = await transport.connect()
        assert connected is accepted, (path, headers)
        if connected:
            c = WsClient(transport, fmt)
            await c.ping()
            await c.close()


# ---- Queries: subscribe, SET, DEL -------------------------------------------------------


async def test_empty_subscribe_gives_exactly_one_empty_snapshot(client):
    tx = await client.query("GetAllTargets", "Target")
    assert await client.recv() == {
        "event": "ws:m:query-response",
        "data": {"tx": tx, "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0},
    }
    await client.nothing(0.1)
    await client.ping()


async def test_set_then_del_reach_the_subscriber(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.event("SET", "Target", {"id": "t1", "name": "a"})
    assert await client.expect("ws:m:query-response") == {
        "tx": tx,
        "sequence": 1,
        "upserts": [row(target("t1", "a"))],
        "deletes": [],
        "totalCount": 1,
    }
    await client.event("DEL", "Target", {"id": "t1"})
    assert await client.expect("ws:m:query-response") == {
        "tx": tx,
        "sequence": 2,
        "upserts": [],
        "deletes": ["t1"],
        "totalCount": 0,
    }
    await client.barrier()


async def test_existing_rows_are_in_the_snapshot(client):
    await seed_targets("a", "b")
    tx, data = await client.subscribe("GetAllTargets", "Target")
    assert items_by_id(data) == {"a": target("a", "na"), "b": target("b", "nb")}
    assert data["totalCount"] == 2 and data["deletes"] == []
    assert all(u["itemType"] == "Target" for u in data["upserts"])


async def test_set_replaces_whole_item_and_optional_event_fields_are_accepted(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.event(
        "SET",
        "Target",
        {"id": "t", "name": "a", "category": "c", "bogus": [1]},
        createdAt="2024-01-01T00:00:00Z",
        tx="e1",
        sourceId=None,
        options={"preventRelationshipUpdates": True, "preventPersist": False, "fromPeer": True},
    )
    first = await client.expect("ws:m:query-response")
    assert first["upserts"] == [row(target("t", "a", "c"))]  # unknown key dropped
    await client.event("SET", "Target", {"id": "t", "name": "b"}, sourceId="someone")
    second = await client.expect("ws:m:query-response")
    assert second["sequence"] == 2
    assert second["upserts"] == [row(target("t", "b", None))]  # no merge: category reset


async def test_identical_set_and_del_of_missing_id_send_nothing(client):
    await seed_targets("t")
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.event("SET", "Target", {"id": "t", "name": "nt"})  # same as stored
    await client.event("DEL", "Target", {"id": "never-existed"})  # a no-op, not an error
    await client.barrier()
    await client.event("SET", "Target", {"id": "t", "name": "x"})
    assert (await client.expect("ws:m:query-response"))["sequence"] == 1


async def test_changes_outside_the_query_send_nothing(client):
    tx, _ = await client.subscribe("GetTargetsByQuery", "Target", {"category": "x"})
    await client.event("SET", "Target", {"id": "y1", "name": "a", "category": "y"})
    await client.barrier()
    await client.event("SET", "Target", {"id": "y1", "name": "a", "category": "x"})
    entered = await client.expect("ws:m:query-response")
    assert (entered["sequence"], entered["totalCount"]) == (1, 1)
    await client.event("SET", "Target", {"id": "y1", "name": "a", "category": "y"})
    left = await client.expect("ws:m:query-response")
    assert (left["sequence"], left["upserts"], left["deletes"]) == (2, [], ["y1"])


# ---- Queries: duplicates and cancels ----------------------------------------------------


async def test_duplicate_subscribe_with_active_tx_is_ignored(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.query("GetAllTargets", "Target", {"seq": 0}, tx=tx)  # TS client re-send
    await client.query("GetAllScenes", "Scene", tx=tx)  # even another query
    await client.ping()
    await client.event("SET", "Target", {"id": "t", "name": "a"})
    data = await client.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"]) == (tx, 1)  # sequence not reset
    await client.barrier()


async def test_back_to_back_duplicates_on_a_fresh_store_answer_once(client):
    tx = new_tx()
    for _ in range(3):
        await client.query("GetAllScenes", "Scene", tx=tx)
    assert (await client.expect("ws:m:query-response"))["sequence"] == 0
    await client.ping()


async def test_cancel_then_set_sends_nothing(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.send("ws:m:query-cancel", {"tx": tx})
    await client.event("SET", "Target", {"id": "t", "name": "a"})
    await client.barrier()
    # The tx is free again: subscribing anew starts at sequence 0 with the current rows.
    _, data = await client.subscribe("GetAllTargets", "Target", tx=tx)
    assert items_by_id(data) == {"t": target("t", "a")}


async def test_any_cancel_cancels_whatever_holds_the_tx(client):
    for cancel in ("ws:m:query-cancel", "ws:m:view-cancel", "ws:m:report-cancel"):
        q, _ = await client.subscribe("GetAllTargets", "Target")
        r = await client.report("CountAllTargets")
        assert (await client.expect("ws:m:report-response"))["tx"] == r
        await client.send(cancel, {"tx": q})
        await client.send(cancel, {"tx": r})
        await client.event("SET", "Target", {"id": "t", "name": cancel})
        await client.barrier()


async def test_cancel_and_window_of_unknown_tx_send_nothing(client):
    await client.send("ws:m:query-cancel", {"tx": "never-subscribed"})
    await client.send("ws:m:report-cancel", {"tx": "never-subscribed"})
    await client.send("ws:m:view-cancel", {"tx": "never-subscribed"})
    await client.send("ws:m:query-window", {"tx": "never", "window": {"offset": 0, "limit": 1}})
    await client.send("ws:m:view-window", {"tx": "never", "window": None})
    await client.ping()


# ---- Windows ----------------------------------------------------------------------------


def window_order(ids: list[str], total: int, window: dict) -> list[dict]:
    return [{"kind": "windowOrder", "ids": ids, "total_count": total, "window": window}]


async def test_windowed_subscribe_and_moving_the_window(client):
    await seed_targets("1", "10", "2", "3", "9")  # code-point order: "10" < "2" < "9"
    w1 = {"offset": 0, "limit": 2}
    tx, first = await client.subscribe("GetAllTargets", "Target", window=w1)
    assert [u["item"]["id"] for u in first["upserts"]] in (["1", "10"], ["10", "1"])
    assert first["deletes"] == [] and first["totalCount"] == 5
    assert first["window"] == w1
    assert first["changes"] == window_order(["1", "10"], 5, w1)

    await client.send("ws:m:query-window", {"tx": tx, "window": dict(w1)})
    await client.ping()  # same window: nothing

    w2 = {"offset": 2, "limit": 2}
    await client.send("ws:m:query-window", {"tx": tx, "window": w2})
    moved = await client.expect("ws:m:query-response")
    assert moved["sequence"] == 1
    assert sorted(moved["deletes"]) == ["1", "10"]
    assert items_by_id(moved) == {"2": target("2", "n2"), "3": target("3", "n3")}
    assert moved["totalCount"] == 5 and moved["window"] == w2
    assert moved["changes"] == window_order(["2", "3"], 5, w2)

    # A change outside the page that leaves the page and totalCount alone: nothing.
    await client.event("SET", "Target", {"id": "9", "name": "renamed"})
    await client.barrier()

    # A new row before the page shifts it: "10" enters, "3" leaves (but still exists).
    await client.event("SET", "Target", {"id": "0", "name": "n0"})
    shifted = await client.expect("ws:m:query-response")
    assert shifted["sequence"] == 2
    assert shifted["deletes"] == ["3"]
    assert items_by_id(shifted) == {"10": target("10", "n10")}
    assert shifted["totalCount"] == 6
    assert shifted["changes"] == window_order(["10", "2"], 6, w2)

    # A change on the page: the whole item again.
    await client.event("SET", "Target", {"id": "2", "name": "two"})
    changed = await client.expect("ws:m:query-response")
    assert changed["sequence"] == 3
    assert changed["upserts"] == [row(target("2", "two"))] and changed["deletes"] == []
    assert changed["changes"] == window_order(["10", "2"], 6, w2)

    # A row on the page is deleted: the next row ("3") moves onto the page.
    await client.event("DEL", "Target", {"id": "10"})
    refilled = await client.expect("ws:m:query-response")
    assert refilled["sequence"] == 4
    assert refilled["deletes"] == ["10"]
    assert refilled["upserts"] == [row(target("3", "n3"))]
    assert refilled["totalCount"] == 5
    assert refilled["changes"] == window_order(["2", "3"], 5, w2)

    # Removing the window sends the rows that become visible.
    await client.send("ws:m:query-window", {"tx": tx, "window": None})
    unwindowed = await client.expect("ws:m:query-response")
    assert unwindowed["sequence"] == 5
    assert set(items_by_id(unwindowed)) == {"0", "1", "9"}
    assert items_by_id(unwindowed)["9"] == target("9", "renamed")
    assert unwindowed["deletes"] == [] and unwindowed["totalCount"] == 5

    await client.event("DEL", "Target", {"id": "9"})
    gone = await client.expect("ws:m:query-response")
    assert (gone["sequence"], gone["upserts"], gone["deletes"]) == (6, [], ["9"])
    assert gone["totalCount"] == 4 and "changes" not in gone and "window" not in gone


async def test_window_past_the_end_and_window_added_later(client):
    await seed_targets("a", "b", "c")
    w = {"offset": 5, "limit": 10}
    tx, data = await client.subscribe("GetAllTargets", "Target", window=w)
    assert data["upserts"] == [] and data["totalCount"] == 3
    assert data["changes"] == window_order([], 3, w)
    plain, _ = await client.subscribe("GetAllTargets", "Target")
    w2 = {"offset": 1, "limit": 1}
    await client.send("ws:m:query-window", {"tx": plain, "window": w2})
    data = await client.expect("ws:m:query-response")
    assert data["tx"] == plain and data["sequence"] == 1
    assert sorted(data["deletes"]) == ["a", "c"] and data["upserts"] == []
    assert data["changes"] == window_order(["b"], 3, w2)


# ---- Commands ---------------------------------------------------------------------------


async def test_command_success_response_and_tx_echo(client):
    tx = await client.command("MakeGadgets", {"labels": ["a", "b"]})
    assert await client.recv() == {
        "event": "ws:m:command-response",
        "data": {"response": {"made": 2}, "tx": tx},
    }
    await seed_targets("t")
    tx = await client.command("RenameTarget", {"id": "t", "name": "x"})
    assert await client.expect("ws:m:command-response") == {"response": None, "tx": tx}


async def test_command_error_rolls_back_and_updates_no_one(client):
    await client.subscribe("GetAllGadgets", "Gadget")
    tx = await client.command("MakeGadgets", {"labels": ["a", "b"], "failAfter": 1})
    assert await client.recv() == {
        "event": "ws:m:command-error",
        "data": {"tx": tx, "commandId": "MakeGadgets", "message": "failed after 1"},
    }
    await client.barrier()
    assert await count_rows("testapp.Gadget") == 0
    assert await count_rows("myko_django.Event") == 0
    # A failed command stored nothing: the same tx runs again.
    await client.command("MakeGadgets", {"labels": ["a"]}, tx=tx)
    assert (await client.expect("ws:m:query-response"))["sequence"] == 1
    assert await client.expect("ws:m:command-response") == {"response": {"made": 1}, "tx": tx}


async def test_command_errors(client):
    cases = [
        ("Nope", {}, "Command handler not found: Nope"),
        ("MakeGadgets", {}, '"labels" is required'),
        ("MakeGadgets", {"labels": "a"}, '"labels" must be a list of strings'),
        ("DeleteTarget", {"id": "missing"}, "Target not found: missing"),
    ]
    for command_id, params, message in cases:
        tx = await client.command(command_id, params)
        data = await client.expect("ws:m:command-error")
        assert set(data) == {"tx", "commandId", "message"}
        assert (data["tx"], data["commandId"]) == (tx, command_id)
        assert message in data["message"]
    assert data["message"] == "Target not found: missing"
    tx = await client.command("Nope")
    assert await client.expect("ws:m:command-error") == {
        "tx": tx,
        "commandId": "Nope",
        "message": "Command handler not found: Nope",
    }


async def test_derived_delete_commands(client):
    await seed_targets("a", "b")
    tx = await client.command("DeleteTarget", {"id": "a"})
    assert await client.expect("ws:m:command-response") == {"response": {"deleted": True}, "tx": tx}
    tx = await client.command("DeleteTargets", {"ids": ["b", "missing"]})
    assert await client.expect("ws:m:command-response") == {
        "response": {"deletedCount": 1},
        "tx": tx,
    }
    assert await count_rows("demo.Target") == 0


async def test_idempotent_tx_returns_stored_response_without_rerunning(client, connect):
    tx, _ = await client.subscribe("GetAllGadgets", "Gadget")
    ctx = await client.command("SlowCount", {"label": "a"})
    assert (await client.expect("ws:m:query-response"))["sequence"] == 1
    assert await client.expect("ws:m:command-response") == {"response": 1, "tx": ctx}
    await client.command("SlowCount", {"label": "a"}, tx=ctx)
    assert await client.recv() == {
        "event": "ws:m:command-response",
        "data": {"response": 1, "tx": ctx},
    }
    await client.barrier()  # not run again: no new row, no update
    assert await count_rows("testapp.Gadget") == 1
    # Another anonymous connection has short tx values of its own (issue 13, item 9): the
    # same tx there is another command, which runs (test_command_identity.py has more).
    other = await connect()
    await other.command("SlowCount", {"label": "a"}, tx=ctx)
    assert await other.expect("ws:m:command-response") == {"response": 2, "tx": ctx}
    assert await count_rows("testapp.Gadget") == 2


async def test_read_your_writes_updates_arrive_before_command_response(client):
    q, _ = await client.subscribe("GetAllGadgets", "Gadget")
    v = await client.query("GetAllGadgets", "Gadget", event="ws:m:view")
    assert (await client.expect("ws:m:view-response"))["sequence"] == 0
    r1 = await client.report("CountAllGadgets")
    r2 = await client.report("GetGadgetById", {"id": "g-a"})
    r3 = await client.report("GadgetLabels", {"prefix": "a"})
    for _ in range(3):
        await client.expect("ws:m:report-response")
    tx = await client.command("MakeGadgets", {"labels": ["a", "b"]})
    seen: dict[str, list] = {}
    while True:
        message = await client.recv()
        data = message["data"]
        if message["event"] == "ws:m:command-response":
            assert data == {"response": {"made": 2}, "tx": tx}
            break
        seen.setdefault(data["tx"], []).append(data)
    assert set(seen) == {q, v, r1, r2, r3}
    # One commit reaches each subscription as one message, however many writes it made.
    for sub in (q, v):
        assert [d["sequence"] for d in seen[sub]] == [1]
        assert set(items_by_id(seen[sub][0])) == {"g-a", "g-b"}
    assert [d["response"] for d in seen[r1]] == [{"count": 2}]
    assert [d["response"]["label"] for d in seen[r2]] == ["a"]
    assert [d["response"] for d in seen[r3]] == [["a"]]
    await client.barrier()


async def test_command_response_waits_for_a_snapshot_still_loading(client):
    """Subscribe to a cold type and command at once: the snapshot (with the command's write
    or followed by it) comes before the command-response (docs/protocol.md, "Read-your-writes")."""
    q = await client.query("GetAllGadgets", "Gadget")
    tx = await client.command("MakeGadgets", {"labels": ["a"]})
    seen: list[dict] = []
    while True:
        message = await client.recv()
        if message["event"] == "ws:m:command-response":
            assert message["data"]["tx"] == tx
            break
        seen.append(message["data"])
    assert seen and seen[0]["tx"] == q and seen[0]["sequence"] == 0
    assert {i for d in seen for i in items_by_id(d)} == {"g-a"}
    await client.barrier()


async def test_commands_run_in_order_while_pings_and_cancels_are_not_held_up(client):
    q, _ = await client.subscribe("GetAllGadgets", "Gadget")
    slow = await client.command("SlowCount", {"label": "o", "wait": 0.5})
    fast = await client.command("SlowCount", {"label": "o"})
    await client.send("ws:m:ping", {"id": "during", "timestamp": 1})
    await client.send("ws:m:query-cancel", {"tx": q})
    assert await client.recv() == {"event": "ws:m:ping", "data": {"id": "during", "timestamp": 1}}
    # In arrival order: the second command sees the row of the first. The cancel took
    # effect before either committed, so the cancelled query got no update.
    assert await client.expect("ws:m:command-response") == {"response": 1, "tx": slow}
    assert await client.expect("ws:m:command-response") == {"response": 2, "tx": fast}
    await client.barrier()


# ---- Envelope: ping and benchmark -------------------------------------------------------


async def test_ping_echoed_unchanged_and_benchmark_unanswered(client):
    data = {"id": "p-1", "timestamp": 1712345678901, "extra": [1, 2.5, None, {"k": True}]}
    await client.send("ws:m:ping", data)
    assert await client.recv() == {"event": "ws:m:ping", "data": data}
    await client.send("ws:m:benchmark", {"payload": "x" * 100, "n": 1})
    await client.send("ws:m:benchmark", [1, 2, 3])
    await client.nothing(0.1)
    await client.ping()


# ---- Bad input: malformed frames --------------------------------------------------------


async def test_malformed_frame_is_ignored_and_connection_keeps_working(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    await client.send_raw("{not json")
    await client.send_raw(b"\xc1\xff\x00garbage")
    await client.ping()
    await client.event("SET", "Target", {"id": "t", "name": "a"})
    data = await client.expect("ws:m:query-response")
    assert (data["tx"], data["sequence"]) == (tx, 1)
    await client.ping()


# ---- Formats ----------------------------------------------------------------------------


def unpack(frame: str | bytes) -> dict:
    assert isinstance(frame, bytes), f"expected a binary frame, got {frame!r:.200}"
    return msgpack.unpackb(frame, raw=False)


async def test_first_binary_frame_flips_the_outgoing_format(asgi_app):
    c = await WsClient.asgi(asgi_app, "json")
    tx, _ = await c.subscribe("GetAllTargets", "Target")  # text in, text out
    ping = {"event": "ws:m:ping", "data": {"id": "b", "timestamp": 2}}
    await c.send_raw(msgpack.packb(ping))
    assert unpack(await c.recv_frame()) == ping
    # Text frames are still parsed as JSON, but every reply is now MessagePack.
    await c.send_raw(json.dumps(ping))
    assert unpack(await c.recv_frame()) == ping
    await c.event("SET", "Target", {"id": "t", "name": "a"})
    update = unpack(await c.recv_frame())
    assert update["event"] == "ws:m:query-response"
    assert update["data"]["sequence"] == 1 and update["data"]["tx"] == tx
    await c.close()


async def test_undecodable_binary_frame_does_not_switch(asgi_app):
    c = await WsClient.asgi(asgi_app, "json")
    await c.send_raw(b"\x00\x01garbage")
    await c.send_raw(b"\x82\xa1")  # a truncated MessagePack map
    await c.ping()  # still JSON text
    await c.close()


async def test_switch_text_replies_in_json_then_switches_to_msgpack(asgi_app):
    c = await WsClient.asgi(asgi_app, "json")
    switch = '{"event":"ws:m:protocol-switch","data":{"protocol":"msgpack"}}'
    await c.send_raw("myko:switch-to-msgpack")
    frame = await c.recv_frame()
    assert frame == switch
    assert json.loads(frame) == {
        "event": "ws:m:protocol-switch",
        "data": {"protocol": "msgpack"},
    }
    ping = {"event": "ws:m:ping", "data": {"id": "s", "timestamp": 3}}
    await c.send_raw(json.dumps(ping))
    assert unpack(await c.recv_frame()) == ping
    await c.send_raw(msgpack.packb(ping))
    assert unpack(await c.recv_frame()) == ping
    # Again after the switch: the reply is still a JSON text frame; replies stay MessagePack.
    await c.send_raw("myko:switch-to-msgpack")
    assert await c.recv_frame() == switch
    await c.send_raw(json.dumps(ping))
    assert unpack(await c.recv_frame()) == ping
    await c.close()


async def test_cbor_first_binary_frame_fixes_cbor(asgi_app):
    c = await WsClient.asgi(asgi_app, "cbor")
    tx, first = await c.subscribe("GetAllTargets", "Target")
    assert first == {"tx": tx, "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0}
    await c.event("SET", "Target", {"id": "t", "name": "a"})
    frame = await c.recv_frame()
    assert isinstance(frame, bytes) and 0xA0 <= frame[0] <= 0xBF  # a CBOR map
    assert cbor2.loads(frame)["data"]["upserts"] == [row(target("t", "a"))]
    r = await c.report("CountAllTargets")
    assert await c.expect("ws:m:report-response") == {"response": {"count": 1}, "tx": r}
    tx = await c.command("RenameTarget", {"id": "t", "name": "b"})
    assert (await c.expect("ws:m:query-response"))["sequence"] == 2
    assert await c.expect("ws:m:command-response") == {"response": None, "tx": tx}
    # Text frames are still JSON; the reply stays CBOR.
    ping = {"event": "ws:m:ping", "data": {"id": "c", "timestamp": 4}}
    await c.send_raw(json.dumps(ping))
    assert await c.recv() == ping
    # The TypeScript client's framing: 0xb9 + 2-byte length.
    header = b"\xb9\x00\x02"
    body = cbor2.dumps("event") + cbor2.dumps("ws:m:ping") + cbor2.dumps("data")
    body += cbor2.dumps(ping["data"])
    await c.send_raw(header + body)
    assert await c.recv() == ping
    await c.close()


# ---- Reports ----------------------------------------------------------------------------


async def test_count_all_report_sends_only_on_change(client):
    r = await client.report("CountAllTargets")
    assert await client.recv() == {
        "event": "ws:m:report-response",
        "data": {"response": {"count": 0}, "tx": r},
    }
    await client.event("SET", "Target", {"id": "t", "name": "a"})
    assert await client.expect("ws:m:report-response") == {"response": {"count": 1}, "tx": r}
    await client.event("SET", "Target", {"id": "t", "name": "b"})  # same count
    await client.barrier()
    await client.event("DEL", "Target", {"id": "t"})
    assert await client.expect("ws:m:report-response") == {"response": {"count": 0}, "tx": r}


async def test_count_with_params_report(client):
    r = await client.report("CountTargets", {"category": "x"})
    assert await client.expect("ws:m:report-response") == {"response": {"count": 0}, "tx": r}
    await client.event("SET", "Target", {"id": "y", "name": "a", "category": "y"})
    await client.barrier()
    await client.event("SET", "Target", {"id": "x", "name": "a", "category": "x"})
    assert await client.expect("ws:m:report-response") == {"response": {"count": 1}, "tx": r}


async def test_get_by_id_report_null_item_null(client):
    await client.subscribe("GetAllTargets", "Target")
    r = await client.report("GetTargetById", {"id": "t"})
    assert await client.expect("ws:m:report-response") == {"response": None, "tx": r}
    await client.event("SET", "Target", {"id": "other", "name": "a"})
    await client.expect("ws:m:query-response")
    await client.event("SET", "Target", {"id": "other", "name": "a"})
    await client.barrier()
    for change, name in (("SET", "a"), ("SET", "b"), ("DEL", None)):
        await client.event(change, "Target", {"id": "t", "name": name})
        messages = [await client.recv(), await client.recv()]
        reports = [m["data"] for m in messages if m["event"] == "ws:m:report-response"]
        assert reports == [{"response": name and target("t", name), "tx": r}]
    await client.barrier()


async def test_get_by_id_report_as_first_subscription(client):
    r = await client.report("GetTargetById", {"id": "t"})
    assert await client.recv() == {
        "event": "ws:m:report-response",
        "data": {"response": None, "tx": r},
    }


async def test_second_report_with_same_tx_replaces_and_resends(client):
    r = await client.report("CountAllTargets")
    assert (await client.expect("ws:m:report-response"))["response"] == {"count": 0}
    await client.report("CountAllTargets", tx=r)  # same report again: value again
    assert await client.expect("ws:m:report-response") == {"response": {"count": 0}, "tx": r}
    await client.report("GetTargetById", {"id": "t"}, tx=r)  # another report, same tx
    assert await client.expect("ws:m:report-response") == {"response": None, "tx": r}
    await client.event("SET", "Target", {"id": "t", "name": "a"})
    # Only the replacement answers: the count report is gone.
    assert await client.expect("ws:m:report-response") == {"response": target("t", "a"), "tx": r}
    await client.barrier()


async def test_user_report_with_params(client):
    r = await client.report("GadgetLabels", {"prefix": "a"})
    assert await client.expect("ws:m:report-response") == {"response": [], "tx": r}
    await client.command("MakeGadgets", {"labels": ["b1"]})
    assert (await client.recv())["event"] == "ws:m:command-response"  # value unchanged
    await client.command("MakeGadgets", {"labels": ["a1"]})
    assert await client.expect("ws:m:report-response") == {"response": ["a1"], "tx": r}
    await client.expect("ws:m:command-response")


async def test_report_errors(client):
    cases = [
        ("Nope", {}, "Report handler not found: Nope"),
        ("GetTargetById", {}, '"id"'),
        ("CountTargets", {"name": 5}, '"name"'),
        ("GadgetLabels", {"prefix": 5}, '"prefix"'),
    ]
    for report_id, params, message in cases:
        tx = await client.report(report_id, params)
        data = await client.expect("ws:m:report-error")
        assert set(data) == {"tx", "reportId", "message"}
        assert (data["tx"], data["reportId"]) == (tx, report_id)
        assert message in data["message"], (report_id, data)
    await client.ping()


# ---- Queries: errors; Derived operations; Server queries ----------------------------------


async def test_query_errors(client):
    cases = [
        ("GetNothing", "Target", {}, "Query handler not found: GetNothing"),
        ("GetAllTargets", "Scene", {}, "Target"),
        ("GetAllTargets", "NoSuchType", {}, "NoSuchType"),
        ("GetTargetsByIds", "Target", {"ids": "x"}, '"ids" must be a list of strings'),
        ("GetTargetsByQuery", "Target", {"name": 5}, '"name"'),
        ("GetTargetsByQuery", "Target", {"name": {"kind": "nope", "value": 1}}, "nope"),
        ("GetGadgetsByMinCount", "Gadget", {}, '"minCount" is required'),
        ("GetGadgetsByMinCount", "Gadget", {"minCount": "3"}, '"minCount" must be an integer'),
    ]
    for query_id, item_type, params, message in cases:
        tx = await client.query(query_id, item_type, params)
        data = await client.expect("ws:m:query-error")
        assert set(data) == {"tx", "queryId", "message"}
        assert (data["tx"], data["queryId"]) == (tx, query_id)
        assert message in data["message"], (query_id, data)
        # The TS client cancels after an error; the tx was never active, so nothing
        # happens, and the same tx can subscribe properly afterwards.
        await client.send("ws:m:query-cancel", {"tx": tx})
        await client.subscribe("GetAllTargets", "Target", tx=tx)
    tx = await client.query("GetNothing", "Target")
    assert await client.expect("ws:m:query-error") == {
        "tx": tx,
        "queryId": "GetNothing",
        "message": "Query handler not found: GetNothing",
    }


async def test_derived_queries_by_ids_and_by_query(client):
    await seed_targets("a", "b", category="x")
    await seed_targets("c", category="y")
    _, by_ids = await client.subscribe("GetTargetsByIds", "Target", {"ids": ["a", "zz"]})
    assert set(items_by_id(by_ids)) == {"a"} and by_ids["totalCount"] == 1
    _, by_q = await client.subscribe("GetTargetsByQuery", "Target", {"category": "x"})
    assert set(items_by_id(by_q)) == {"a", "b"}
    _, everything = await client.subscribe("GetTargetsByQuery", "Target", {})
    assert everything["totalCount"] == 3
    _, nulls = await client.subscribe("GetTargetsByQuery", "Target", {"category": None})
    assert nulls["totalCount"] == 3  # null matches anything
    _, starts = await client.subscribe(
        "GetTargetsByQuery", "Target", {"name": {"kind": "in", "value": ["na", "nc"]}}
    )
    assert set(items_by_id(starts)) == {"a", "c"}


async def test_foreign_keys_and_field_encoding(client):
    await client.event("SET", "Scene", {"id": "s", "name": "scene"})
    await client.event("SET", "Target", {"id": "t", "name": "a", "sceneId": "s"})
    await client.barrier()
    _, data = await client.subscribe("GetTargetsByQuery", "Target", {"sceneId": "s"})
    assert data["upserts"] == [row({"id": "t", "name": "a", "category": None, "sceneId": "s"})]
    gadget = {
        "id": "g",
        "label": "all",
        "note": "n",
        "count": 3,
        "ratio": 0.5,
        "active": True,
        "price": "1.50",
        "seenAt": "2024-01-02T03:04:05Z",
        "day": "2024-01-02",
        "at": "03:04:05",
        "token": "12345678-1234-5678-1234-567812345678",
        "extra": {"a": [1, "b", None]},
        "ownerId": None,
        "keeperId": None,
        "backupId": None,
    }
    await client.event("SET", "Gadget", gadget)
    await client.barrier()
    _, data = await client.subscribe("GetAllGadgets", "Gadget")
    assert data["upserts"] == [row(gadget, "Gadget")]


async def test_get_connected_server_returns_one_server(client):
    tx, data = await client.subscribe("GetConnectedServer", "Server")
    assert data["deletes"] == [] and data["totalCount"] == 1
    [server] = data["upserts"]
    assert server["itemType"] == "Server"
    assert set(server["item"]) == {"id", "version", "address", "port", "startedAt"}
    assert isinstance(server["item"]["id"], str)
    await client.ping()


async def test_get_peer_servers_always_answers(client):
    cases = [
        ({}, "Server"),
        ({"ids": 5, "foo": [1], "seq": 0}, None),
        ({"name": {"kind": "nope"}}, "Target"),
        ({}, ...),
    ]
    for params, item_type in cases:
        tx = new_tx()
        data = {"query": {**params, "tx": tx}, "queryId": "GetPeerServers"}
        if item_type is not ...:
            data["queryItemType"] = item_type
        await client.send("ws:m:query", data)
        assert await client.recv() == {
            "event": "ws:m:query-response",
            "data": {"tx": tx, "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0},
        }
    await client.ping()


# ---- views -------------------------------------------------------------------------------


async def test_views_mirror_queries(client):
    await seed_targets("a", "b", "c")
    w = {"offset": 0, "limit": 1}
    v = await client.query("GetAllTargets", "Target", event="ws:m:view", window=w)
    first = await client.expect("ws:m:view-response")
    assert (first["tx"], first["sequence"], first["totalCount"]) == (v, 0, 3)
    assert first["changes"] == window_order(["a"], 3, w)
    w2 = {"offset": 1, "limit": 1}
    await client.send("ws:m:view-window", {"tx": v, "window": w2})
    moved = await client.expect("ws:m:view-response")
    assert moved["deletes"] == ["a"] and set(items_by_id(moved)) == {"b"}
    await client.event("SET", "Target", {"id": "b", "name": "B"})
    changed = await client.expect("ws:m:view-response")
    assert changed["upserts"] == [row(target("b", "B"))]
    await client.send("ws:m:view-cancel", {"tx": v})
    await client.event("SET", "Target", {"id": "b", "name": "BB"})
    await client.barrier()
    bad = new_tx()
    await client.send(
        "ws:m:view", {"view": {"tx": bad}, "viewId": "NoView", "viewItemType": "Target"}
    )
    error = await client.expect("ws:m:view-error")
    assert (error["tx"], error["viewId"]) == (bad, "NoView")
    assert "NoView" in error["message"]


# ---- event batches ------------------------------------------------------------------------


async def test_event_batch_commits_valid_events_and_answers_each_invalid_one(client):
    tx, _ = await client.subscribe("GetAllTargets", "Target")
    batch = [
        {"changeType": "SET", "itemType": "Target", "item": {"id": "a", "name": "a"}, "tx": "e1"},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "b", "name": 5}, "tx": "e2"},
        {"changeType": "PATCH", "itemType": "Target", "item": {"id": "c"}, "tx": "e3"},
        {"changeType": "SET", "itemType": "Nope", "item": {"id": "d"}, "tx": "e4"},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "e", "name": "e"}, "tx": "e5"},
        {"changeType": "DEL", "itemType": "Target", "item": {"id": "zz"}, "tx": "e6"},
    ]
    await client.send("ws:m:event-batch", batch)
    errors: dict[str, dict] = {}
    items: dict[str, dict] = {}
    while set(errors) != {"e2", "e3", "e4"} or set(items) != {"a", "e"}:
        message = await client.recv()
        if message["event"] == "ws:m:event-error":
            data = message["data"]
            assert set(data) == {"tx", "itemType", "message"} and data["message"]
            errors[data["tx"]] = data
        else:
            assert message["event"] == "ws:m:query-response"
            assert message["data"]["deletes"] == []
            items.update(items_by_id(message["data"]))
    assert errors["e2"]["itemType"] == "Target" and "name" in errors["e2"]["message"]
    assert errors["e4"]["itemType"] == "Nope"
    await client.barrier()
    assert await count_rows("demo.Target") == 2


async def test_single_invalid_event_gets_event_error(client):
    await client.event("SET", "Target", {"id": "t", "name": ["a"]}, tx="bad")
    data = await client.expect("ws:m:event-error")
    assert (data["tx"], data["itemType"]) == ("bad", "Target")
    assert "name" in data["message"]
    await client.event("SET", "Target", {"id": "t"}, tx="missing")  # required field
    data = await client.expect("ws:m:event-error")
    assert data["tx"] == "missing" and "name" in data["message"]
    assert await count_rows("demo.Target") == 0


# ---- Envelope: unknown keys -----------------------------------------------------------------


async def test_unknown_keys_are_ignored(client):
    await seed_targets("x1", category="x")
    await seed_targets("y1", category="y")
    tx = new_tx()
    await client.send(
        "ws:m:query",
        {
            "query": {
                "tx": tx,
                "category": "x",
                "seq": 0,
                "createdAt": "2024-01-01T00:00:00Z",
                "userToken": "tok",
            },
            "queryId": "GetTargetsByQuery",
            "queryItemType": "Target",
            "serviceId": "svc",
        },
    )
    data = await client.expect("ws:m:query-response")
    assert set(items_by_id(data)) == {"x1"}  # reserved keys are not filters
    r = new_tx()
    await client.send(
        "ws:m:report",
        {
            "report": {"tx": r, "prefix": "zz", "bogus": 1},
            "reportId": "GadgetLabels",
            "serviceId": 1,
        },
    )
    assert await client.expect("ws:m:report-response") == {"response": [], "tx": r}
    c = new_tx()
    await client.send(
        "ws:m:command",
        {
            # (A userToken is authenticated: tests/system/test_authentication.py.)
            "command": {"tx": c, "labels": ["u"], "bogus": {"deep": [1]}},
            "commandId": "MakeGadgets",
            "serviceId": "svc",
        },
    )
    assert await client.expect("ws:m:command-response") == {"response": {"made": 1}, "tx": c}
    await client.send_message({"event": "ws:m:ping", "data": {"id": 1}, "extra": "top-level"})
    assert await client.recv() == {"event": "ws:m:ping", "data": {"id": 1}}


TARGET_FIELDS = "Target has: id, name, category, sceneId"


async def test_unknown_fields_in_query_parameters_are_errors(client):
    """GetXsByQuery / CountXs parameters are a filter: an unknown key there used to be
    ignored, so a misspelt field (`{"buyer_id": ...}`) silently matched every item (issue
    10, point 6). It is now an error that names the key, the field probably meant and the
    fields there are; the subscription does not start. A user query's own parameters are
    no filter and keep the rule of operation parameters: unknown ones are ignored."""
    await seed_targets("x1", category="x")
    await seed_targets("y1", category="y")
    tx = await client.query("GetTargetsByQuery", "Target", {"category": "x", "notAField": 5})
    assert await client.expect("ws:m:query-error") == {
        "tx": tx,
        "queryId": "GetTargetsByQuery",
        "message": f'GetTargetsByQuery: unknown field "notAField"; {TARGET_FIELDS}',
    }
    tx = await client.query("GetTargetsByQuery", "Target", {"scene_id": None})
    data = await client.expect("ws:m:query-error")
    assert data["message"] == (
        f'GetTargetsByQuery: unknown field "scene_id" (did you mean "sceneId"?); {TARGET_FIELDS}'
    )
    await client.send("ws:m:query-cancel", {"tx": tx})  # as the TS client does: a no-op
    _, data = await client.subscribe("GetTargetsByQuery", "Target", {"category": "x"}, tx=tx)
    assert set(items_by_id(data)) == {"x1"}  # the tx was free again
    r = await client.report("CountTargets", {"Category": "x"})
    assert await client.expect("ws:m:report-error") == {
        "tx": r,
        "reportId": "CountTargets",
        "message": f'CountTargets: unknown field "Category" (did you mean "category"?); '
        f"{TARGET_FIELDS}",
    }
    _, data = await client.subscribe("GetLongLabelGadgets", "Gadget", {"length": 2, "x": 1})
    assert data["totalCount"] == 0


async def test_request_data_next_to_filter_fields_is_no_filter_and_no_error(client):
    """What clients put in a query request besides the fields: the reserved keys (the
    Python client adds createdAt, the TypeScript client tx and createdAt, and seq when it
    re-sends) and the extension key serviceId, inside `query` (test_unknown_keys_are_ignored
    has serviceId in `data`)."""
    await seed_targets("x1", category="x")
    await seed_targets("y1", category="y")
    request = {
        "category": "x",
        "seq": 0,
        "createdAt": "2024-01-01T00:00:00Z",
        "userToken": "",
        "serviceId": "svc",
    }
    for event in ("ws:m:query", "ws:m:view"):
        _, data = await client.subscribe("GetTargetsByQuery", "Target", request, event=event)
        assert set(items_by_id(data)) == {"x1"}
    r = await client.report("CountTargets", request)
    assert await client.expect("ws:m:report-response") == {"response": {"count": 1}, "tx": r}


async def test_a_reserved_key_used_as_a_filter_is_a_query_error(client):
    """A reserved key holding a filter object cannot be request data (that is never an
    object): it is meant as a filter, and reserved keys never filter."""
    params = {"createdAt": {"kind": "range", "value": {"min": "2024-01-01T00:00:00Z"}}}
    tx = await client.query("GetTargetsByQuery", "Target", params)
    data = await client.expect("ws:m:query-error")
    assert data["tx"] == tx
    assert data["message"].startswith('GetTargetsByQuery: "createdAt" is reserved for request')
    assert data["message"].endswith(TARGET_FIELDS)


async def test_a_user_query_returning_an_unknown_key_is_an_error_and_logged(client, caplog):
    """A @query handler's filter holds no request data: a key that is not a field (here
    a snake_case name) is the handler's mistake. The client gets a query-error instead of
    every item, and the server log says which handler."""
    from myko_django.items import operations
    from myko_django.permissions import AllowAny

    def bad(*, label: str):
        return {"label": label, "seen_at": None}

    operations.query("GetGadgetsBadly", item="Gadget", permission=AllowAny)(bad)
    caplog.set_level(logging.ERROR, logger="myko_django")
    try:
        tx = await client.query("GetGadgetsBadly", "Gadget", {"label": "a"})
        data = await client.expect("ws:m:query-error")
    finally:
        operations.unregister("query", "GetGadgetsBadly")
    assert (data["tx"], data["queryId"]) == (tx, "GetGadgetsBadly")
    message = 'GetGadgetsBadly: unknown field "seen_at" (did you mean "seenAt"?); Gadget has: '
    assert data["message"].startswith(message)
    [record] = [r for r in caplog.records if "GetGadgetsBadly" in r.getMessage()]
    assert record.levelno == logging.ERROR and message in record.getMessage()
    assert "test_protocol" in record.getMessage()  # the handler's module
