"""myko_compact: superseded events older than a cut leave the log, every item's latest event
stays, and so myko_rebuild computes and restores exactly what it did before."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from myko_django.log import compaction
from myko_django.log.read import high_water
from myko_django.models import Event
from project.demo.models import Scene, Target
from tests.support.reconcile import log, random_writes, snapshot, sql, table
from tests.testapp.models import Gadget, LegacyRow, Owner, Stamp

pytestmark = [pytest.mark.django_db]


def compact(*args: str) -> str:
    out = io.StringIO()
    call_command("myko_compact", *args, stdout=out)
    return out.getvalue()


def rebuild(*args: str) -> str:
    out = io.StringIO()
    call_command("myko_rebuild", "--noinput", *args, stdout=out)
    return out.getvalue()


def latest_events() -> dict[tuple[str, str], tuple]:
    """(item type, item id) -> its latest event, as logged."""
    latest: dict[tuple[str, str], tuple] = {}
    for event in log():  # position order: later ones overwrite
        latest[event[2], event[3]] = event
    return latest


def age(days: float, *, upto: int | None = None, after: int = 0) -> None:
    """Make the events at positions in (after, upto] `days` old."""
    events = Event.objects.filter(position__gt=after)
    if upto is not None:
        events = events.filter(position__lte=upto)
    events.update(created_at=timezone.now() - dt.timedelta(days=days))


@pytest.mark.parametrize("batch", ["10000", "3"])
def test_rebuild_is_exact_after_compaction(batch: str):
    random_writes(seed=20261202)
    before, events, latest = snapshot(), log(), latest_events()
    head = high_water()
    assert len(events) > len(latest)  # there is something to compact

    # Writes that bypassed capture, as in test_rebuild_restores_tables_exactly_without_appending:
    # what rebuild plans for them must not change with compaction.
    gadgets = [g.pk for g in Gadget.objects.order_by("pk")]
    sql(f"UPDATE {table(Gadget)} SET label = 'XX', count = count + 100 WHERE id = %s", [gadgets[0]])
    sql(f"DELETE FROM {table(Gadget)} WHERE id = %s", [gadgets[-1]])
    sql(f"UPDATE {table(Stamp)} SET hits = 0")
    sql(f"UPDATE {table(LegacyRow)} SET title = 'zzz'")
    deleted_targets = [k[1] for k, e in latest.items() if k[0] == "Target" and e[4] == "DEL"]
    assert deleted_targets  # a DEL is some item's latest event
    sql(
        f"INSERT INTO {table(Target)} (id, name, category) VALUES (%s, 'back', NULL)",
        [deleted_targets[0]],
    )
    sql(f"INSERT INTO {table(Owner)} (id, name) VALUES ('never-logged', 'x')")
    plan = rebuild("--dry-run")

    out = compact("--older-than", "0", "--batch", batch)

    removed = len(events) - len(latest)
    assert f"Removed {removed} superseded event(s) at positions up to {head}" in out
    assert latest_events() == latest  # the same latest event per item, at its position
    assert sorted(log()) == sorted(latest.values())
    assert high_water() == head
    assert rebuild("--dry-run") == plan
    rebuild("--delete-unlogged")
    assert snapshot() == before
    assert not Target.objects.filter(pk=deleted_targets[0]).exists()
    # The DEL was kept: the row put back by raw SQL is deleted again.
    # A second run finds nothing; new writes go on from the old head.
    assert "Removed 0 superseded event(s)" in compact("--older-than", "0")
    Scene.objects.create(id="after", name="after")
    assert high_water() == head + 1


def test_only_events_older_than_the_cut_are_removed():
    target = Target.objects.create(id="t1", name="a")
    for name in "bc":
        target.name = name
        target.save()
    lone = Target.objects.create(id="lone", name="only one event")
    Target.objects.create(id="gone", name="x").delete()
    old_head = high_water()  # t1: a b c, lone: SET, gone: SET DEL
    age(40)
    target.name = "d"
    target.save()
    target.name = "e"
    target.save()  # recent: d is superseded by e, but young

    assert compaction.cut_position(timezone.now() - dt.timedelta(days=30)) == old_head
    out = compact("--older-than", "30")

    assert "Removed 4 superseded event(s)" in out and "Target 4" in out
    kept = [(e[3], e[4], (e[5] or {}).get("name")) for e in log()]
    assert kept == [
        ("lone", "SET", "only one event"),
        ("gone", "DEL", "x"),  # the latest event of a deleted item is kept
        ("t1", "SET", "d"),  # superseded, but younger than the cut
        ("t1", "SET", "e"),
    ]
    assert lone.pk in {e[3] for e in log()}


def test_the_cut_steps_over_holes_and_follows_creation_times():
    for i in range(20):
        Scene.objects.create(id=f"s{i}", name="x")
    p = list(Event.objects.order_by("position").values_list("position", flat=True))
    assert len(p) == 20
    age(50, upto=p[11])
    age(20, after=p[11])

    def cut(days: float) -> int:
        return compaction.cut_position(timezone.now() - dt.timedelta(days=days))

    assert (cut(30), cut(60), cut(10)) == (p[11], 0, p[19])
    Event.objects.filter(position__in=[p[i] for i in (4, 5, 6, 10, 11, 12)]).delete()  # holes
    assert (cut(30), cut(60), cut(10)) == (p[9], 0, p[19])


def test_archive_holds_exactly_the_removed_events(tmp_path):
    for i in range(5):
        Target.objects.update_or_create(id="t", defaults={"name": f"n{i}"})
    Target.objects.get(id="t").delete()
    Scene.objects.create(id="s", name="s")
    before = {e.position: e for e in Event.objects.all()}
    path = tmp_path / "events.jsonl.gz"

    out = compact("--older-than", "0", "--archive", str(path), "--batch", "2")

    assert "Removed 5 superseded event(s)" in out and f"Archived them to {path}" in out
    archived = [json.loads(line) for line in gzip.open(path).read().splitlines()]
    left = set(Event.objects.values_list("position", flat=True))
    assert [a["position"] for a in archived] == sorted(set(before) - left)
    for line in archived:
        event = before[line["position"]]
        assert line == {
            "position": event.position,
            "tx": event.tx,
            "item_type": event.item_type,
            "item_id": event.item_id,
            "change_type": event.change_type,
            "item": event.item,
            "created_at": event.created_at.isoformat(),
            "source_id": event.source_id,
        }
    # A later run appends to the same file (a second gzip member); nothing to add now.
    Target.objects.create(id="t2", name="a")
    Target.objects.filter(id="t2").update(name="b")
    compact("--older-than", "0", "--archive", str(path))
    lines = gzip.open(path).read().splitlines()
    assert len(lines) == 6 and json.loads(lines[-1])["item_id"] == "t2"


def test_a_batch_whose_archive_fails_stays_in_the_log(monkeypatch):
    for name in "abc":
        Target.objects.update_or_create(id="t", defaults={"name": name})
    events = log()

    def broken(rows):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        compaction.compact(high_water(), archive=broken)
    assert log() == events


def test_dry_run_changes_nothing():
    for name in "abc":
        Target.objects.update_or_create(id="t", defaults={"name": name})
    events = log()
    out = compact("--older-than", "0", "--dry-run")
    assert "Would remove 2 superseded event(s)" in out and "Target 2" in out
    assert log() == events


def test_nothing_old_enough():
    Target.objects.create(id="t", name="a")
    Target.objects.filter(id="t").update(name="b")
    assert "No event is older than 30 days" in compact()
    assert len(log()) == 2
    with pytest.raises(CommandError, match="--older-than"):
        compact("--older-than", "-1")
