"""A frame of many megabytes is refused by its limits without stalling the worker (issue
13, item 7): it is decoded off the event loop, so other connections' pings are answered
meanwhile, and its list over MAX_IDS gets the query error at once after decoding."""

from __future__ import annotations

import asyncio
import json
import time

import msgpack
import pytest

from myko_django.server.connection import Connection
from myko_django.wire import codecs
from tests.support.memory import MemoryBackend, MemoryDatabase, MemoryHub


@pytest.fixture
def hub():
    db = MemoryDatabase()
    h = MemoryHub(db)
    h.test_db = db
    yield h
    h.close()


def big_query(n: int = 500_000) -> dict:
    ids = [f"{i:020d}" for i in range(n)]  # ~12 MB of JSON
    query = {"tx": "big", "ids": ids}
    return {
        "event": "ws:m:query",
        "data": {"query": query, "queryId": "GetTargetsByIds", "queryItemType": "Target"},
    }


@pytest.mark.parametrize("fmt", [codecs.JSON, codecs.MSGPACK])
async def test_a_12_mb_query_is_refused_while_pings_are_answered(hub, fmt):
    big: list = []
    small: list = []
    heavy = Connection(hub, MemoryBackend(hub.test_db), big.append)
    other = Connection(hub, MemoryBackend(hub.test_db), small.append)
    message = big_query()
    if fmt == codecs.JSON:
        frame = json.dumps(message)
        receiving = heavy.receive_text(frame)
    else:
        frame = msgpack.packb(message)
        receiving = heavy.receive_bytes(frame)
    assert len(frame) > 10_000_000
    started = time.perf_counter()
    task = asyncio.get_running_loop().create_task(receiving)
    await asyncio.sleep(0)  # the big frame is being decoded
    await other.receive_text('{"event":"ws:m:ping","data":{"id":"meanwhile"}}')
    # Before: the big frame was decoded on the loop, so its error was out before any
    # other connection was heard.
    assert small == ['{"event":"ws:m:ping","data":{"id":"meanwhile"}}']
    assert big == []
    await asyncio.wait_for(task, 10)
    assert time.perf_counter() - started < 5
    [reply] = big
    decoded = json.loads(reply) if fmt == codecs.JSON else codecs.decode_binary(reply, fmt)
    assert decoded == {
        "event": "ws:m:query-error",
        "data": {
            "tx": "big",
            "queryId": "GetTargetsByIds",
            "message": 'Limit exceeded: 500000 ids in "ids", over 10000 (MAX_IDS); ask in parts',
        },
    }
    await heavy.close()
    await other.close()
