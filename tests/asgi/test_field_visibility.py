"""Field visibility over the protocol: a field kept off the wire (`exclude` / `fields`) is in
no message a client gets, and a client cannot write it (tests/testapp: Account registered with
exclude=["api_token", "avatar", "referrer"], Badge with myko_fields)."""

from __future__ import annotations

import json

import pytest

from tests.support.data import db, items_by_id
from tests.support.wsclient import WsClient
from tests.testapp.models import Account, Badge

pytestmark = [pytest.mark.django_db(transaction=True)]

SECRET = "s3cret-token-value"
HIDDEN = ("apiToken", "api_token", "avatar", "referrer", "code", "issued", SECRET, "ann.png")


async def seed_account(pk: int = 1, name: str = "ann") -> None:
    def create():
        account = Account.objects.create(
            pk=pk, name=name, api_token=SECRET, avatar="avatars/ann.png"
        )
        account.referrer = account  # an excluded foreign key, to itself
        account.save()

    await db(create)


async def stored(pk: int = 1) -> tuple:
    def read():
        a = Account.objects.get(pk=pk)
        return a.name, a.api_token, a.avatar.name, a.referrer_id

    return await db(read)


def record(client: WsClient) -> list:
    """Every frame `client` receives from now on."""
    frames: list = []
    receive = client.recv_frame

    async def recording(timeout=...):
        frame = await receive(timeout)
        frames.append(frame)
        return frame

    client.recv_frame = recording
    return frames


def assert_nothing_hidden(client: WsClient, frames: list) -> None:
    """No hidden field's name or value in the frames (errors about writing one aside)."""
    messages = [client.decode(f) for f in frames]
    text = json.dumps([m for m in messages if not m["event"].endswith("-error")])
    for word in HIDDEN:
        assert word not in text, (word, text[:2000])


async def test_excluded_fields_are_absent_from_every_message(client):
    await seed_account()
    frames = record(client)
    all_tx, first = await client.subscribe("GetAllAccounts", "Account")
    assert items_by_id(first) == {"1": {"id": "1", "name": "ann"}}
    _, by_ids = await client.subscribe("GetAccountsByIds", "Account", {"ids": ["1"]})
    _, by_query = await client.subscribe("GetAccountsByQuery", "Account", {"name": "ann"})
    assert items_by_id(by_ids) == items_by_id(by_query) == items_by_id(first)
    r = await client.report("GetAccountById", {"id": "1"})
    assert await client.expect("ws:m:report-response") == {
        "response": {"id": "1", "name": "ann"},
        "tx": r,
    }
    c = await client.command("GetAccount", {"id": "1"})
    assert await client.expect("ws:m:command-response") == {
        "response": {"id": "1", "name": "ann"},
        "tx": c,
    }
    # A change made on the server (the secret too) reaches subscribers without it.
    await db(lambda: Account.objects.filter(pk=1).update(name="bob", api_token=SECRET + "2"))
    c = await client.command("SetAccount", {"item": {"id": "1", "name": "carl"}})
    messages = await client.drain(0.5)
    responses = [m["data"] for m in messages if m["event"] == "ws:m:command-response"]
    assert responses == [{"response": {"id": "1", "name": "carl"}, "tx": c}]
    updates = [m["data"] for m in messages if m["event"] == "ws:m:query-response"]
    assert {"id": "1", "name": "carl"} in [u["item"] for d in updates for u in d["upserts"]]
    await client.barrier()
    assert_nothing_hidden(client, frames)
    assert (await stored())[1] == SECRET + "2"


async def test_a_client_event_naming_an_excluded_field_is_refused(client):
    await seed_account()
    frames = record(client)
    await client.subscribe("GetAllAccounts", "Account")
    for key, wire in (("apiToken", "apiToken"), ("api_token", "apiToken"), ("avatar", "avatar")):
        item = {"id": "1", "name": "mallory", key: "stolen"}
        await client.event("SET", "Account", item, tx=f"bad-{key}")
        assert await client.expect("ws:m:event-error") == {
            "tx": f"bad-{key}",
            "itemType": "Account",
            "message": f"Account.{wire} cannot be written",
        }
    batch = [
        {"changeType": "SET", "itemType": "Account", "item": {"id": "2", "name": "x"}, "tx": "ok"},
        {
            "changeType": "SET",
            "itemType": "Account",
            "item": {"id": "1", "referrerId": None},
            "tx": "bad-batch",
        },
    ]
    c = await client.command("SetAccount", {"item": {"id": "1", "apiToken": "stolen"}})
    error = await client.expect("ws:m:command-error")
    assert error["tx"] == c and "Account.apiToken cannot be written" in error["message"]
    await client.send("ws:m:event-batch", batch)
    seen: dict = {}
    while "error" not in seen or "upsert" not in seen:
        message = await client.recv()
        if message["event"] == "ws:m:event-error":
            seen["error"] = message["data"]
        else:
            seen["upsert"] = items_by_id(message["data"])
    assert seen["error"]["message"] == "Account.referrerId cannot be written"
    assert seen["upsert"] == {"2": {"id": "2", "name": "x"}}
    await client.barrier()
    assert await stored() == ("ann", SECRET, "avatars/ann.png", 1)
    assert_nothing_hidden(client, frames)


async def test_a_set_keeps_the_stored_secret_and_new_rows_get_defaults(client):
    await seed_account()
    tx, _ = await client.subscribe("GetAllAccounts", "Account")
    await client.event("SET", "Account", {"id": "1", "name": "renamed"})
    assert items_by_id(await client.expect("ws:m:query-response")) == {
        "1": {"id": "1", "name": "renamed"}
    }
    assert await stored() == ("renamed", SECRET, "avatars/ann.png", 1)
    await client.event("SET", "Account", {"id": "5", "name": "new"})
    assert items_by_id(await client.expect("ws:m:query-response")) == {
        "5": {"id": "5", "name": "new"}
    }
    assert await stored(5) == ("new", "tok-default", "", None)


async def test_clients_cannot_create_a_badge_whose_hidden_code_has_no_default(client):
    await client.event("SET", "Badge", {"id": "b1", "label": "gold"}, tx="b")
    error = await client.expect("ws:m:event-error")
    assert error["tx"] == "b" and "Badge.code is required" in error["message"]
    assert "cannot be created" in error["message"]
    await db(lambda: Badge.objects.create(id="b1", label="gold", code="X-1"))
    frames = record(client)
    _, data = await client.subscribe("GetAllBadges", "Badge")
    assert items_by_id(data) == {"b1": {"id": "b1", "label": "gold", "level": 1}}
    await client.event("SET", "Badge", {"id": "b1", "label": "silver"})
    assert items_by_id(await client.expect("ws:m:query-response")) == {
        "b1": {"id": "b1", "label": "silver", "level": 1}
    }
    assert await db(lambda: Badge.objects.get().code) == "X-1"
    assert_nothing_hidden(client, frames)


async def test_a_query_on_an_excluded_field_cannot_probe_its_value(client):
    await seed_account()
    answers = []
    for guess in (SECRET, "wrong"):
        await client.query("GetAccountsByQuery", "Account", {"apiToken": guess})
        message = await client.recv()
        message["data"].pop("tx")
        answers.append(message)
    assert answers[0] == answers[1]
