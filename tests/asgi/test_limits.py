"""Per-connection abuse limits through the project's ASGI application (issue 9;
docs/protocol.md, "Limits"): the MYKO settings are honoured, and sustained abuse closes the
connection with 1008 while other connections carry on. Each limit in detail:
tests/unit/test_limits.py."""

from __future__ import annotations

import dataclasses

import pytest

from myko_django import conf
from myko_django.server.backend import DatabaseBackend
from myko_django.server.connection import ABUSE_SECONDS, Limits
from tests.support.data import count_rows, row, seed_targets, target
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.django_db(transaction=True)]

LIMIT = "Limit exceeded: "
SETTINGS = {
    "subscriptions": "MAX_SUBSCRIPTIONS",
    "commands_in_flight": "MAX_COMMANDS_IN_FLIGHT",
    "messages_per_second": "MAX_MESSAGES_PER_SECOND",
    "batch_items": "MAX_BATCH_ITEMS",
    "ids": "MAX_IDS",
    "message_size": "MAX_MESSAGE_SIZE",
}


def test_the_backend_reads_the_limits_from_the_settings(settings):
    assert [f.name for f in dataclasses.fields(Limits)] == list(SETTINGS)
    # Limits' own defaults are the settings' defaults.
    assert DatabaseBackend(None).limits == Limits()
    assert Limits() == Limits(**{f: conf.DEFAULTS[name] for f, name in SETTINGS.items()})
    lowered = {name: i + 1 for i, name in enumerate(SETTINGS.values())}
    settings.MYKO = {**settings.MYKO, **lowered}
    assert DatabaseBackend(None).limits == Limits(1, 2, 3, 4, 5, 6)


async def test_lowered_settings_are_honoured(asgi_app, fmt, settings):
    settings.MYKO = {**settings.MYKO, "MAX_SUBSCRIPTIONS": 2, "MAX_IDS": 3, "MAX_BATCH_ITEMS": 2}
    await seed_targets("a", "b", "c", "d")
    c = await WsClient.asgi(asgi_app, fmt)

    tx = await c.query("GetTargetsByIds", "Target", {"ids": list("abcd")})
    error = await c.expect("ws:m:query-error")
    assert (error["tx"], error["queryId"]) == (tx, "GetTargetsByIds")
    assert error["message"] == 'Limit exceeded: 4 ids in "ids", over 3 (MAX_IDS); ask in parts'
    tx = await c.command("DeleteTargets", {"ids": list("abcd")})
    error = await c.expect("ws:m:command-error")
    assert error["tx"] == tx and error["message"].startswith(LIMIT)
    assert await count_rows("demo.Target") == 4

    events = [
        {"changeType": "SET", "itemType": "Target", "item": {"id": i, "name": "x"}, "tx": i}
        for i in ("e1", "e2", "e3")
    ]
    await c.send("ws:m:event-batch", events)
    error = await c.expect("ws:m:event-error")
    assert error["tx"] is None and "MAX_BATCH_ITEMS" in error["message"]
    assert await count_rows("demo.Target") == 4

    await c.subscribe("GetTargetsByIds", "Target", {"ids": list("abc")})
    r = await c.report("CountAllTargets")
    assert await c.expect("ws:m:report-response") == {"response": {"count": 4}, "tx": r}
    tx = await c.query("GetAllTargets", "Target")
    error = await c.expect("ws:m:query-error")
    assert error["tx"] == tx and "2 live subscriptions" in error["message"]

    await c.send("ws:m:event-batch", events[:2])  # at the limit: applied
    assert await c.expect("ws:m:report-response") == {"response": {"count": 6}, "tx": r}
    await c.close()


async def test_sustained_abuse_closes_with_1008_and_spares_other_connections(
    asgi_app, fmt, settings
):
    bystander = await WsClient.asgi(asgi_app, fmt)  # the default limits, read on opening
    tx, _ = await bystander.subscribe("GetAllTargets", "Target")
    # One message per second: the abuser's messages come far faster than the bucket refills.
    settings.MYKO = {**settings.MYKO, "MAX_MESSAGES_PER_SECOND": 1}
    abuser = await WsClient.asgi(asgi_app, fmt)
    await abuser.ping("the burst")

    ctx = await abuser.command("DeleteTargets", {"ids": []})
    error = await abuser.expect("ws:m:command-error")
    assert (error["tx"], error["commandId"]) == (ctx, "DeleteTargets")
    assert error["message"] == (
        "Limit exceeded: more than 1 messages per second on this connection "
        "(MAX_MESSAGES_PER_SECOND); send more slowly"
    )
    for i in range(ABUSE_SECONDS + 5):  # refused pings get no reply; the 11th refusal closes
        await abuser.send("ws:m:ping", {"id": i, "timestamp": 0})
    comm = abuser.transport.comm
    while (out := await comm.receive_output(5))["type"] != "websocket.close":
        assert out["type"] == "websocket.send"  # a ping let through by a refill (slow machine)
    assert out["code"] == 1008
    await comm.wait(5)

    # The bystander's subscription and pings carry on.
    await bystander.event("SET", "Target", {"id": "after", "name": "ok"})
    update = await bystander.expect("ws:m:query-response")
    assert (update["tx"], update["sequence"]) == (tx, 1)
    assert update["upserts"] == [row(target("after", "ok"))]
    await bystander.ping()
    await bystander.close()
