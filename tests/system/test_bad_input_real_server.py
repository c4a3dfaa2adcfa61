"""Bad input (docs/protocol.md, "Bad input") over a real socket to a real daphne: garbage
frames never break the connection or the worker (the in-process cases are in
tests/asgi/test_bad_input.py)."""

import contextlib
import json

import pytest

from tests.support.data import count_rows, row, target
from tests.support.wsclient import WsClient, new_tx

pytestmark = [pytest.mark.django_db(transaction=True)]


def env(event: str, data) -> dict:
    return {"event": event, "data": data}


async def test_real_daphne_survives_garbage(daphne_server):
    async with (
        await WsClient.socket(daphne_server, "json", timeout=5) as text_ws,
        await WsClient.socket(daphne_server, "msgpack", timeout=5) as bin_ws,
    ):
        for ws, binary in ((text_ws, False), (bin_ws, True)):
            if binary:
                await ws.send("ws:m:ping", {"id": "first"})  # fixes MessagePack
                assert await ws.recv() == env("ws:m:ping", {"id": "first"})
            for garbage in (
                "{not json",
                b"\xc1\x00garbage",
                "[1,2]",
                "5",
                json.dumps(env("ws:m:nope", {})),
                json.dumps(env("ws:m:query", [1])),
                json.dumps(env("ws:m:query-response", {"tx": "q"})),
                "\x00" * 1000,
                b"\xde\x00",
            ):
                await ws.send_raw(garbage)
            tx = new_tx()
            await ws.query("GetAllTargets", "Target", tx=tx)
            first = await ws.recv()
            assert first["data"] == {
                "tx": tx,
                "sequence": 0,
                "upserts": first["data"]["upserts"],
                "deletes": [],
                "totalCount": len(first["data"]["upserts"]),
            }
            await ws.send_raw(b"\xc1" * 100)
            item_id = f"real-{int(binary)}"
            await ws.event("SET", "Target", {"id": item_id, "name": "a"})
            update = await ws.recv()
            assert update["data"]["sequence"] == 1
            assert update["data"]["upserts"] == [row(target(item_id, "a"))]
            await ws.send("ws:m:ping", {"id": "end", "timestamp": 5})
            assert await ws.recv() == env("ws:m:ping", {"id": "end", "timestamp": 5})
    assert await count_rows("demo.Target") == 2


async def test_real_daphne_lone_surrogate_does_not_mute_the_connection(daphne_server):
    async with await WsClient.socket(daphne_server) as ws:
        await ws.send_raw('{"event":"ws:m:ping","data":{"id":"\\ud800"}}')
        await ws.send("ws:m:ping", {"id": "after"})
        frames = []
        with contextlib.suppress(TimeoutError):
            while True:
                frames.append(await ws.recv(timeout=1))
        assert env("ws:m:ping", {"id": "after"}) in frames, frames
