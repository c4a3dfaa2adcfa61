"""Large results over a real daphne at a small MAX_MESSAGE_SIZE (docs/protocol.md, "Large
results"): daphne refuses to send a message over its --websocket-max-message-size, so a
response that would be larger arrives as several responses (each within the limit, the
last without `more`) that leave the client in the state the one would have; what cannot
be split ends its subscription with an error. Before the split, the snapshot and the
update never arrived at all."""

from __future__ import annotations

import asyncio

import pytest
from django.db import transaction

from myko_django.client import connect
from tests.support.data import db
from tests.support.wsclient import WsClient, new_tx

pytestmark = [pytest.mark.django_db(transaction=True)]

LIMIT = 8000
OPS_SETTINGS = "tests.system.ops_settings"
TIMEOUT = 15


def wire_size(frame: str | bytes) -> int:
    return len(frame.encode()) if isinstance(frame, str) else len(frame)


async def seed(n: int, note: str) -> None:
    from tests.testapp.models import Gadget

    def create():
        with transaction.atomic():
            for i in range(n):
                Gadget.objects.create(id=f"g{i:03d}", label=f"l{i}", note=note)

    await db(create)


async def renote(note: str) -> None:
    """One transaction changing every Gadget: one commit, so one update to a subscriber."""
    from tests.testapp.models import Gadget

    def change():
        with transaction.atomic():
            for gadget in Gadget.objects.all():
                gadget.note = note
                gadget.save()

    await db(change)


async def parts(ws: WsClient) -> list[dict]:
    """The responses of one (possibly split) result, each checked to be within LIMIT."""
    got = []
    while True:
        frame = await ws.recv_frame(TIMEOUT)
        assert wire_size(frame) <= LIMIT
        message = ws.decode(frame)
        assert message["event"] == "ws:m:query-response", message
        got.append(message["data"])
        if not message["data"].get("more"):
            return got


@pytest.fixture
def small_worker(daphne_workers):
    # daphne at the same limit, as the README starts it: it drops what is larger.
    [worker] = daphne_workers(
        1,
        settings=OPS_SETTINGS,
        extra_env={"MYKO_TEST_MAX_MESSAGE_SIZE": str(LIMIT)},
        max_message=LIMIT,
    )
    return worker


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_a_result_over_the_limit_arrives_in_parts(small_worker, fmt):
    await seed(100, "é" * 150)  # two UTF-8 bytes each: the limit counts bytes
    async with await WsClient.socket(small_worker.url, fmt) as ws:
        tx = new_tx()
        await ws.query("GetAllGadgets", "Gadget", tx=tx)
        snapshot = await parts(ws)
        assert len(snapshot) >= 4
        assert [p["sequence"] for p in snapshot] == list(range(len(snapshot)))
        assert all(p["more"] for p in snapshot[:-1]) and "more" not in snapshot[-1]
        assert all(p["totalCount"] == 100 and p["tx"] == tx for p in snapshot)
        assert all(p["deletes"] == [] for p in snapshot)
        ids = [u["item"]["id"] for p in snapshot for u in p["upserts"]]
        assert sorted(ids) == [f"g{i:03d}" for i in range(100)]

        # An update over the limit: the next sequences, every changed item once.
        await renote("ü" * 160)
        update = await parts(ws)
        assert len(update) >= 2
        first = len(snapshot)
        assert [p["sequence"] for p in update] == list(range(first, first + len(update)))
        notes = {u["item"]["id"]: u["item"]["note"] for p in update for u in p["upserts"]}
        assert notes == {f"g{i:03d}": "ü" * 160 for i in range(100)}

        # A small change after it: the sequence goes on by one.
        from tests.testapp.models import Gadget

        await db(lambda: Gadget.objects.filter(id="g007").delete())
        [small] = await parts(ws)
        assert small["sequence"] == first + len(update)
        assert small["deletes"] == ["g007"] and small["totalCount"] == 99


async def test_the_python_client_applies_the_parts_as_one(small_worker):
    await seed(100, "n" * 300)
    async with connect(small_worker.url, "msgpack") as client:
        everything = client.query("GetAllGadgets", "Gadget")
        page = client.query("GetAllGadgets", "Gadget", window={"offset": 10, "limit": 60})
        items = await asyncio.wait_for(everything.ready(), TIMEOUT)
        assert len(items) == 100 and everything.total_count == 100
        paged = await asyncio.wait_for(page.ready(), TIMEOUT)
        expected = [f"g{i:03d}" for i in range(10, 70)]
        assert list(paged) == expected and page.order == expected
        assert page.total_count == 100
        assert len(page.responses) >= 3  # it did arrive in parts

        seen = everything._version
        await renote("m" * 300)
        async with asyncio.timeout(TIMEOUT):
            while not all(i["note"] == "m" * 300 for i in everything.items.values()):
                await everything._changed.wait()
            while not all(i["note"] == "m" * 300 for i in page.items.values()):
                await page._changed.wait()
        # Applied as one: the client saw no state with only some parts applied.
        assert everything._version == seen + 1
        assert list(page.items) == expected and page.order == expected


async def test_what_cannot_be_split_ends_with_an_error(small_worker):
    await seed(3, "x" * 100)
    from tests.testapp.models import Gadget

    await db(lambda: Gadget.objects.create(id="huge", label="h", note="x" * (LIMIT + 100)))
    async with await WsClient.socket(small_worker.url) as ws:
        tx = new_tx()
        await ws.query("GetAllGadgets", "Gadget", tx=tx)
        error = await ws.expect("ws:m:query-error", TIMEOUT)
        assert error["tx"] == tx and error["queryId"] == "GetAllGadgets"
        assert "Gadget 'huge'" in error["message"] and "MAX_MESSAGE_SIZE" in error["message"]

        report_tx = await ws.report("GetGadgetById", {"id": "huge"})
        error = await ws.expect("ws:m:report-error", TIMEOUT)
        assert error["tx"] == report_tx and "MAX_MESSAGE_SIZE" in error["message"]

        # The connection goes on; the same tx may subscribe again, to what fits.
        await ws.query("GetGadgetsByQuery", "Gadget", {"label": "l1"}, tx=tx)
        ok = await ws.expect("ws:m:query-response", TIMEOUT)
        assert ok["tx"] == tx and [u["item"]["id"] for u in ok["upserts"]] == ["g001"]
