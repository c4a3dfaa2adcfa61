"""The Python client against a real daphne: queries, reports, commands, events, pings,
windows, errors and reconnecting after a server restart, in JSON and MessagePack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from myko_django.client import (
    ClientClosed,
    CommandFailed,
    ConnectionLost,
    QueryFailed,
    ReportFailed,
    connect,
)
from myko_django.testing import DaphneServer
from project.demo.models import Target
from tests.support.data import target

pytestmark = [pytest.mark.django_db(transaction=True)]

PROTOCOLS = pytest.mark.parametrize("protocol", ["json", "msgpack"])
TIMEOUT = 15


async def until(sub: Any, predicate: Callable[[Any], bool]) -> Any:
    """The first state of a live query or report that satisfies `predicate`."""
    async with asyncio.timeout(TIMEOUT):
        async for value in sub:
            if predicate(value):
                return value
    raise AssertionError("subscription ended")


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.02)


@sync_to_async
def create_targets(*items: dict) -> None:
    for item in items:
        Target.objects.create(id=item["id"], name=item["name"], category=item.get("category"))


@sync_to_async
def db_targets() -> dict[str, dict]:
    return {t.pk: target(t.pk, t.name, t.category) for t in Target.objects.all()}


@pytest.fixture(autouse=True)
async def close_thread_connections():
    """sync_to_async's thread keeps its own connection: close it so the test DB can go."""
    yield
    await sync_to_async(connections.close_all)()


# ---- round trips ------------------------------------------------------------------------


@PROTOCOLS
async def test_query_command_report_round_trip(daphne_server, protocol):
    await create_targets(target("a", "A", "x"), target("b", "B", "y"))
    async with connect(daphne_server, protocol) as client:
        query = client.query("GetAllTargets", "Target")
        by_category = client.query("GetTargetsByQuery", "Target", {"category": "x"})
        count = client.report("CountAllTargets")
        async with asyncio.timeout(TIMEOUT):
            assert await query.ready() == {"a": target("a", "A", "x"), "b": target("b", "B", "y")}
            assert await by_category.ready() == {"a": target("a", "A", "x")}
            assert await count.ready() == {"count": 2}
            assert query.total_count == 2 and query.responses[0]["sequence"] == 0

            # Read-your-writes: the update is applied before the command returns.
            assert await client.command("RenameTarget", id="a", name="A2") is None
            assert query.items["a"]["name"] == "A2" and by_category.items["a"]["name"] == "A2"
            assert query.responses[-1]["sequence"] == 1 and query.sequence == 1

            # The params-dict form, and a tx of our choice echoed back.
            assert await client.command("DeleteTarget", {"id": "b"}, tx="del-b") == {
                "deleted": True
            }
            assert set(query.items) == {"a"} and query.total_count == 1
            assert count.value == {"count": 1}

        await client.send_event("Target", target("c", "C", "x"))
        assert await until(count, lambda v: v == {"count": 2}) == {"count": 2}
        assert await until(by_category, lambda items: "c" in items) == {
            "a": target("a", "A2", "x"),
            "c": target("c", "C", "x"),
        }
        # Deletes, then upserts; sequences go up by one.
        await client.send_events(
            [
                {"changeType": "DEL", "itemType": "Target", "item": {"id": "a"}},
                {"changeType": "SET", "itemType": "Target", "item": target("d", "D")},
            ]
        )
        items = await until(query, lambda items: "d" in items and "a" not in items)
        assert items == {"c": target("c", "C", "x"), "d": target("d", "D")}
        sequences = [r["sequence"] for r in query.responses]
        assert sequences == list(range(len(sequences)))
        assert items == await db_targets()


@PROTOCOLS
async def test_await_connect_and_close(daphne_server, protocol):
    client = await connect(daphne_server, protocol)
    assert client.connected
    query = client.query("GetAllTargets", "Target")
    await asyncio.wait_for(query.ready(), TIMEOUT)
    await client.close()
    assert not client.connected
    assert [items async for items in query] == []  # iterators end after close
    with pytest.raises(ClientClosed):
        await client.command("RenameTarget", id="a", name="b")
    await client.close()  # idempotent


# ---- errors ----------------------------------------------------------------------------


@PROTOCOLS
async def test_command_error_raises_command_failed(daphne_server, protocol):
    async with connect(daphne_server, protocol) as client:
        with pytest.raises(CommandFailed) as failed:
            await asyncio.wait_for(client.command("RenameTarget", id="x", name="y"), TIMEOUT)
        assert failed.value.message == "Target not found: x"
        assert failed.value.command_id == "RenameTarget"
        with pytest.raises(CommandFailed, match="Command handler not found: Nope"):
            await asyncio.wait_for(client.command("Nope"), TIMEOUT)
        with pytest.raises(ValueError, match="reserved"):
            await client.command("RenameTarget", {"tx": "mine"})


@PROTOCOLS
async def test_query_and_report_errors(daphne_server, protocol):
    async with connect(daphne_server, protocol) as client:
        unknown = client.query("GetAllNothings", "Nothing")
        with pytest.raises(QueryFailed) as failed:
            await asyncio.wait_for(unknown.ready(), TIMEOUT)
        assert failed.value.message and failed.value.tx == unknown.tx
        with pytest.raises(QueryFailed):
            async for _ in unknown:
                pass
        report = client.report("NoSuchReport")
        with pytest.raises(ReportFailed):
            await asyncio.wait_for(report.ready(), TIMEOUT)
        # The connection keeps serving.
        assert await asyncio.wait_for(client.report("CountAllTargets").ready(), TIMEOUT) == {
            "count": 0
        }


@PROTOCOLS
async def test_event_errors(daphne_server, protocol):
    seen: list[dict] = []
    async with connect(daphne_server, protocol, on_event_error=seen.append) as client:
        query = client.query("GetAllTargets", "Target")
        await asyncio.wait_for(query.ready(), TIMEOUT)
        tx = await client.send_event("Target", {"id": "bad", "name": 5})
        await eventually(lambda: client.event_errors)
        [error] = client.event_errors
        assert error["tx"] == tx and error["itemType"] == "Target" and "name" in error["message"]
        assert seen == [error]
        assert query.items == {} and query.sequence == 0


# ---- windows and pings --------------------------------------------------------------------


@PROTOCOLS
async def test_window_moves(daphne_server, protocol):
    await create_targets(*(target(f"t{i}", f"T{i}") for i in range(1, 6)))
    async with connect(daphne_server, protocol) as client:
        query = client.query("GetAllTargets", "Target", window={"offset": 0, "limit": 2})
        assert list(await asyncio.wait_for(query.ready(), TIMEOUT)) == ["t1", "t2"]
        assert query.total_count == 5 and query.order == ["t1", "t2"]

        await query.set_window({"offset": 2, "limit": 2})
        assert list(await until(query, lambda items: "t3" in items)) == ["t3", "t4"]
        assert query.window == {"offset": 2, "limit": 2}

        await client.command("DeleteTarget", id="t3")  # t5 slides into the page
        assert list(query.items) == ["t4", "t5"] and query.total_count == 4

        await query.set_window(None)
        assert set(await until(query, lambda items: len(items) == 4)) == {"t1", "t2", "t4", "t5"}
        assert query.order is None and query.window is None
        with pytest.raises(ValueError, match="limit"):
            await query.set_window({"offset": 0, "limit": -1})

        await query.cancel()
        await client.command("DeleteTarget", id="t1")
        assert "t1" in query.items  # cancelled: no longer updated
        assert [items async for items in query] == []


@PROTOCOLS
async def test_ping(daphne_server, protocol):
    async with connect(daphne_server, protocol) as client:
        rtt = await asyncio.wait_for(client.ping(), TIMEOUT)
        assert isinstance(rtt, float) and 0 < rtt < TIMEOUT


# ---- reconnecting ---------------------------------------------------------------------------


@pytest.fixture
def restartable(transactional_db, tmp_path):
    """A daphne worker the test can stop and start again on the same port."""
    from django.db import connection

    worker = DaphneServer(tmp_path).start()
    yield worker
    worker.stop()
    print(worker.output()[-5000:])  # shown by pytest when the test failed
    connection.close()


@PROTOCOLS
async def test_reconnect_after_server_restart(restartable, protocol):
    await create_targets(target("a", "A"), target("b", "B"))
    async with connect(restartable.url, protocol, backoff=(0.05, 0.5)) as client:
        query = client.query("GetAllTargets", "Target")
        count = client.report("CountAllTargets")
        async with asyncio.timeout(TIMEOUT):
            await query.ready()
            assert await count.ready() == {"count": 2}
        before = len(query.responses)

        await sync_to_async(restartable.stop)()
        await eventually(lambda: not client.connected)
        # While the server is down: changes made through the ORM, and, from this client,
        # a command, then an event and a command that needs that event (order is kept).
        await create_targets(target("c", "C"))
        await sync_to_async(Target.objects.filter(pk="b").delete)()
        rename = asyncio.ensure_future(client.command("RenameTarget", id="a", name="A2"))
        create = asyncio.ensure_future(client.send_event("Target", target("e", "E")))
        rename_new = asyncio.ensure_future(client.command("RenameTarget", id="e", name="E2"))
        await asyncio.sleep(0.3)
        assert not (rename.done() or create.done() or rename_new.done())

        await sync_to_async(restartable.start)()
        async with asyncio.timeout(TIMEOUT):
            assert await rename is None and await rename_new is None
            await create
        assert client.reconnects == 1
        # A fresh sequence 0 replaced the state: "b" went away, "c" came.
        expected = {"a": target("a", "A2"), "c": target("c", "C"), "e": target("e", "E2")}
        assert await until(query, lambda items: items == expected) == await db_targets()
        fresh = [r for r in list(query.responses)[before:] if r["sequence"] == 0]
        assert len(fresh) == 1
        assert {"a", "c"} <= {u["item"]["id"] for u in fresh[0]["upserts"]}
        assert "b" not in {u["item"]["id"] for u in fresh[0]["upserts"]}
        assert await until(count, lambda v: v == {"count": 3})
        assert await asyncio.wait_for(client.ping(), TIMEOUT) > 0


async def test_outage_then_close_and_no_reconnect(restartable):
    async with connect(restartable.url, "msgpack", backoff=(0.05, 0.2)) as client:
        await sync_to_async(restartable.kill)()  # abrupt: no closing handshake
        await eventually(lambda: not client.connected)
        waiting = asyncio.ensure_future(client.command("RenameTarget", id="a", name="b"))
        await asyncio.sleep(0.1)
        await client.close()
        with pytest.raises(ClientClosed):
            await waiting

    await sync_to_async(restartable.start)()
    client = await connect(restartable.url, "json", reconnect=False)
    query = client.query("GetAllTargets", "Target")
    await asyncio.wait_for(query.ready(), TIMEOUT)
    await sync_to_async(restartable.stop)()
    with pytest.raises(ConnectionLost):
        await until(query, lambda items: False)
    with pytest.raises(ConnectionLost):
        await client.ping()
    await client.close()
