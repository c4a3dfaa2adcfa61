"""Who may do what, over a real daphne and real sockets: the library's defaults on Vault
(Django's model permissions), row visibility on the demo's Note, and fields that never
travel (the test app's Account keeps `apiToken` off the wire)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections

from myko_django.auth import issue_token
from project.demo.models import Note
from tests.support.wsclient import WsClient
from tests.testapp.models import Account, Vault

pytestmark = [pytest.mark.django_db(transaction=True)]

DENIED = "Permission denied"
User = get_user_model()


@pytest.fixture(autouse=True)
async def close_thread_connections():
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def server(daphne_workers):
    (worker,) = daphne_workers(1)
    return worker


@sync_to_async
def token_of(username: str, *codenames: str, **flags) -> str:
    user = User.objects.create_user(username, **flags)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return issue_token(user)


@sync_to_async
def vault_names() -> list[str]:
    return sorted(Vault.objects.values_list("name", flat=True))


async def as_user(server, token: str | None = None) -> WsClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return await WsClient.socket(server.url, additional_headers=headers)


async def denied(client: WsClient, event: str) -> str:
    data = await client.expect(event)
    assert data["message"].startswith(DENIED), data
    return data["message"]


async def try_everything(client: WsClient) -> dict[str, bool]:
    """Query, report, SET a new and an existing Vault, DEL, DeleteVaults: which passed."""
    passed = {}
    await client.query("GetAllVaults", "Vault")
    passed["query"] = (await client.recv())["event"] == "ws:m:query-response"
    await client.report("CountAllVaults")
    passed["report"] = (await client.recv())["event"] == "ws:m:report-response"
    for name, item, change in (
        ("add", {"id": "new", "name": "new"}, "SET"),
        ("change", {"id": "v1", "name": "changed"}, "SET"),
    ):
        await client.event(change, "Vault", item)
        # Events and commands run in order: an event-error comes before this response.
        tx = await client.command("DeleteTargets", {"ids": []})
        errors = await until_response(client, tx)
        passed[name] = not errors
    tx = await client.command("DeleteVaults", {"ids": ["v2"]})
    passed["delete"] = not await until_response(client, tx)
    return passed


async def until_response(client: WsClient, tx: str) -> list[str]:
    """Read up to the answer of command `tx` (updates of the connection's own query pass
    by); returns the error messages met on the way, each a Permission denied."""
    errors = []
    while True:
        message = await client.recv()
        data = message["data"]
        if message["event"].endswith("-error"):
            assert data["message"].startswith(DENIED), message
            errors.append(data["message"])
            if data.get("tx") == tx:
                return errors
        elif message["event"] == "ws:m:command-response" and data["tx"] == tx:
            return errors


async def test_what_each_kind_of_user_may_do(server):
    await sync_to_async(Vault.objects.create)(id="v1", name="one")
    await sync_to_async(Vault.objects.create)(id="v2", name="two")
    cases = [
        ("anonymous", None, dict.fromkeys(["query", "report", "add", "change", "delete"], False)),
        (
            "viewer",
            await token_of("viewer", "view_vault"),
            {"query": True, "report": True, "add": False, "change": False, "delete": False},
        ),
        (
            "editor",
            await token_of("editor", "view_vault", "change_vault"),
            {"query": True, "report": True, "add": False, "change": True, "delete": False},
        ),
        (
            "inactive root",
            await token_of("sleeper", is_superuser=True, is_active=False),
            dict.fromkeys(["query", "report", "add", "change", "delete"], False),
        ),
    ]
    for who, token, expected in cases:
        client = await as_user(server, token)
        assert await try_everything(client) == expected, who
        await client.close()
    assert await vault_names() == ["changed", "two"]  # only the editor's change went in
    root = await as_user(server, await token_of("root", is_superuser=True))
    assert set((await try_everything(root)).values()) == {True}
    await root.close()
    assert await vault_names() == ["changed", "new"]


async def test_a_note_moving_between_owners_leaves_one_view_and_enters_the_other(server):
    alice_token, bob_token = await token_of("alice"), await token_of("bob")
    alice_id, bob_id = await sync_to_async(
        lambda: [User.objects.get(username=n).pk for n in ("alice", "bob")]
    )()
    await sync_to_async(Note.objects.create)(id="n1", owner_id=alice_id, text="hers")
    alice, bob = await as_user(server, alice_token), await as_user(server, bob_token)
    a_tx, a_snapshot = await alice.subscribe("GetAllNotes", "Note")
    b_tx, b_snapshot = await bob.subscribe("GetAllNotes", "Note")
    assert [u["item"]["text"] for u in a_snapshot["upserts"]] == ["hers"]
    assert b_snapshot["upserts"] == [] and b_snapshot["totalCount"] == 0
    # Bob may not take it over the wire; the server (here: the ORM) may hand it over.
    await bob.event("SET", "Note", {"id": "n1", "ownerId": str(bob_id), "text": "mine"})
    assert (await denied(bob, "ws:m:event-error")).startswith(DENIED)
    await sync_to_async(Note.objects.filter(pk="n1").update)(owner_id=bob_id)
    gone = await alice.expect("ws:m:query-response")
    assert (gone["tx"], gone["deletes"], gone["totalCount"]) == (a_tx, ["n1"], 0)
    came = await bob.expect("ws:m:query-response")
    assert came["tx"] == b_tx and [u["item"]["text"] for u in came["upserts"]] == ["hers"]
    await alice.close()
    await bob.close()


async def test_a_field_kept_off_the_wire_is_never_sent_nor_written(server):
    account = await sync_to_async(Account.objects.create)(name="acme", api_token="s3cret")
    client = await as_user(server)
    _, snapshot = await client.subscribe("GetAllAccounts", "Account")
    assert snapshot["upserts"] == [
        {"item": {"id": str(account.pk), "name": "acme"}, "itemType": "Account"}
    ]
    await client.event("SET", "Account", {"id": str(account.pk), "name": "acme", "apiToken": "x"})
    error = await client.expect("ws:m:event-error")
    assert "apiToken cannot be written" in error["message"]
    await client.event("SET", "Account", {"id": str(account.pk), "name": "renamed"})
    update = await client.expect("ws:m:query-response")
    assert update["upserts"] == [
        {"item": {"id": str(account.pk), "name": "renamed"}, "itemType": "Account"}
    ]
    stored = await sync_to_async(Account.objects.get)(pk=account.pk)
    assert (stored.name, stored.api_token) == ("renamed", "s3cret")
    await client.close()
