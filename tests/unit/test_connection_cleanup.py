"""What a closed connection leaves behind, and answers nobody is left to read (issue 13,
items 5 and 11): nothing of it stays in the engine or the hub, no report subscribes it
after it closed, and a command that fails after it closed raises no "Task exception was
never retrieved". Against `Connection` with the in-memory backend (tests/support/memory.py).
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from myko_django.wire import codecs
from tests.support.memory import MemoryBackend, MemoryDatabase, MemoryHub, target
from tests.support.wsclient import ConnectionTransport, WsClient


async def settle(turns: int = 40) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


@pytest.fixture
def db() -> MemoryDatabase:
    return MemoryDatabase()


@pytest.fixture
def hub(db):
    h = MemoryHub(db)
    yield h
    h.close()


@pytest.fixture
def backend(db) -> MemoryBackend:
    return MemoryBackend(db)


def client_of(hub, backend, fmt=codecs.JSON) -> WsClient:
    return WsClient(ConnectionTransport(hub, backend), fmt)


def engine_state(engine, conn) -> dict:
    return {
        "subs": [k for k in engine._subs if k[0] is conn],
        "by_conn": conn in engine._by_conn,
        "lives": len(engine._lives),
        "report_groups": len(engine._report_groups),
    }


async def test_empty_ids_and_its_neighbours_are_freed_on_close(hub, backend, db):
    """Issue 13, item 5: `GetTargetsByIds` with `ids: []` next to other subscriptions of
    the same connection; closing it frees them all and ends its worker task."""
    db.commit([("SET", "Target", target("a"))])
    c = client_of(hub, backend)
    await c.subscribe("GetTargetsByIds", "Target", params={"ids": []})
    await c.subscribe("GetTargetsByIds", "Target", params={"ids": ["a"]})
    await c.subscribe("GetAllTargets", "Target")
    await c.report("CountAllTargets")
    await c.expect("ws:m:report-response")
    conn = c.transport.conn
    worker = conn._worker
    await c.close()
    assert engine_state(hub.engine, conn) == {
        "subs": [],
        "by_conn": False,
        "lives": 0,
        "report_groups": 0,
    }
    assert conn not in hub.sinks
    assert worker.done()


@pytest.mark.timeout(10)
async def test_a_report_whose_store_loads_does_not_subscribe_a_closed_connection(hub, backend):
    hub.load_gate = asyncio.Event()
    c = client_of(hub, backend)
    conn = c.transport.conn
    # A report waits for its stores before it answers: sent as the endpoint would, in order,
    # but here in a task so the test can close the connection meanwhile.
    sending = asyncio.get_running_loop().create_task(c.report("CountAllTargets"))
    await settle()
    await c.close()  # while the Target store still loads
    hub.load_gate.set()
    await settle()
    await asyncio.wait_for(sending, 5)
    # Before: the report subscribed the closed connection, which the engine then kept
    # (with its live result and report group) for as long as the process ran.
    assert engine_state(hub.engine, conn) == {
        "subs": [],
        "by_conn": False,
        "lives": 0,
        "report_groups": 0,
    }


async def test_a_command_that_fails_after_its_connection_closed_is_not_noise(hub, backend):
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        backend.command_gate = asyncio.Event()
        c = client_of(hub, backend)
        await c.command("NoSuchCommand")  # rejected, once the gate opens
        await settle()
        await c.close()
        backend.command_gate.set()
        await settle()
        gc.collect()
        await settle()
    finally:
        loop.set_exception_handler(previous)
    assert [u.get("message") for u in unhandled] == []


@pytest.mark.parametrize("fmt", [codecs.JSON, codecs.MSGPACK, codecs.CBOR])
async def test_a_ping_is_always_answered(hub, backend, fmt):
    """Issue 13, item 11: a ping holding what the connection's format cannot carry (NaN
    or an infinity in JSON) is answered with those values as null, not left unanswered."""
    c = client_of(hub, backend, fmt)
    if fmt == codecs.JSON:
        await c.send_raw('{"event":"ws:m:ping","data":{"id":"p","x":NaN,"y":[Infinity,1.5]}}')
        assert await c.recv() == {
            "event": "ws:m:ping",
            "data": {"id": "p", "x": None, "y": [None, 1.5]},
        }
    else:
        await c.send("ws:m:ping", {"id": "p", "x": float("inf")})
        answer = await c.recv()
        assert answer == {"event": "ws:m:ping", "data": {"id": "p", "x": float("inf")}}
    await c.close()
