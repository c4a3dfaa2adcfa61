"""Ids (issue 10, point 4): a client creates an item without inventing an id (the derived
CreateX command), and explicit ids never break an auto-increment sequence on Postgres (a
client's SET of a new id, ctx.set, ctx.set_many, myko_rebuild, adoption).

Legacy (tests/testapp) is an existing model with an integer AutoField key, open to anyone;
Vault keeps the library's default permissions; the demo's Note is visible to its owner only.
Sequences are not rolled back with a test's transaction, so ids are compared with the ones
the sequence hands out during the test, never with fixed numbers."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import threading
import uuid

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.core import checks
from django.core.management import call_command
from django.db import connection, connections, transaction

from myko_django import checks as myko_checks
from myko_django.items import operations
from myko_django.items.errors import ItemError
from myko_django.items.permissions import SYSTEM, AllowAny
from myko_django.items.registry import ItemType, registry
from myko_django.log import adoption, sequences
from myko_django.log.capture import write_transaction
from myko_django.log.commands import CommandContext, CommandError, run_command
from myko_django.log.writepath import apply_events
from myko_django.models import Event, TokenSalt
from project.demo.models import Note
from tests.testapp.models import Account, Badge, Gadget, LegacyRow, Owner, Vault

pytestmark = pytest.mark.django_db


def legacy(item_id: str | int, title: str = "t", **fields) -> dict:
    """A client's SET event of a Legacy row with an explicit id."""
    item = {"id": str(item_id), "title": title, **fields}
    return {"changeType": "SET", "itemType": "Legacy", "item": item, "tx": "e"}


def set_by_client(*events: dict, user=None) -> None:
    _, rejected = apply_events(list(events), user=user or AnonymousUser())
    assert rejected == []


def next_orm_id() -> int:
    """Insert a row the way the ORM and the admin do (the database picks the id)."""
    return LegacyRow.objects.create(title="orm").pk


def legacy_table() -> str:
    return connection.ops.quote_name(LegacyRow._meta.db_table)


def user_with(*codenames: str) -> User:
    user = User.objects.create_user(f"u{uuid.uuid4().hex[:8]}")
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return User.objects.get(pk=user.pk)  # Django caches permissions per user object


def create(command_id: str, params: dict, user=None, tx: str | None = None):
    return run_command(command_id, params, tx=tx or uuid.uuid4().hex, user=user).response


# ---- explicit ids and the sequence ---------------------------------------------------


def test_orm_insert_after_a_client_event_with_the_next_id_succeeds():
    """The issue's failing scenario: the client SETs a new row with the very id the
    sequence would hand out next; the next ORM (or admin) insert used to fail with
    `IntegrityError: duplicate key` on Postgres."""
    last = next_orm_id()
    set_by_client(legacy(last + 1, "from a client"))
    after = next_orm_id()
    assert after == last + 2
    set_by_client(legacy(after + 100, "far ahead"))
    assert next_orm_id() == after + 101
    assert LegacyRow.objects.get(pk=last + 1).title == "from a client"


def test_an_id_the_sequence_already_passed_does_not_move_it_back():
    """An explicit id below the sequence (a gap, or the id of a deleted row) leaves it where
    it is: moving it back to the table's largest id, as loaddata's sequence_reset_sql does,
    would give the next row the id of a deleted item, whose events are still in the log."""
    low, middle, high = next_orm_id(), next_orm_id(), next_orm_id()
    LegacyRow.objects.filter(pk__in=[low, high]).delete()
    set_by_client(legacy(low, "back again"))
    assert next_orm_id() == high + 1  # not middle + 1, which was `high`, a deleted item's id
    assert LegacyRow.objects.filter(pk=middle).exists()


def test_ctx_set_and_set_many_move_the_sequence():
    last = next_orm_id()
    with write_transaction("t"):
        ctx = CommandContext("Cmd", "t", SYSTEM, "default")
        ctx.set("Legacy", {"id": str(last + 5), "title": "set"})
        assert ctx.set_many("Legacy", [{"id": str(last + i), "title": "many"} for i in (7, 6)])
    assert next_orm_id() == last + 8
    assert sorted(LegacyRow.objects.filter(pk__gt=last).values_list("title", flat=True)) == [
        "many",
        "many",
        "orm",
        "set",
    ]


def test_an_id_that_would_use_up_the_sequence_is_refused():
    """Moving the sequence past an id near the column's end would leave it no ids to hand
    out (every insert would then fail): a new row's explicit id above half the range is
    refused, on every database; the rest of the batch goes on."""
    last = next_orm_id()
    too_large = 2**62  # BigAutoField: at most (2**63 - 1) // 2
    _, rejected = apply_events(
        [legacy(too_large, "too large"), legacy(last + 2, "fine")], user=AnonymousUser()
    )
    assert [(index, message) for index, _, message in rejected] == [
        (
            0,
            f"Legacy {too_large}: a new item's id may be at most {too_large - 1} (larger ones "
            "would use up the ids the database assigns); leave the id out with CreateLegacy",
        )
    ]
    with pytest.raises(ItemError, match="a new item's id may be at most"), write_transaction():
        ctx = CommandContext("Cmd", "t", SYSTEM, "default")
        ctx.set_many("Legacy", [{"id": str(too_large + 5), "title": "x"}])
    assert next_orm_id() == last + 3
    # A row that is already there keeps its id and can be changed.
    LegacyRow.objects.bulk_create([LegacyRow(pk=too_large, title="old")])
    set_by_client(legacy(too_large, "changed"))
    assert LegacyRow.objects.get(pk=too_large).title == "changed"
    if connection.vendor == "postgresql":  # SQLite's counter follows any row inserted
        assert next_orm_id() == last + 4


def test_rebuild_moves_the_sequence_past_rows_it_inserts_and_never_back():
    low, high = next_orm_id(), next_orm_id()  # both logged
    LegacyRow.objects.filter(pk=high).delete()  # logged: the item is gone
    with connection.cursor() as cursor:  # not logged
        cursor.execute(f"DELETE FROM {legacy_table()} WHERE id = %s", [low])
    out = io.StringIO()
    call_command("myko_rebuild", "--noinput", "--item-type", "Legacy", stdout=out)
    assert "Legacy: 1 inserted, 0 updated, 0 deleted" in out.getvalue()
    assert LegacyRow.objects.get(pk=low).title == "orm"
    assert next_orm_id() == high + 1  # not `high` again (the table's largest id + 1)


def test_adoption_moves_a_sequence_left_behind_by_rows_written_before():
    """Rows inserted with ids of their own before the model was registered (raw SQL, another
    app): adopting them also moves the sequence past them."""
    last = next_orm_id()
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {legacy_table()} (id, title, amount, "when") VALUES '
            "(%s, 'raw', 0, '2020-01-01')",
            [last + 1],
        )
    adoption.adopt(registry.get("Legacy"))
    assert next_orm_id() == last + 2


def test_the_sequence_helper_ignores_other_keys_and_databases():
    assert [f.name for f in sequences.auto_keys(LegacyRow)] == ["id"]
    assert sequences.auto_keys(Gadget) == []  # a string key: nothing to move
    sequences.advance_past(Gadget, ["a", "b"])
    sequences.advance_past(LegacyRow, [])


@pytest.mark.django_db(transaction=True)
def test_an_explicit_id_ahead_of_the_sequence_holds_orm_inserts_until_commit():
    """Concurrency: while a transaction that inserted an id ahead of the sequence is open,
    an ORM insert into that table waits, then gets an id past it (it never gets that id)."""
    if connection.vendor != "postgresql":
        pytest.skip("sequences are Postgres's")
    last = next_orm_id()
    inserted, release = threading.Event(), threading.Event()
    got: list[int] = []

    def client_event() -> None:
        try:
            with transaction.atomic():
                set_by_client(legacy(last + 1, "explicit"))
                inserted.set()
                release.wait(10)
        finally:
            connections.close_all()

    def orm_insert() -> None:
        try:
            got.append(next_orm_id())
        finally:
            connections.close_all()

    writer = threading.Thread(target=client_event)
    writer.start()
    assert inserted.wait(10)
    orm = threading.Thread(target=orm_insert)
    orm.start()
    orm.join(0.5)
    assert orm.is_alive()  # held back by the lock, not handed the client's id
    release.set()
    writer.join(10)
    orm.join(10)
    assert got == [last + 2]


@pytest.mark.django_db(transaction=True)
def test_two_writers_of_explicit_ids_ahead_of_the_sequence_both_succeed():
    """Two transactions each inserting an id ahead of the sequence: the second waits for the
    first (no deadlock), then moves the sequence past its own."""
    if connection.vendor != "postgresql":
        pytest.skip("sequences are Postgres's")
    last = next_orm_id()
    inserted, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer(item_id: int, hold: bool) -> None:
        try:
            with transaction.atomic():
                set_by_client(legacy(item_id))
                if hold:
                    inserted.set()
                    release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    first = threading.Thread(target=writer, args=(last + 10, True))
    first.start()
    assert inserted.wait(10)
    second = threading.Thread(target=writer, args=(last + 20, False))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waits for the first to commit
    release.set()
    first.join(10)
    second.join(10)
    assert errors == []
    assert next_orm_id() == last + 21


# ---- CreateX ---------------------------------------------------------------------------


def test_create_legacy_returns_the_new_id_and_stores_the_item():
    last = next_orm_id()
    response = create(
        "CreateLegacy",
        {"title": "made", "amount": "2.50", "when": "2021-02-03", "tx": "x", "other": 1},
    )
    assert response == {"id": str(last + 1)}
    row = LegacyRow.objects.get(pk=last + 1)
    assert (row.title, row.amount, row.when) == (
        "made",
        decimal.Decimal("2.50"),
        dt.date(2021, 2, 3),
    )
    # The defaults of fields left out, as for a SET; the log has the row's SET.
    assert create("CreateLegacy", {"title": "plain"}) == {"id": str(last + 2)}
    plain = LegacyRow.objects.get(pk=last + 2)
    assert (plain.amount, plain.when) == (decimal.Decimal("0"), dt.date(2020, 1, 1))
    event = Event.objects.filter(item_type="Legacy", item_id=str(last + 2)).get()
    assert event.change_type == "SET"
    assert event.item == {
        "id": str(last + 2),
        "title": "plain",
        "amount": "0.00",
        "when": "2020-01-01",
    }


def test_create_after_a_client_chose_an_id_gets_the_next_one():
    last = next_orm_id()
    set_by_client(legacy(last + 1))
    assert create("CreateLegacy", {"title": "x"}) == {"id": str(last + 2)}


def test_create_refuses_an_id():
    with pytest.raises(CommandError, match=r'CreateLegacy: "id" is assigned by the server'):
        create("CreateLegacy", {"id": "5", "title": "x"})
    with pytest.raises(CommandError, match=r'CreateGadget: "id" is assigned by the server'):
        create("CreateGadget", {"id": None, "label": "x"})
    with pytest.raises(CommandError, match="CreateLegacy: parameters must be an object"):
        run_command("CreateLegacy", ["x"], tx="t")
    assert not LegacyRow.objects.exists() and not Gadget.objects.exists()


def test_create_validates_the_item_as_a_set():
    cases = {
        "Legacy.amount must be a string": {"title": "x", "amount": 3},
        "Legacy.title is required": {"amount": "1.00"},
        "Legacy.title: Ensure this value has at most 40 characters": {"title": "x" * 41},
    }
    for message, params in cases.items():
        with pytest.raises(CommandError, match=message):
            create("CreateLegacy", params)
    with pytest.raises(CommandError, match=r"Account\.apiToken cannot be written"):
        create("CreateAccount", {"name": "ann", "apiToken": "mine"})
    with pytest.raises(CommandError, match="new items cannot be created over myko"):
        create("CreateBadge", {"label": "b"})
    with pytest.raises(CommandError, match=r"Gadget\.ownerId"):
        create("CreateGadget", {"label": "g", "ownerId": "nope"})
    assert not LegacyRow.objects.exists() and not Badge.objects.exists()
    assert not Gadget.objects.exists()


def test_create_keeps_excluded_fields_at_their_defaults():
    new_id = create("CreateAccount", {"name": "ann"})["id"]
    account = Account.objects.get(pk=int(new_id))
    assert (account.name, account.api_token, account.referrer_id) == ("ann", "tok-default", None)


def test_create_of_a_string_id_item_assigns_a_uuid():
    owner = create("CreateOwner", {"name": "o"})["id"]
    assert str(uuid.UUID(owner)) == owner
    gadget = create("CreateGadget", {"label": "g", "count": 3, "ownerId": owner})["id"]
    stored = Gadget.objects.get(pk=gadget)
    assert (stored.label, stored.count, stored.owner_id) == ("g", 3, owner)
    assert Owner.objects.get(pk=owner).name == "o"


def test_create_is_refused_for_a_key_the_server_cannot_assign():
    """A primary key with neither a default nor auto-increment: the client must give the id,
    with a SET. (TokenSalt's key is a one-to-one field; it is not an item, so its item type
    is built here.)"""
    item_type = ItemType.for_model(TokenSalt, name="Salt")
    assert not item_type.assigns_ids
    assert ItemType.for_model(LegacyRow).assigns_ids and ItemType.for_model(Gadget).assigns_ids
    with pytest.raises(Exception, match="the server cannot assign the id of a new item"):
        item_type.build({"salt": "x"}, None, assign_id=True)


def test_create_is_idempotent_per_tx():
    first = create("CreateLegacy", {"title": "once"}, tx="same")
    assert create("CreateLegacy", {"title": "once"}, tx="same") == first
    assert LegacyRow.objects.filter(title="once").count() == 1


def test_create_needs_the_add_permission():
    """Legacy is open to anyone (tests/settings.py); Vault keeps Django's model permissions."""
    assert create("CreateLegacy", {"title": "anyone"}, user=AnonymousUser())["id"]
    for who in (None, AnonymousUser(), user_with("view_vault", "change_vault")):
        with pytest.raises(CommandError, match="^Permission denied: .* may not run CreateVault"):
            create("CreateVault", {"name": "x"}, user=who)
    assert not Vault.objects.exists()
    adder = user_with("add_vault")
    new_id = create("CreateVault", {"name": "gold", "level": 2}, user=adder)["id"]
    assert Vault.objects.get(pk=new_id).level == 2


def test_create_must_leave_the_new_item_visible_to_its_writer():
    """The checks of a client's SET of a new id: Bob cannot write a note for Alice."""
    alice, bob = user_with(), user_with()
    with pytest.raises(CommandError, match="would be hidden from its writer"):
        create("CreateNote", {"ownerId": str(alice.pk), "text": "from bob"}, user=bob)
    with pytest.raises(CommandError, match="^Permission denied: anonymous"):
        create("CreateNote", {"ownerId": str(alice.pk)}, user=AnonymousUser())
    mine = create("CreateNote", {"ownerId": str(bob.pk), "text": "mine"}, user=bob)["id"]
    assert Note.objects.get(pk=mine).owner == bob
    assert Note.objects.count() == 1


def test_a_user_command_named_createx_replaces_the_derived_one():
    @operations.command("CreateLegacy", permission=AllowAny)
    def my_create(ctx, *, title: str) -> str:
        return "mine"

    try:
        assert create("CreateLegacy", {"title": "x"}) == "mine"
        found = [m for m in myko_checks.check_operations() if m.id == "myko.I001"]
        assert [m.msg for m in found] == [
            "Command 'CreateLegacy' replaces the derived command of item type Legacy (create one)."
        ]
        assert all(m.level == checks.INFO for m in found)
    finally:
        operations.unregister("command", "CreateLegacy")
    assert not LegacyRow.objects.exists()
    assert create("CreateLegacy", {"title": "x"})["id"]
