"""Review of `Connection.set_user` (issue 9): a subscription that is starting while the
connection's user changes must end up checked for the new user, never kept as the old
user's. No Django: the in-memory backend, with a permission rule of its own."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from myko_django.items.errors import OperationError
from myko_django.server.connection import Connection
from tests.support.memory import MemoryBackend, MemoryDatabase, MemoryHub, target


class OnlyAlice(MemoryBackend):
    """Only the user "alice" may query and report; anyone else is denied."""

    def resolve_query(self, query_id: Any, item_type: Any, request: Any, user: Any = None):
        if user != "alice":
            raise OperationError(f"Permission denied: {user or 'anonymous'} may not view")
        return super().resolve_query(query_id, item_type, request, user)

    def resolve_report(self, report_id: Any, request: Any, user: Any = None):
        if user != "alice":
            raise OperationError(f"Permission denied: {user or 'anonymous'} may not view")
        return super().resolve_report(report_id, request, user)


async def settle(turns: int = 40) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def sent(frames: list) -> list[tuple[str, dict]]:
    return [(m["event"], m["data"]) for m in map(json.loads, frames)]


async def start_while_store_loads(message: dict) -> tuple[Connection, list, MemoryHub]:
    """Alice subscribes while the store is still loading; she is signed out meanwhile (the
    recheck's set_user); then the load finishes."""
    db = MemoryDatabase()
    db.set("Target", target("t1", "secret"))
    hub = MemoryHub(db)
    hub.load_gate = asyncio.Event()
    frames: list = []
    conn = Connection(hub, OnlyAlice(db), frames.append, user="alice")
    receiving = asyncio.ensure_future(conn.receive_text(json.dumps(message)))
    await settle()
    assert hub.loads == ["Target"] and not frames  # resolved for alice, store loading
    await conn.set_user(None)  # signed out: continues as anonymous
    hub.load_gate.set()
    await receiving
    await settle()
    return conn, frames, hub


async def test_review_a_report_starting_while_the_user_signs_out_is_denied():
    report = {
        "event": "ws:m:report",
        "data": {"reportId": "CountAllTargets", "report": {"tx": "r"}},
    }
    conn, frames, hub = await start_while_store_loads(report)
    try:
        events = sent(frames)
        assert ("ws:m:report-response", {"response": {"count": 1}, "tx": "r"}) not in events
        assert [e for e, _ in events] == ["ws:m:report-error"], events
        assert events[0][1]["message"].startswith("Permission denied")
        assert hub.engine.subscription_key(conn, "r") is None  # nothing live left
    finally:
        await conn.close()
        hub.close()


async def test_review_a_query_starting_while_the_user_signs_out_is_denied():
    """The control: a query in the same situation is already handled (its pending start is
    resolved again by set_user)."""
    query = {
        "event": "ws:m:query",
        "data": {"queryId": "GetAllTargets", "queryItemType": "Target", "query": {"tx": "q"}},
    }
    conn, frames, hub = await start_while_store_loads(query)
    try:
        events = sent(frames)
        assert [e for e, _ in events] == ["ws:m:query-error"], events
        assert hub.engine.subscription_key(conn, "q") is None
    finally:
        await conn.close()
        hub.close()
