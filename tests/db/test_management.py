"""myko_rebuild and myko_resync: the item tables and the event log can each be made to match
the other after writes that bypassed capture, and a second run changes nothing."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from myko_django.log import append, reconcile
from myko_django.log import read as log_read
from myko_django.management.commands import myko_resync
from myko_django.models import Event
from project.demo.models import Scene, Target
from tests.support.reconcile import log, random_writes, snapshot, sql, table
from tests.testapp.models import Gadget, LegacyRow, Note, Owner, Stamp

pytestmark = [pytest.mark.django_db]

UTC = dt.UTC


@pytest.fixture(params=[500, 3], ids=["one-page", "pages-of-3"])
def page_size(request, monkeypatch) -> int:
    """Run a test with the commands' default page size and with pages of 3 rows."""
    monkeypatch.setattr(reconcile, "PAGE", request.param)
    return request.param


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, "--noinput", stdout=out)
    return out.getvalue()


def test_rebuild_restores_tables_exactly_without_appending(page_size: int):
    anchor = random_writes(seed=20240601)
    # The capture wrote every change: the log already matches the tables.
    assert "Would append 0 SET, 0 DEL" in run("myko_resync", "--dry-run")
    before, events = snapshot(), log()
    gadgets = [g.pk for g in Gadget.objects.exclude(pk=anchor.pk).order_by("pk")]
    stamp = Stamp.objects.order_by("pk").first()
    legacy = LegacyRow.objects.order_by("pk").first()
    target = Target.objects.order_by("pk").first()

    sql(
        f"UPDATE {table(Gadget)} SET label = 'XX', count = count + 100, price = NULL WHERE id = %s",
        [anchor.pk],
    )
    sql(f"DELETE FROM {table(Gadget)} WHERE id = %s", [gadgets[0]])
    sql(f"UPDATE {table(Gadget)} SET label = 'YY', extra = NULL WHERE id = %s", [gadgets[1]])
    sql(
        f"UPDATE {table(Stamp)} SET changed = %s, hits = 0 WHERE id = %s",
        [dt.datetime(2000, 1, 1, tzinfo=UTC), stamp.pk],
    )
    sql(f"DELETE FROM {table(Stamp)} WHERE id <> %s", [stamp.pk])
    sql(f"UPDATE {table(LegacyRow)} SET title = 'zzz'")
    sql(f"DELETE FROM {table(LegacyRow)} WHERE id = %s", [legacy.pk])
    sql(f"DELETE FROM {table(Target)} WHERE id = %s", [target.pk])
    sql(
        f"INSERT INTO {table(Gadget)} (id, label, note, count, active) "
        "VALUES ('extra', 'extra', '', 1, %s)",
        [True],
    )
    sql(f"INSERT INTO {table(Owner)} (id, name) VALUES ('extra-owner', 'x')")
    sql(
        f'INSERT INTO {table(LegacyRow)} (id, title, amount, "when") '
        "VALUES (99999, 'extra', 1, '2020-01-01')"
    )
    assert snapshot() != before

    # The raw inserts were never logged: kept by default (tests/db/test_adoption.py).
    out = run("myko_rebuild", "--delete-unlogged")

    assert snapshot() == before
    assert log() == events
    assert Note.objects.get().gadget_id == anchor.pk
    assert "Rebuilt" in out and "no events appended" in out
    assert "Gadget: 1 inserted, 2 updated, 1 deleted" in out
    assert "Legacy: 1 inserted" in out and "1 deleted" in out
    # Rebuilding again finds nothing to do; new rows still get fresh autoincrement ids.
    assert "0 inserted, 0 updated, 0 deleted; no events appended" in run("myko_rebuild")
    LegacyRow.objects.create(title="after")
    assert "Would append 0 SET, 0 DEL" in run("myko_resync", "--dry-run")


def test_rebuild_refuses_to_orphan_non_item_rows():
    anchor = random_writes(seed=7, rounds=10)
    with transaction.atomic():
        append.append([append.Pending("DEL", "Gadget", anchor.pk, None)], tx="t", source_id=None)
    sql(f"UPDATE {table(Owner)} SET name = 'corrupt'")
    before, events = snapshot(), log()

    with pytest.raises(CommandError, match=r"testapp\.Note.*Nothing was changed"):
        run("myko_rebuild")

    assert snapshot() == before
    assert log() == events


def test_resync_appends_exactly_the_missing_events_once(page_size: int):
    scene = Scene.objects.create(name="kept")
    target = Target.objects.create(name="t", scene=scene)
    gone = Gadget.objects.create(label="gone")
    legacy = LegacyRow.objects.create(title="old")
    Owner.objects.create(name="untouched")
    last = log_read.high_water()

    sql(f"INSERT INTO {table(Scene)} (id, name) VALUES ('raw-scene', 'raw')")
    sql(f"UPDATE {table(Target)} SET name = 'renamed' WHERE id = %s", [target.pk])
    sql(f"DELETE FROM {table(Gadget)} WHERE id = %s", [gone.pk])
    sql(f"DELETE FROM {table(LegacyRow)} WHERE id = %s", [legacy.pk])

    out = run("myko_resync")

    new = list(Event.objects.filter(position__gt=last).order_by("position"))
    assert {(e.change_type, e.item_type, e.item_id) for e in new} == {
        ("SET", "Scene", "raw-scene"),
        ("SET", "Target", target.pk),
        ("DEL", "Gadget", gone.pk),
        ("DEL", "Legacy", str(legacy.pk)),
    }
    assert len(new) == 4
    assert all(e.tx.startswith("resync-") for e in new) and len({e.tx for e in new}) == 1
    by_id = {e.item_id: e.item for e in new}
    assert by_id["raw-scene"] == {"id": "raw-scene", "name": "raw"}
    assert by_id[target.pk] == {
        "id": target.pk,
        "name": "renamed",
        "category": None,
        "sceneId": scene.pk,
    }
    assert by_id[str(legacy.pk)]["title"] == "old"  # a DEL carries the last logged item
    assert "Scene: 1 SET, 0 DEL" in out
    assert "Target: 1 SET, 0 DEL" in out
    assert "Gadget: 0 SET, 1 DEL" in out
    assert "Legacy: 0 SET, 1 DEL" in out
    assert "Appended 2 SET, 2 DEL in total" in out

    high = log_read.high_water()
    assert "Appended 0 SET, 0 DEL in total." in run("myko_resync")
    assert log_read.high_water() == high

    tables = snapshot()
    assert "0 inserted, 0 updated, 0 deleted" in run("myko_rebuild")
    assert snapshot() == tables
    assert log_read.high_water() == high


def test_resync_dry_run_and_item_type_filter():
    Scene.objects.create(name="a")
    sql(f"UPDATE {table(Scene)} SET name = 'b'")
    sql(f"INSERT INTO {table(Owner)} (id, name) VALUES ('raw-owner', 'x')")
    last = log_read.high_water()

    out = run("myko_resync", "--dry-run")
    assert "Would append 2 SET, 0 DEL in total." in out
    assert log_read.high_water() == last

    out = run("myko_resync", "--item-type", "Scene")
    assert "Scene: 1 SET, 0 DEL" in out and "Owner" not in out
    assert list(Event.objects.filter(position__gt=last).values_list("item_type", "item")) == [
        ("Scene", {"id": Scene.objects.get().pk, "name": "b"})
    ]
    with pytest.raises(CommandError, match="Unknown item type: Nope"):
        run("myko_resync", "--item-type", "Nope")


def test_rebuild_item_type_filter_and_confirmation(monkeypatch):
    owner = Owner.objects.create(name="o")
    scene = Scene.objects.create(name="s")
    sql(f"UPDATE {table(Owner)} SET name = 'x'")
    sql(f"UPDATE {table(Scene)} SET name = 'y'")

    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(CommandError, match="cancelled"):
        call_command("myko_rebuild", stdout=io.StringIO())
    assert Scene.objects.get().name == "y"

    out = run("myko_rebuild", "--item-type", "Scene")
    assert "Scene: 0 inserted, 1 updated, 0 deleted" in out and "Owner" not in out
    assert Scene.objects.get(pk=scene.pk).name == "s"
    assert Owner.objects.get(pk=owner.pk).name == "x"

    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    call_command("myko_rebuild", stdout=io.StringIO())
    assert Owner.objects.get(pk=owner.pk).name == "o"


def test_rebuild_inserts_logged_rows_and_moves_the_id_sequence():
    with transaction.atomic():
        item = {"id": "500", "title": "from log", "amount": "2.50", "when": "2021-02-03"}
        append.append([append.Pending("SET", "Legacy", "500", item)], tx="t", source_id=None)

    assert "Legacy: 1 inserted, 0 updated, 0 deleted" in run("myko_rebuild")

    row = LegacyRow.objects.get(pk=500)
    assert (row.title, row.amount, row.when) == (
        "from log",
        decimal.Decimal("2.50"),
        dt.date(2021, 2, 3),
    )
    assert LegacyRow.objects.create(title="next").pk > 500


def test_rebuild_refuses_a_logged_item_the_table_cannot_store():
    with transaction.atomic():
        item = {"id": "1", "title": "x", "amount": 3}  # amount must be a decimal string
        append.append([append.Pending("SET", "Legacy", "1", item)], tx="t", source_id=None)

    with pytest.raises(CommandError, match=r"Legacy 1: .*Legacy\.amount must be a string"):
        run("myko_rebuild")
    assert not LegacyRow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_resync_holds_writers_until_it_commits(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("table locks are taken on Postgres only")
    sql(f"INSERT INTO {table(Scene)} (id, name) VALUES ('raw', 'raw')")
    locked, release = threading.Event(), threading.Event()
    resync = myko_resync.Command._resync

    def paused(self, *args, **kwargs):
        locked.set()
        assert release.wait(10)
        return resync(self, *args, **kwargs)

    monkeypatch.setattr(myko_resync.Command, "_resync", paused)

    def in_thread(work) -> threading.Thread:
        def target():
            try:
                work()
            finally:
                connections.close_all()

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    command = in_thread(lambda: run("myko_resync", "--item-type", "Scene"))
    assert locked.wait(10)
    writer = in_thread(lambda: Scene.objects.create(id="written", name="w"))
    time.sleep(0.3)
    assert writer.is_alive()  # waiting for the resync's table lock
    release.set()
    command.join(10)
    writer.join(10)

    order = list(Event.objects.order_by("position").values_list("item_id", flat=True))
    assert order == ["raw", "written"]
