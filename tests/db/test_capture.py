"""Every ORM write path to an item model appends exactly the right events
(README, "The event log")."""

import pytest
from django.db import NotSupportedError, connection, transaction
from django.db.models import F

from myko_django.models import Event
from project.demo.models import Scene, Target
from tests.testapp.models import Gadget, LegacyRow, Owner, Stamp

pytestmark = [pytest.mark.django_db(transaction=True)]


def events(after=0):
    return [
        (e.change_type, e.item_type, e.item_id, e.item)
        for e in Event.objects.filter(position__gt=after).order_by("position")
    ]


def last_position():
    e = Event.objects.order_by("-position").first()
    return e.position if e else 0


def test_create_and_save_log_the_row_as_stored():
    scene = Scene.objects.create(name="stage")
    target = Target(name="t1", scene=scene)
    target.save()
    target.name = "t1b"
    target.save()
    assert events() == [
        ("SET", "Scene", scene.pk, {"id": scene.pk, "name": "stage"}),
        (
            "SET",
            "Target",
            target.pk,
            {"id": target.pk, "name": "t1", "category": None, "sceneId": scene.pk},
        ),
        (
            "SET",
            "Target",
            target.pk,
            {"id": target.pk, "name": "t1b", "category": None, "sceneId": scene.pk},
        ),
    ]


def test_update_fields_and_f_expressions_log_the_reread_row():
    g = Gadget.objects.create(label="g", count=1)
    start = last_position()
    g.count = F("count") + 10
    g.save(update_fields=["count"])
    Gadget.objects.filter(pk=g.pk).update(count=F("count") * 2)
    sets = events(start)
    assert [item["count"] for _, _, _, item in sets] == [11, 22]


def test_database_defaults_and_auto_now_are_captured():
    Stamp.objects.create()
    ((_, _, _, item),) = events()
    assert item["hits"] == 7
    assert item["created"] and item["changed"]
    assert item["created"].endswith("Z")


def test_queryset_update_logs_each_matching_row_once():
    a = Target.objects.create(name="a", category="x")
    b = Target.objects.create(name="b", category="x")
    Target.objects.create(name="c", category="y")
    start = last_position()
    assert Target.objects.filter(category="x").update(category="z") == 2
    logged = events(start)
    assert sorted(pk for _, _, pk, _ in logged) == sorted([a.pk, b.pk])
    assert all(item["category"] == "z" for _, _, _, item in logged)
    assert Target.objects.filter(category="nothing").update(name="q") == 0
    assert events(last_position()) == []


def test_delete_and_queryset_delete_log_del():
    a = Target.objects.create(name="a")
    b = Target.objects.create(name="b")
    c = Target.objects.create(name="c")
    ids = [a.pk, b.pk, c.pk]
    start = last_position()
    a.delete()
    Target.objects.filter(pk__in=ids[1:]).delete()
    assert sorted((ct, pk) for ct, _, pk, _ in events(start)) == sorted(("DEL", i) for i in ids)


def test_bulk_create_and_bulk_update():
    objs = Target.objects.bulk_create([Target(name=f"n{i}") for i in range(3)])
    assert [(ct, pk) for ct, _, pk, _ in events()] == [("SET", o.pk) for o in objs]
    start = last_position()
    for o in objs:
        o.category = "bulk"
    Target.objects.bulk_update(objs, ["category"])
    assert [item["category"] for *_, item in events(start)] == ["bulk"] * 3


def test_bulk_create_that_cannot_be_captured_is_refused():
    with pytest.raises(NotSupportedError, match="ignore_conflicts"):
        Target.objects.bulk_create([Target(name="x")], ignore_conflicts=True)
    assert Target.objects.count() == 0
    assert events() == []


def test_cascade_logs_del_for_children():
    owner = Owner.objects.create(name="o")
    g1 = Gadget.objects.create(label="g1", owner=owner)
    g2 = Gadget.objects.create(label="g2", owner=owner)
    expected = sorted(
        [("DEL", "Gadget", g1.pk), ("DEL", "Gadget", g2.pk), ("DEL", "Owner", owner.pk)]
    )
    start = last_position()
    owner.delete()
    assert sorted((ct, t, pk) for ct, t, pk, _ in events(start)) == expected


def test_set_null_logs_set_with_null_fk():
    scene = Scene.objects.create(name="s")
    t = Target.objects.create(name="t", scene=scene)
    scene_id = scene.pk
    start = last_position()
    scene.delete()
    assert events(start) == [
        ("SET", "Target", t.pk, {"id": t.pk, "name": "t", "category": None, "sceneId": None}),
        ("DEL", "Scene", scene_id, {"id": scene_id, "name": "s"}),
    ]


@pytest.mark.parametrize("field", ["keeper", "backup"])  # SET(callable), SET_DEFAULT
def test_set_callable_and_set_default_log_set(field):
    owner = Owner.objects.create(name="o")
    g = Gadget.objects.create(label="g", **{field: owner})
    owner_id = owner.pk
    start = last_position()
    owner.delete()
    logged = events(start)
    assert ("DEL", "Owner", owner_id) in [(ct, t, pk) for ct, t, pk, _ in logged]
    sets = [item for ct, t, _, item in logged if ct == "SET"]
    assert len(sets) == 1 and sets[0]["id"] == g.pk and sets[0][f"{field}Id"] is None


def test_related_manager_add_and_remove_are_captured():
    scene = Scene.objects.create(name="s")
    t = Target.objects.create(name="t")
    start = last_position()
    scene.target_set.add(t)
    assert [item["sceneId"] for *_, item in events(start)] == [scene.pk]
    start = last_position()
    scene.target_set.remove(t)
    assert [item["sceneId"] for *_, item in events(start)] == [None]


def test_get_or_create_and_update_or_create():
    t, _ = Target.objects.get_or_create(name="g")
    Target.objects.update_or_create(pk=t.pk, defaults={"category": "c"})
    assert [item["category"] for *_, item in events()] == [None, "c"]


def test_rollback_leaves_no_event_and_publishes_nothing(published):
    with pytest.raises(RuntimeError), transaction.atomic():
        Target.objects.create(name="doomed")
        raise RuntimeError("boom")
    assert events() == []
    assert published == []


def _create_in_a_rolled_back_savepoint(name: str) -> None:
    try:
        with transaction.atomic():
            Target.objects.create(name=name)
            raise RuntimeError
    except RuntimeError:
        pass


def test_savepoint_rollback_drops_only_its_events(published):
    with transaction.atomic():
        Target.objects.create(name="kept")
        _create_in_a_rolled_back_savepoint("dropped")
    assert [item["name"] for *_, item in events()] == ["kept"]
    assert [e.item["name"] for batch in published for e in batch] == ["kept"]


def test_saves_in_one_transaction_are_published_together(published):
    """Several ORM writes in one transaction (an admin action, a loop of saves) reach
    subscribers as one batch; a savepoint rolled back in between still drops its own."""
    with transaction.atomic():
        Target.objects.create(name="a")
        Target.objects.create(name="b")
        _create_in_a_rolled_back_savepoint("dropped")
        Target.objects.create(name="c")
    assert [[e.item["name"] for e in batch] for batch in published] == [["a", "b", "c"]]
    Target.objects.create(name="d")  # its own transaction: its own batch
    assert [e.item["name"] for e in published[-1]] == ["d"]


def test_events_are_published_only_after_commit(published):
    with transaction.atomic():
        Target.objects.create(name="t")
        assert published == []
    assert [e.change_type for batch in published for e in batch] == ["SET"]


def test_registered_existing_model_uses_its_integer_pk_as_string_id():
    row = LegacyRow.objects.create(title="old")
    ((ct, item_type, item_id, item),) = events()
    assert (ct, item_type, item_id) == ("SET", "Legacy", str(row.pk))
    assert item == {"id": str(row.pk), "title": "old", "amount": "0.00", "when": "2020-01-01"}


def test_positions_are_gap_free_and_ordered():
    for i in range(5):
        Target.objects.create(name=str(i))
    positions = list(Event.objects.order_by("position").values_list("position", flat=True))
    assert positions == list(range(positions[0], positions[0] + 5))


def test_raw_sql_is_not_captured_documented_bypass():
    """Raw SQL bypasses the ORM (documented; myko_resync repairs it)."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO demo_scene (id, name) VALUES ('raw', 'raw')")
    assert events() == []


def test_update_on_distinct_and_annotated_querysets():
    from django.db.models import Count

    t = Target.objects.create(name="a", category="x")
    start = last_position()
    assert Target.objects.filter(category="x").distinct().update(name="b") == 1
    assert Target.objects.annotate(n=Count("id")).filter(pk=t.pk).update(name="c") == 1
    assert [item["name"] for *_, item in events(start)] == ["b", "c"]


def test_loaddata_is_captured(tmp_path):
    from django.core.management import call_command

    fixture = tmp_path / "scenes.json"
    fixture.write_text('[{"model": "demo.scene", "pk": "s1", "fields": {"name": "loaded"}}]')
    call_command("loaddata", str(fixture), verbosity=0)
    assert events() == [("SET", "Scene", "s1", {"id": "s1", "name": "loaded"})]


def test_floats_read_back_from_the_log_stay_floats():
    from myko_django.log import read as log_read

    Gadget.objects.create(label="f", ratio=1e16)
    (event,) = list(log_read.read(0))
    assert type(event.item["ratio"]) is float and event.item["ratio"] == 1e16


def test_writes_through_a_proxy_model_are_captured():
    from tests.testapp.models import ShinyGadget

    g = ShinyGadget.objects.create(id="p1", label="shiny")
    g.label = "shinier"
    g.save()
    ShinyGadget.objects.get(pk="p1").delete()
    assert [(ct, t, pk) for ct, t, pk, _ in events()] == [
        ("SET", "Gadget", "p1"),
        ("SET", "Gadget", "p1"),
        ("DEL", "Gadget", "p1"),
    ]
