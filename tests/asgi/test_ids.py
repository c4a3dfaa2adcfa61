"""Ids over the protocol (issue 10, point 4): a client creates a Legacy row (an existing model
with an auto-increment key, tests/testapp) with CreateLegacy instead of inventing an id, and
a client that does SET an id of its own does not break the inserts that come after it."""

from __future__ import annotations

import uuid

import pytest

from tests.support.data import db, row
from tests.testapp.models import Gadget, LegacyRow

pytestmark = [pytest.mark.django_db(transaction=True)]


async def orm_insert(title: str = "orm") -> int:
    """A row inserted as the ORM and the admin do (the database picks the id)."""
    return await db(lambda: LegacyRow.objects.create(title=title).pk)


def legacy(item_id: int, title: str, amount: str = "0.00", when: str = "2020-01-01") -> dict:
    return {"id": str(item_id), "title": title, "amount": amount, "when": when}


async def test_create_after_a_client_chose_the_next_id(client):
    last = await orm_insert()
    tx, _ = await client.subscribe("GetAllLegacies", "Legacy")
    # The client takes the very id the database would hand out next.
    await client.event("SET", "Legacy", legacy(last + 1, "mine"))
    update = await client.expect("ws:m:query-response")
    assert update["upserts"] == [row(legacy(last + 1, "mine"), "Legacy")]

    c = await client.command("CreateLegacy", {"title": "made", "amount": "1.50"})
    update = await client.expect("ws:m:query-response")  # before the response
    assert (update["tx"], update["sequence"]) == (tx, 2)
    assert update["upserts"] == [row(legacy(last + 2, "made", "1.50"), "Legacy")]
    assert await client.expect("ws:m:command-response") == {
        "response": {"id": str(last + 2)},
        "tx": c,
    }
    # The ORM (and the admin) go on after both, where they used to hit a duplicate key.
    assert await orm_insert() == last + 3
    assert (await client.expect("ws:m:query-response"))["totalCount"] == 4


async def test_create_refuses_an_id_and_checks_permissions(client):
    c = await client.command("CreateLegacy", {"id": "7", "title": "x"})
    assert await client.expect("ws:m:command-error") == {
        "tx": c,
        "commandId": "CreateLegacy",
        "message": 'CreateLegacy: "id" is assigned by the server; leave it out (a client that '
        "chooses the id SETs the item with an event)",
    }
    c = await client.command("CreateLegacy", {"title": 7})
    error = await client.expect("ws:m:command-error")
    assert error["message"] == "Legacy.title must be a string, got an integer 7"
    # Vault keeps the default permissions: Django's `add_vault`, which anonymous lacks.
    c = await client.command("CreateVault", {"name": "gold"})
    assert await client.expect("ws:m:command-error") == {
        "tx": c,
        "commandId": "CreateVault",
        "message": "Permission denied: anonymous may not run CreateVault",
    }
    assert await db(lambda: LegacyRow.objects.count()) == 0


async def test_create_of_an_item_with_a_string_id(client):
    tx, _ = await client.subscribe("GetAllGadgets", "Gadget")
    c = await client.command("CreateGadget", {"label": "g", "count": 2})
    update = await client.expect("ws:m:query-response")
    (upsert,) = update["upserts"]
    new_id = upsert["item"]["id"]
    assert str(uuid.UUID(new_id)) == new_id
    assert (upsert["item"]["label"], upsert["item"]["count"]) == ("g", 2)
    assert await client.expect("ws:m:command-response") == {"response": {"id": new_id}, "tx": c}
    assert await db(lambda: Gadget.objects.get(pk=new_id).label) == "g"
