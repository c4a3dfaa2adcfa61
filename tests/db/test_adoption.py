"""Rows that predate their model's registration (issue 10, point 1).

`manage.py migrate` adopts them (a SET each, a page per transaction) and marks the item type;
`manage.py check --database` warns about them before; `myko_rebuild` never deletes a row
that was never logged unless `--delete-unlogged` says so, has `--dry-run`, and shows the
counts before it asks."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from django.core import checks
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from myko_django.items.registry import ItemType, registry
from myko_django.log import adoption, append
from myko_django.log import read as log_read
from myko_django.models import Adoption, Event
from project.demo.models import Scene
from tests.testapp.models import Gadget, LegacyRow, Note, Owner

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def customer(monkeypatch) -> ItemType:
    """A model with rows is registered, as a user adds `@myko_django.register(name=
    "Customer")` to an existing model: testapp's Note (its table is not an item's)."""
    gadget = Gadget.objects.create(label="g")
    for text in ("ann", "bob", "cy"):
        Note.objects.create(gadget=gadget, text=text)  # not an item yet: nothing logged
    assert not Event.objects.filter(item_type="Customer").exists()
    item_type = ItemType.for_model(Note, name="Customer")
    monkeypatch.setitem(registry.by_name, "Customer", item_type)
    monkeypatch.setitem(registry.by_model, Note, item_type)
    return item_type


@pytest.fixture(params=[1000, 2], ids=["one-page", "pages-of-2"])
def page_size(request, monkeypatch) -> int:
    monkeypatch.setattr(adoption, "PAGE", request.param)
    return request.param


def run(*args: str, **kwargs: Any) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


def w020(databases: tuple[str, ...] | None = ("default",)) -> list[checks.CheckMessage]:
    found = checks.run_checks(tags=["myko"], databases=databases)
    return [m for m in found if m.id == "myko.W020"]


def sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def events(item_type: str) -> list[tuple]:
    rows = Event.objects.filter(item_type=item_type).order_by("position")
    return list(rows.values_list("item_id", "change_type", "item", "tx", "source_id"))


def rows_and_log() -> tuple:
    """Every item table (and Note's) as stored, the log, and the adoption markers."""
    models = [t.model for t in registry] + [Note]
    tables = {m._meta.label: sorted(map(repr, m._base_manager.values())) for m in models}
    log = list(Event.objects.order_by("position").values_list())
    return tables, log, list(Adoption.objects.order_by("item_type").values_list())


# ---- adopting --------------------------------------------------------------------------


def test_migrate_adopts_the_rows_of_a_newly_registered_model(customer: ItemType):
    # Before: the check names the type (a database check: migrate and check --database).
    (warning,) = w020()
    assert warning.obj is Note and "Customer" in warning.msg and "migrate" in warning.hint
    assert w020(databases=None) == []  # plain `check` and runserver read no database
    # What issue 10 saw: rebuild would have deleted them. Now it keeps them.
    out = run("myko_rebuild", "--noinput", "--item-type", "Customer")
    assert "Customer: 0 inserted, 0 updated, 0 deleted, 3 kept (never logged)" in out
    assert Note.objects.count() == 3

    out = run("migrate", verbosity=1)

    assert "adopting the existing rows of Customer" in out
    assert "Customer: adopted, 3 SET appended." in out
    logged = events("Customer")
    notes = {str(n.pk): n for n in Note.objects.all()}
    assert sorted(i for i, *_ in logged) == sorted(notes)
    for item_id, change, item, tx, source in logged:
        note = notes[item_id]
        assert change == "SET" and source == "myko_adopt" and tx.startswith("adopt-")
        assert item == {"id": item_id, "gadgetId": note.gadget_id, "text": note.text}
    marker = Adoption.objects.get(item_type="Customer")
    assert (marker.source, marker.events) == ("myko_adopt", 3)
    assert w020() == []
    # The log now holds them: resync finds nothing, rebuild keeps nothing aside.
    assert "Customer: 0 SET, 0 DEL" in run("myko_resync", "--dry-run", "--item-type", "Customer")
    out = run("myko_rebuild", "--dry-run", "--item-type", "Customer")
    assert "Customer: would insert 0, update 0, delete 0\n" in out
    # Again: nothing to do, and no table is read (the marker says so).
    high = log_read.high_water()
    assert "adopting" not in run("migrate", verbosity=1)
    assert log_read.high_water() == high


def test_adoption_appends_one_set_per_unlogged_row_page_by_page(page_size: int):
    legacy = registry.get("Legacy")
    logged = [LegacyRow.objects.create(title=f"orm {i}") for i in range(3)]  # captured
    logged[0].title = "changed"
    logged[0].save()
    for n in range(9001, 9006):  # raw SQL: nothing captured
        sql(
            f'INSERT INTO {table(LegacyRow)} (id, title, amount, "when") '
            "VALUES (%s, %s, 2.5, '2021-03-04')",
            [n, f"raw {n}"],
        )
    Adoption.objects.filter(item_type="Legacy").delete()  # registered after those rows
    before = events("Legacy")
    seen: list[tuple[int, int]] = []

    appended = adoption.adopt(legacy, progress=lambda r, a: seen.append((r, a)))

    assert appended == 5
    new = events("Legacy")[len(before) :]
    assert [(i, c) for i, c, *_ in new] == [(str(n), "SET") for n in range(9001, 9006)]
    assert new[0][2] == {"id": "9001", "title": "raw 9001", "amount": "2.50", "when": "2021-03-04"}
    assert len({tx for *_, tx, _ in new}) == 1  # one adoption, one tx, several commits
    assert seen[-1] == (8, 5) and len(seen) == -(-8 // page_size)
    assert Adoption.objects.get(item_type="Legacy").events == 5
    # Rows that had events are left to the log (and to myko_resync): no second SET.
    assert "Legacy: 0 SET, 0 DEL" in run("myko_resync", "--dry-run", "--item-type", "Legacy")
    Adoption.objects.filter(item_type="Legacy").delete()
    assert adoption.adopt(legacy) == 0


def test_migrate_marks_empty_tables_without_appending_and_waits_for_migrations(
    customer: ItemType, monkeypatch
):
    Adoption.objects.all().delete()
    Note.objects.all().delete()
    LegacyRow.objects.create(title="logged")
    Adoption.objects.filter(item_type="Legacy").delete()
    high = log_read.high_water()

    adoption.adopt_waiting()  # every table is empty or fully logged

    assert set(Adoption.objects.values_list("item_type", flat=True)) == {t.name for t in registry}
    assert log_read.high_water() == high

    # A partial migrate (models ahead of their tables) adopts nothing yet, and says so.
    Note.objects.create(gadget=Gadget.objects.create(label="g"), text="later")
    Adoption.objects.filter(item_type="Customer").delete()
    monkeypatch.setattr(adoption, "fully_migrated", lambda using="default": False)
    said: list[str] = []
    adoption.adopt_waiting(write=said.append)
    assert said == [
        "myko: not adopting the existing rows of Customer until every migration is applied."
    ]
    assert not Adoption.objects.filter(item_type="Customer").exists()
    assert events("Customer") == []


def test_resync_marks_what_it_covered(customer: ItemType):
    out = run("myko_resync", "--noinput", "--item-type", "Customer")
    assert "Customer: 3 SET, 0 DEL" in out
    marker = Adoption.objects.get(item_type="Customer")
    assert (marker.source, marker.events) == ("myko_resync", 3)
    assert w020() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_adoptions_and_writers_leave_one_set_per_row_and_the_latest_state(
    monkeypatch,
):
    if connection.vendor != "postgresql":
        pytest.skip("the table lock is taken on Postgres only; SQLite has one writer")
    monkeypatch.setattr(adoption, "PAGE", 7)
    sql(
        f'INSERT INTO {table(LegacyRow)} (id, title, amount, "when") '
        "SELECT g, 'raw', 1, '2020-01-01' FROM generate_series(1, 120) g"
    )
    Adoption.objects.filter(item_type="Legacy").delete()
    legacy = registry.get("Legacy")
    errors: list[BaseException] = []
    stop = threading.Event()

    def in_thread(work) -> threading.Thread:
        def target():
            try:
                work()
            except BaseException as exc:  # noqa: BLE001  (reported by the assert below)
                errors.append(exc)
            finally:
                connections.close_all()

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            row = LegacyRow.objects.get(pk=(n * 37) % 120 + 1)
            row.title = f"w{n}"
            row.save()  # captured: its own SET, after or before the adopter's page

    threads = [in_thread(lambda: adoption.adopt(legacy)) for _ in range(2)]
    write = in_thread(writer)
    for thread in threads:
        thread.join(30)
    stop.set()
    write.join(10)
    assert not errors

    adopted = Event.objects.filter(item_type="Legacy", source_id="myko_adopt")
    ids = list(adopted.values_list("item_id", flat=True))
    assert len(ids) == len(set(ids))  # never two SETs for one row
    logged = set(Event.objects.filter(item_type="Legacy").values_list("item_id", flat=True))
    assert logged == {str(n) for n in range(1, 121)}
    # The latest event of every row is the row as it is: the log is the truth again.
    assert "Would append 0 SET, 0 DEL" in run("myko_resync", "--dry-run", "--item-type", "Legacy")
    assert Adoption.objects.filter(item_type="Legacy").count() == 1


# ---- myko_rebuild ----------------------------------------------------------------------


def corrupt() -> dict[str, Any]:
    """One of each: a logged row missing (insert), a changed row (update), a row the log
    says is deleted (delete), and a row never logged (kept unless --delete-unlogged)."""
    gone = Scene.objects.create(name="missing")
    changed = Scene.objects.create(name="right")
    deleted = Gadget.objects.create(label="deleted")
    with transaction.atomic():
        append.append([append.Pending("DEL", "Gadget", deleted.pk, None)], tx="t", source_id=None)
    sql(f"DELETE FROM {table(Scene)} WHERE id = %s", [gone.pk])
    sql(f"UPDATE {table(Scene)} SET name = 'wrong' WHERE id = %s", [changed.pk])
    sql(f"INSERT INTO {table(Owner)} (id, name) VALUES ('unlogged', 'raw')")
    return {"gone": gone, "changed": changed, "deleted": deleted}


def test_rebuild_keeps_never_logged_rows_unless_told_and_deletes_logged_deletions():
    made = corrupt()

    out = run("myko_rebuild", "--noinput")

    assert "Gadget: 0 inserted, 0 updated, 1 deleted" in out
    assert "Owner: 0 inserted, 0 updated, 0 deleted, 1 kept (never logged)" in out
    assert "Scene: 1 inserted, 1 updated, 0 deleted" in out
    assert "Rows never logged (no event for their id) are kept" in out
    assert "myko_rebuild --delete-unlogged to delete them" in out
    assert "1 inserted, 1 updated, 1 deleted, 1 kept (never logged); no events appended." in out
    assert not Gadget.objects.filter(pk=made["deleted"].pk).exists()  # the log says gone
    assert Owner.objects.get(pk="unlogged").name == "raw"  # the log says nothing: kept
    assert Scene.objects.get(pk=made["gone"].pk).name == "missing"
    assert Scene.objects.get(pk=made["changed"].pk).name == "right"

    high = log_read.high_water()
    out = run("myko_rebuild", "--noinput", "--delete-unlogged")

    assert "Owner: 0 inserted, 0 updated, 1 deleted" in out and "kept" not in out
    assert not Owner.objects.filter(pk="unlogged").exists()
    assert log_read.high_water() == high  # rebuild appends nothing


@pytest.mark.django_db(transaction=True)  # the real read-only snapshot, outside any transaction
def test_dry_run_changes_nothing_and_prints_the_counts(monkeypatch):
    corrupt()
    before = rows_and_log()
    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail("dry run asked"))

    out = run("myko_rebuild", "--dry-run")

    assert "Gadget: would insert 0, update 0, delete 1\n" in out
    assert "Owner: would insert 0, update 0, delete 0, 1 kept (never logged)\n" in out
    assert "Scene: would insert 1, update 1, delete 0\n" in out
    assert "Legacy: would insert 0, update 0, delete 0\n" in out
    types = len(list(registry))
    assert (
        f"Would rebuild {types} item types from the log: 1 inserted, 1 updated, 1 deleted, "
        "1 kept (never logged).\n"
    ) in out
    assert rows_and_log() == before

    out = run("myko_rebuild", "--dry-run", "--delete-unlogged", "--item-type", "Owner")
    assert out.startswith("Owner: would insert 0, update 0, delete 1\n")
    assert rows_and_log() == before


def test_the_prompt_shows_the_counts_and_what_was_shown_is_done(monkeypatch):
    made = corrupt()
    before = rows_and_log()
    asked: list[tuple[str, str]] = []
    out = io.StringIO()

    def answer(reply: str):
        def ask(prompt: str) -> str:
            asked.append((prompt, out.getvalue()))
            return reply

        return ask

    monkeypatch.setattr("builtins.input", answer("no"))
    with pytest.raises(CommandError, match="Rebuild cancelled"):
        call_command("myko_rebuild", stdout=out)
    ((prompt, shown),) = asked
    assert prompt == (
        "This rewrites the item tables from the event log: 1 inserted, 1 updated, "
        "1 deleted, 1 kept (never logged). Type 'yes' to continue: "
    )
    assert "Scene: would insert 1, update 1, delete 0" in shown  # per type, before asking
    assert rows_and_log() == before

    out = io.StringIO()
    monkeypatch.setattr("builtins.input", answer("yes"))
    call_command("myko_rebuild", stdout=out)
    assert "Scene: 1 inserted, 1 updated, 0 deleted" in out.getvalue()
    assert Scene.objects.get(pk=made["changed"].pk).name == "right"

    # Nothing left to do: nothing to ask.
    out = io.StringIO()
    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail("asked for nothing"))
    call_command("myko_rebuild", stdout=out)
    assert "Nothing to rebuild." in out.getvalue()


def test_a_write_while_the_prompt_waits_cancels_the_rebuild(monkeypatch):
    made = corrupt()
    shown: list[tuple] = []

    def ask(prompt: str) -> str:
        # Someone repairs the changed row by hand while the prompt waits: 0 updates now.
        sql(f"UPDATE {table(Scene)} SET name = 'right' WHERE id = %s", [made["changed"].pk])
        shown.append(rows_and_log())
        return "yes"

    monkeypatch.setattr("builtins.input", ask)
    with pytest.raises(CommandError, match="changed while you were asked"):
        call_command("myko_rebuild", stdout=io.StringIO())
    assert rows_and_log() == shown[0]  # nothing was changed
    assert not Scene.objects.filter(pk=made["gone"].pk).exists()
