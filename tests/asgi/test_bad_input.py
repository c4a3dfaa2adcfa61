"""Bad input (docs/protocol.md, "Bad input"): ignored or answered with the matching
*-error, never fatal.

After every bad input the same connection must still answer a ping and its existing
subscription must still receive updates. Each test runs in JSON and in MessagePack; in
MessagePack mode every well-formed frame the client sends is binary, and text frames are
still JSON (docs/protocol.md, "Formats").
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from tests.support.data import count_rows, db, row, target
from tests.support.wsclient import WsClient, new_tx

pytestmark = [pytest.mark.django_db(transaction=True)]

MB10 = 10 * 1024 * 1024


@dataclass
class Raw:
    """A frame sent exactly as given (text or bytes), whatever the connection's format."""

    frame: str | bytes


class Watched:
    """A connection with a live GetAllTargets subscription, to prove it is still healthy."""

    def __init__(self, client: WsClient, tx: str) -> None:
        self.c = client
        self.tx = tx
        self.sequence = 0
        self.n = 0

    async def send_bad(self, bad: Any) -> None:
        if isinstance(bad, Raw):
            await self.c.send_raw(bad.frame)
        else:
            await self.c.send_message(bad)

    async def healthy(self, after: str, allowed: frozenset[str] = frozenset()) -> list[dict]:
        """A new Target reaches the subscription with the next sequence, then a ping is
        answered. Messages of the `allowed` events may come first; they are returned."""
        self.n += 1
        item_id = f"health-{self.n}"
        extra: list[dict] = []
        try:
            await self.c.event("SET", "Target", {"id": item_id, "name": "ok"})
            while True:
                message = await self.c.recv()
                if message["event"] in allowed:
                    extra.append(message)
                    continue
                assert message["event"] == "ws:m:query-response", message
                break
            data = message["data"]
            self.sequence += 1
            assert data["tx"] == self.tx and data["sequence"] == self.sequence, data
            assert data["upserts"] == [row(target(item_id, "ok"))], data
            await self.c.ping(f"after {after}"[:50])
        except BaseException as exc:
            raise AssertionError(f"connection unhealthy after {after}: {exc!r:.500}") from exc
        return extra


@pytest.fixture
async def watched(asgi_app, fmt):
    c = await WsClient.asgi(asgi_app, fmt)
    tx, _ = await c.subscribe("GetAllTargets", "Target")
    w = Watched(c, tx)
    yield w
    await c.close()


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def env(event: str, data: Any) -> dict:
    return {"event": event, "data": data}


def q(tx: Any = ..., **data: Any) -> dict:
    """A ws:m:query envelope; tx=... leaves the tx out."""
    query = {} if tx is ... else {"tx": tx}
    return env("ws:m:query", {"query": query, "queryItemType": "Target", **data})


# Each case: (name, what to send, expected). Expected None: nothing at all; an event name:
# exactly that error message with {tx} of the bad message; "maybe:<event>": that reply is
# allowed but not required ("Bad input" asks for it only where a usable tx exists).
IGNORED = None


def cases_undecodable() -> list:
    rnd = random.Random(8)
    valid = msgpack.packb(env("ws:m:ping", {"id": "x", "timestamp": 1}))
    return [
        ("random bytes", Raw(b"\xc1" + rnd.randbytes(200)), IGNORED),
        ("truncated msgpack", Raw(valid[:-4]), IGNORED),
        ("truncated msgpack map header", Raw(b"\xde\x00"), IGNORED),
        ("msgpack map with integer keys", Raw(msgpack.packb({1: 2, "event": "ws:m:ping"})), None),
        ("msgpack bin value", Raw(msgpack.packb(env("ws:m:ping", b"\x00\x01"))), IGNORED),
        ("msgpack ext value", Raw(msgpack.packb(env("ws:m:ping", msgpack.ExtType(5, b"x")))), None),
        ("not JSON", Raw("{not json"), IGNORED),
        ("almost the switch text", Raw("myko:switch-to-cbor"), IGNORED),
        ("NUL text", Raw("\x00"), IGNORED),
        (
            "deep JSON (100k)",
            Raw('{"event":"ws:m:ping","data":' + "[" * 100_000 + "]" * 100_000 + "}"),
            None,
        ),
        (
            "deep msgpack (100k)",
            Raw(b"\x82\xa5event\xa9ws:m:ping\xa4data" + b"\x91" * 100_000 + b"\x90"),
            None,
        ),
        ("JSON with trailing garbage", Raw('{"event":"ws:m:ping","data":{}} x'), IGNORED),
    ]


def cases_not_envelopes() -> list:
    return [
        ("a list", [1, 2], IGNORED),
        ("a string", "x", IGNORED),
        ("a number", 5, IGNORED),
        ("null", None, IGNORED),
        ("true", True, IGNORED),
        ("empty object", {}, IGNORED),
        ("no event", {"data": {"query": {"tx": "t"}}}, IGNORED),
        ("event not a string", {"event": 5, "data": {}}, IGNORED),
        ("event null", {"event": None, "data": {}}, IGNORED),
        ("event a list", {"event": ["ws:m:ping"], "data": {}}, IGNORED),
        ("unknown event", env("ws:m:nope", {"tx": "t"}), IGNORED),
        ("empty event name", env("", {}), IGNORED),
        ("upstream-looking unknown event", env("ws:m:query-refresh", {"tx": "t"}), IGNORED),
        ("JSON list as text", Raw("[1,2]"), IGNORED),
        ("JSON string as text", Raw('"x"'), IGNORED),
        ("JSON number as text", Raw("5"), IGNORED),
    ]


def cases_queries(tx: str) -> list:
    other = new_tx("bad")
    return [
        ("query data a list", env("ws:m:query", [1]), IGNORED),
        ("query data a string", env("ws:m:query", "x"), IGNORED),
        ("query without data", {"event": "ws:m:query"}, IGNORED),
        (
            "query not an object",
            env("ws:m:query", {"query": "x", "queryId": "GetAllTargets"}),
            None,
        ),
        ("query without tx", q(queryId="GetAllTargets"), IGNORED),
        ("query tx a number", q(5, queryId="GetAllTargets"), IGNORED),
        ("query without queryId", q(other + "a"), "ws:m:query-error"),
        ("queryId a number", q(other + "b", queryId=5), "ws:m:query-error"),
        ("queryId a list", q(other + "c", queryId=["GetAllTargets"]), "ws:m:query-error"),
        (
            "queryItemType an object",
            q(other + "d", queryId="GetAllTargets", queryItemType={}),
            "ws:m:query-error",
        ),
        (
            "subscribe window a string",
            q(other + "e", queryId="GetAllTargets", window="x"),
            "ws:m:query-error",
        ),
        (
            "subscribe window negative",
            q(other + "f", queryId="GetAllTargets", window={"offset": -1, "limit": 1}),
            "ws:m:query-error",
        ),
        ("view data a list", env("ws:m:view", [1]), IGNORED),
        ("view without tx", env("ws:m:view", {"view": {}, "viewId": "GetAllTargets"}), IGNORED),
        ("view without viewId", env("ws:m:view", {"view": {"tx": other + "g"}}), "ws:m:view-error"),
        ("window data a list", env("ws:m:query-window", [tx]), IGNORED),
        ("window without window", env("ws:m:query-window", {"tx": tx}), IGNORED),
        ("window tx a number", env("ws:m:query-window", {"tx": 5, "window": None}), IGNORED),
        ("cancel data a list", env("ws:m:query-cancel", [tx]), IGNORED),
        ("cancel tx a number", env("ws:m:query-cancel", {"tx": 5}), IGNORED),
        ("cancel without data", {"event": "ws:m:query-cancel"}, IGNORED),
        ("report-cancel tx a list", env("ws:m:report-cancel", {"tx": [tx]}), IGNORED),
        ("view-cancel data a string", env("ws:m:view-cancel", tx), IGNORED),
    ]


def cases_windows(tx: str) -> list:
    """Bad windows for the watched (active, unwindowed) subscription: query-error {tx}."""
    bad = [
        {"offset": -1, "limit": 2},
        {"offset": 0, "limit": -2},
        {"offset": 0, "limit": "2"},
        {"offset": "0", "limit": 2},
        {"offset": True, "limit": 2},
        {"offset": 0, "limit": False},
        {"offset": 1.5, "limit": 2},
        {"offset": 0, "limit": 2.0},
        {"offset": 0},
        {"offset": 0, "limit": None},
        {"offset": None, "limit": 2},
        [0, 2],
        "0:2",
        5,
    ]
    return [
        (f"window {w!r}", env("ws:m:query-window", {"tx": tx, "window": w}), "ws:m:query-error")
        for w in bad
    ]


def cases_reports() -> list:
    tx = new_tx("bad")
    return [
        ("report data a list", env("ws:m:report", [1]), IGNORED),
        (
            "report not an object",
            env("ws:m:report", {"report": 5, "reportId": "CountAllTargets"}),
            None,
        ),
        (
            "report without tx",
            env("ws:m:report", {"report": {}, "reportId": "CountAllTargets"}),
            None,
        ),
        ("report tx a number", env("ws:m:report", {"report": {"tx": 1}, "reportId": "X"}), IGNORED),
        (
            "report without reportId",
            env("ws:m:report", {"report": {"tx": tx + "a"}}),
            "ws:m:report-error",
        ),
        (
            "reportId a number",
            env("ws:m:report", {"report": {"tx": tx + "b"}, "reportId": 7}),
            "ws:m:report-error",
        ),
        (
            "report params a list",
            env(
                "ws:m:report",
                {"report": {"tx": tx + "c", "id": ["t"]}, "reportId": "GetTargetById"},
            ),
            "ws:m:report-error",
        ),
    ]


def cases_commands() -> list:
    tx = new_tx("bad")
    return [
        ("command data a list", env("ws:m:command", [1]), IGNORED),
        ("command data a string", env("ws:m:command", "x"), IGNORED),
        ("command without data", {"event": "ws:m:command"}, IGNORED),
        (
            "command not an object",
            env("ws:m:command", {"command": "x", "commandId": "MakeGadgets"}),
            None,
        ),
        (
            "command a list",
            env("ws:m:command", {"command": [tx], "commandId": "MakeGadgets"}),
            None,
        ),
        (
            "command without tx",
            env("ws:m:command", {"command": {}, "commandId": "DeleteTargets"}),
            None,
        ),
        (
            "command tx a number",
            env("ws:m:command", {"command": {"tx": 1}, "commandId": "X"}),
            None,
        ),
        (
            "command without commandId",
            env("ws:m:command", {"command": {"tx": tx + "a"}}),
            "ws:m:command-error",
        ),
        (
            "commandId an object",
            env("ws:m:command", {"command": {"tx": tx + "b"}, "commandId": {}}),
            "ws:m:command-error",
        ),
        (
            "command param wrong type",
            env(
                "ws:m:command",
                {"command": {"tx": tx + "c", "ids": [1]}, "commandId": "DeleteTargets"},
            ),
            "ws:m:command-error",
        ),
        (
            "command param missing",
            env("ws:m:command", {"command": {"tx": tx + "d"}, "commandId": "RenameTarget"}),
            "ws:m:command-error",
        ),
    ]


def cases_events() -> list:
    tx = new_tx("bad")

    def ev(**kw):
        return env("ws:m:event", {"changeType": "SET", "itemType": "Target", "tx": tx, **kw})

    return [
        ("event data a list", env("ws:m:event", [1]), "maybe:ws:m:event-error"),
        ("event data a string", env("ws:m:event", "x"), "maybe:ws:m:event-error"),
        ("event without data", {"event": "ws:m:event"}, "maybe:ws:m:event-error"),
        ("event without item", ev(), "ws:m:event-error"),
        ("event item a list", ev(item=[{"id": "x"}]), "ws:m:event-error"),
        ("event item without id", ev(item={"name": "x"}), "ws:m:event-error"),
        ("event item id a number", ev(item={"id": 5, "name": "x"}), "ws:m:event-error"),
        ("event item id null", ev(item={"id": None, "name": "x"}), "ws:m:event-error"),
        ("event name a list", ev(item={"id": "x", "name": ["a"]}), "ws:m:event-error"),
        ("event name too long", ev(item={"id": "x", "name": "n" * 201}), "ws:m:event-error"),
        (
            "event sceneId a number",
            ev(item={"id": "x", "name": "a", "sceneId": 5}),
            "ws:m:event-error",
        ),
        (
            "event sceneId unknown",
            ev(item={"id": "x", "name": "a", "sceneId": "nope"}),
            "ws:m:event-error",
        ),
        (
            "event changeType PATCH",
            ev(changeType="PATCH", item={"id": "x", "name": "a"}),
            "ws:m:event-error",
        ),
        (
            "event changeType missing",
            env("ws:m:event", {"itemType": "Target", "tx": tx, "item": {"id": "x"}}),
            "ws:m:event-error",
        ),
        ("event itemType unknown", ev(itemType="Nope", item={"id": "x"}), "ws:m:event-error"),
        ("event itemType a number", ev(itemType=5, item={"id": "x"}), "ws:m:event-error"),
        ("event-batch data an object", env("ws:m:event-batch", {"changeType": "SET"}), IGNORED),
        ("event-batch data a string", env("ws:m:event-batch", "x"), IGNORED),
        ("event-batch of junk", env("ws:m:event-batch", [1, "x", None]), "maybe:ws:m:event-error"),
    ]


def cases_client_only(tx: str) -> list:
    fake = {"tx": tx, "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0}
    return [
        ("client sends query-response", env("ws:m:query-response", fake), IGNORED),
        ("client sends view-response", env("ws:m:view-response", fake), IGNORED),
        (
            "client sends query-error",
            env("ws:m:query-error", {"tx": tx, "queryId": "x", "message": "m"}),
            None,
        ),
        (
            "client sends report-response",
            env("ws:m:report-response", {"response": 1, "tx": tx}),
            None,
        ),
        (
            "client sends report-error",
            env("ws:m:report-error", {"tx": tx, "reportId": "x", "message": "m"}),
            None,
        ),
        (
            "client sends command-response",
            env("ws:m:command-response", {"response": None, "tx": tx}),
            None,
        ),
        (
            "client sends command-error",
            env("ws:m:command-error", {"tx": tx, "commandId": "x", "message": "m"}),
            None,
        ),
        (
            "client sends event-error",
            env("ws:m:event-error", {"tx": tx, "itemType": "Target", "message": "m"}),
            None,
        ),
        (
            "client sends protocol-switch",
            env("ws:m:protocol-switch", {"protocol": "json"}),
            IGNORED,
        ),
        (
            "client sends view-error",
            env("ws:m:view-error", {"tx": tx, "viewId": "x", "message": "m"}),
            None,
        ),
    ]


GROUPS = {
    "undecodable": lambda tx: cases_undecodable(),
    "not-envelopes": lambda tx: cases_not_envelopes(),
    "queries": cases_queries,
    "windows": cases_windows,
    "reports": lambda tx: cases_reports(),
    "commands": lambda tx: cases_commands(),
    "events": lambda tx: cases_events(),
    "client-only": cases_client_only,
}


@pytest.mark.parametrize("group", list(GROUPS))
async def test_bad_input_is_ignored_or_answered_and_never_fatal(watched, group):
    for name, bad, expected in GROUPS[group](watched.tx):
        await watched.send_bad(bad)
        if expected is None:
            await watched.healthy(name)
        elif expected.startswith("maybe:"):
            await watched.healthy(name, frozenset({expected[6:]}))
        else:
            try:
                message = await watched.c.recv()
                assert message["event"] == expected, message
                data = message["data"]
                sent = bad["data"]
                sent_tx = next(
                    (sent[k]["tx"] for k in ("query", "view", "report", "command") if k in sent),
                    sent.get("tx"),
                )
                assert data["tx"] == sent_tx, data
                assert isinstance(data["message"], str) and 0 < len(data["message"]) < 2000
            except BaseException as exc:
                raise AssertionError(f"{name}: wanted {expected}: {exc!r:.500}") from exc
            await watched.healthy(name)
    # Nothing committed was touched: only the health-check rows exist.
    assert await count_rows("demo.Target") == watched.n


async def test_bad_window_leaves_the_subscription_as_it_was(watched):
    await watched.c.send("ws:m:query-window", {"tx": watched.tx, "window": {"offset": -1}})
    await watched.c.expect("ws:m:query-error")
    await watched.healthy("bad window")  # still unwindowed: the new row is an upsert
    w = {"offset": 0, "limit": 1}
    await watched.c.send("ws:m:query-window", {"tx": watched.tx, "window": w})
    data = await watched.c.expect("ws:m:query-response")
    assert data["window"] == w and data["sequence"] == watched.sequence + 1


async def test_ten_megabyte_strings_get_clear_errors(watched):
    c = watched.c
    tx = await c.command("MakeGadgets", {"labels": ["x" * MB10]})
    error = await c.expect("ws:m:command-error")
    assert error["tx"] == tx and error["commandId"] == "MakeGadgets"
    assert "label" in error["message"] and len(error["message"]) < 2000
    await watched.healthy("10 MB command parameter")
    await c.event("SET", "Target", {"id": "big", "name": "x" * MB10}, tx="big-event")
    error = await c.expect("ws:m:event-error")
    assert (error["tx"], error["itemType"]) == ("big-event", "Target")
    assert "name" in error["message"] and len(error["message"]) < 2000
    await watched.healthy("10 MB item field")
    # A 10 MB string as a query parameter is just a query that matches nothing.
    qtx, data = await c.subscribe("GetTargetsByQuery", "Target", {"name": "y" * MB10})
    assert data["totalCount"] == 0
    await watched.healthy("10 MB query parameter")
    await c.send("ws:m:ping", {"id": "z" * MB10, "timestamp": 1})
    echo = await c.expect("ws:m:ping")
    assert len(echo["id"]) == MB10
    await watched.healthy("10 MB ping")
    assert await count_rows("testapp.Gadget") == 0


async def test_event_batch_with_one_bad_event_commits_the_others(watched):
    batch = [
        {"changeType": "SET", "itemType": "Target", "item": {"id": "a", "name": "a"}},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "b", "name": 1}, "tx": "b"},
        {"changeType": "SET", "itemType": "Target", "item": {"id": "c", "name": "c"}},
    ]
    await watched.c.send("ws:m:event-batch", batch)
    seen: set[str] = set()
    errors = []
    while seen != {"a", "c"}:
        message = await watched.c.recv()
        if message["event"] == "ws:m:event-error":
            errors.append(message["data"])
            continue
        data = message["data"]
        watched.sequence = data["sequence"]
        seen |= {u["item"]["id"] for u in data["upserts"]}
    if not errors:
        errors.append(await watched.c.expect("ws:m:event-error"))
    assert [e["tx"] for e in errors] == ["b"]
    await watched.healthy("a batch with a bad event")


# ---- frame size (Connecting) ----------------------------------------------------------


async def test_frame_over_the_size_limit_closes_with_1009(asgi_app, fmt, settings):
    settings.MYKO = {**settings.MYKO, "MAX_MESSAGE_SIZE": 1024}
    bystander = await WsClient.asgi(asgi_app, fmt)
    tx, _ = await bystander.subscribe("GetAllTargets", "Target")
    watched = Watched(bystander, tx)
    # Exactly at the limit is accepted.
    ping = {"event": "ws:m:ping", "data": {"id": "", "timestamp": 1}}
    while len(frame := bystander.encode(ping)) < 1024:
        ping["data"]["id"] += "x"
    assert len(frame) == 1024
    await bystander.send_raw(frame)
    assert await bystander.recv() == ping
    for big in ("x" * 2000, b"\x81" + b"\x00" * 2000):
        c = await WsClient.asgi(asgi_app, fmt)
        await c.ping()
        await c.send_raw(big)
        assert await c.wait_closed(5) == 1009
        await watched.healthy(f"another connection sent {len(big)} bytes")
    await bystander.close()


async def test_multibyte_text_frame_over_the_byte_limit_closes_with_1009(asgi_app, fmt, settings):
    settings.MYKO = {**settings.MYKO, "MAX_MESSAGE_SIZE": 1024}
    c = await WsClient.asgi(asgi_app, fmt)
    text = json.dumps(env("ws:m:ping", {"id": "é" * 600}), ensure_ascii=False)
    assert len(text) < 1024 < len(text.encode())
    await c.send_raw(text)
    assert await c.wait_closed(5) == 1009


# ---- values JSON/MessagePack cannot carry both ways: the connection must survive --------


async def test_nan_and_infinity_in_a_text_frame_do_not_kill_the_connection(watched):
    for literal in ("NaN", "Infinity", "-Infinity"):
        await watched.c.send_raw('{"event":"ws:m:ping","data":{"id":"n","x":' + literal + "}}")
        await watched.healthy(f"ping with {literal}", frozenset({"ws:m:ping"}))


async def test_huge_integer_in_a_text_frame_does_not_kill_the_connection(watched):
    big = 10**30
    await watched.c.send_raw('{"event":"ws:m:ping","data":{"id":"n","x":' + str(big) + "}}")
    await watched.healthy("ping with 10**30", frozenset({"ws:m:ping"}))
    tx = new_tx()
    window = {"offset": big, "limit": 1}
    query = env("ws:m:query", {"query": {"tx": tx}, "queryId": "GetAllScenes", "window": window})
    await watched.c.send_raw(json.dumps(query))
    reply = await watched.c.recv()
    assert (
        reply["event"] in ("ws:m:query-response", "ws:m:query-error") and reply["data"]["tx"] == tx
    )
    await watched.healthy("window offset 10**30")


async def test_lone_surrogate_in_a_text_frame_does_not_kill_the_connection(watched):
    await watched.c.send_raw('{"event":"ws:m:ping","data":{"id":"\\ud800"}}')
    await watched.healthy("ping with a lone surrogate", frozenset({"ws:m:ping"}))


async def test_lone_surrogate_escape_makes_the_frame_undecodable(watched):
    """A lone surrogate is not Unicode: no database or socket can take it, so the frame is
    refused as undecodable (docs/protocol.md, "Bad input") and nothing of it is written."""
    await watched.c.send_raw(
        '{"event":"ws:m:event-batch","data":['
        '{"changeType":"SET","itemType":"Target","item":{"id":"ok","name":"fine"}},'
        '{"changeType":"SET","itemType":"Target","tx":"s","item":{"id":"s","name":"\\ud800"}}]}'
    )
    await watched.healthy("a batch with a lone surrogate")
    assert await count_rows("demo.Target", id__in=["ok", "s"]) == 0
    # A correctly paired surrogate escape is an ordinary character.
    await watched.c.send_raw(
        '{"event":"ws:m:event","data":{"changeType":"SET","itemType":"Target",'
        '"item":{"id":"pair","name":"\\ud83d\\ude00"}}}'
    )
    message = await watched.c.expect("ws:m:query-response")
    assert message["upserts"][0]["item"]["name"] == "\U0001f600"
    watched.sequence += 1


async def test_deep_nesting_does_not_kill_the_connection(watched, fmt):
    for depth in (500, 990, 1000, 1020):
        message = env("ws:m:ping", {"id": "deep", "x": nested(depth)})
        if fmt == "json":
            inner = "[" * depth + "]" * depth
            await watched.c.send_raw('{"event":"ws:m:ping","data":{"id":"deep","x":' + inner + "}}")
        else:
            await watched.c.send_raw(msgpack.packb(message))
        await watched.healthy(f"nesting {depth}", frozenset({"ws:m:ping"}))


async def test_deeply_nested_query_parameter_does_not_kill_the_connection(watched, fmt):
    """A 700-deep JSON-field filter once crashed the filter compiler (RecursionError)."""
    for depth in (150, 700):
        data = {
            "query": {"tx": f"deep{depth}", "extra": nested(depth)},
            "queryId": "GetGadgetsByQuery",
            "queryItemType": "Gadget",
        }
        if fmt == "json":
            inner = "[" * depth + "]" * depth
            frame = json.dumps(env("ws:m:query", data)).replace(json.dumps(nested(depth)), inner)
            await watched.c.send_raw(frame)
        else:
            await watched.c.send_raw(msgpack.packb(env("ws:m:query", data)))
        await watched.healthy(f"a query nested {depth} deep", frozenset({"ws:m:query-error"}))


async def test_result_a_format_cannot_carry_ends_that_subscription_with_an_error(watched, fmt):
    """A JSON field holding a 65-bit integer, written through the ORM, cannot be sent as
    MessagePack: its subscribers get a query-error, not a silent gap."""
    from tests.testapp.models import Gadget

    tx, _ = await watched.c.subscribe("GetAllGadgets", "Gadget")
    await db(Gadget.objects.create, id="big", label="b", extra={"n": 2**70})
    message = await watched.c.recv()
    if fmt == "json":
        assert message["event"] == "ws:m:query-response", message
        assert message["data"]["upserts"][0]["item"]["extra"] == {"n": 2**70}
    else:
        assert message["event"] == "ws:m:query-error", message
        assert message["data"]["tx"] == tx and message["data"]["queryId"] == "GetAllGadgets"
        await db(lambda: Gadget.objects.filter(pk="big").update(label="c"))
    await watched.healthy("an unencodable result")


async def test_non_finite_float_in_an_item_is_rejected(watched, fmt):
    item = {"id": "g", "label": "x", "ratio": float("nan")}
    message = env(
        "ws:m:event", {"changeType": "SET", "itemType": "Gadget", "item": item, "tx": "n"}
    )
    if fmt == "json":
        await watched.c.send_raw(json.dumps(message))  # Python writes NaN
    else:
        await watched.c.send_message(message)
    error = await watched.c.expect("ws:m:event-error", timeout=2)
    assert (error["tx"], error["itemType"]) == ("n", "Gadget")
    await watched.healthy("NaN item")
    assert await count_rows("testapp.Gadget") == 0


# ---- a client that vanishes --------------------------------------------------------------


async def test_client_vanishing_mid_command_still_commits_and_leaves_no_subscriptions(
    asgi_app, fmt
):
    from myko_django.server.hub import _hubs

    c = await WsClient.asgi(asgi_app, fmt)
    await c.subscribe("GetAllGadgets", "Gadget")
    await c.report("CountAllGadgets")
    await c.expect("ws:m:report-response")
    await c.query("GetAllTargets", "Target", event="ws:m:view", window={"offset": 0, "limit": 5})
    await c.expect("ws:m:view-response")
    runtime = _hubs[asyncio.get_running_loop()]
    assert runtime.engine.stats()["subscriptions"] == 3
    tx = await c.command("SlowCount", {"label": "vanish", "wait": 0.5})
    await asyncio.sleep(0.15)  # the command is running
    await c.close()
    assert runtime.engine.stats()["subscriptions"] == 0
    assert not runtime.sinks

    async def committed():
        return await count_rows("myko_django.Event", tx=tx) == 1

    assert await _until(committed)
    assert await count_rows("testapp.Gadget", label="vanish") == 1
    assert await count_rows("myko_django.CommandResult", tx=tx) == 1
    # The committed row is served to the next client.
    other = await WsClient.asgi(asgi_app, fmt)
    _, data = await other.subscribe("GetAllGadgets", "Gadget")
    assert [u["item"]["label"] for u in data["upserts"]] == ["vanish"]
    # A retry is idempotent for a signed-in user or with a UUID tx; an anonymous client's
    # short tx belongs to its connection (issue 13, item 9): here it is another command.
    await other.command("SlowCount", {"label": "vanish"}, tx=tx)
    assert (await other.expect("ws:m:query-response"))["totalCount"] == 2
    assert await other.expect("ws:m:command-response") == {"response": 2, "tx": tx}
    await other.close()
    assert runtime.engine.stats()["subscriptions"] == 0


async def _until(predicate, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
