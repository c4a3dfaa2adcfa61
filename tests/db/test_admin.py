"""The Django admin writes through the event log, and shows the log read-only, per item."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from myko_django.log import read as log_read
from myko_django.models import Event
from project.demo.models import Scene, Target

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def admin(client: Client) -> Client:
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def events_after(position: int) -> list[Event]:
    return list(Event.objects.filter(position__gt=position).order_by("position"))


def target_form(**fields: str) -> dict[str, str]:
    return {"name": "", "category": "", "scene": "", "_save": "Save", **fields}


def test_add_edit_delete_target_in_admin(admin: Client):
    scene = Scene.objects.create(name="stage")
    last = log_read.high_water()

    response = admin.post(
        reverse("admin:demo_target_add"), target_form(name="lamp", scene=scene.pk)
    )
    assert response.status_code == 302, response.content[:2000]
    target = Target.objects.get()
    [added] = events_after(last)
    assert (added.change_type, added.item_type, added.item_id) == ("SET", "Target", target.pk)
    assert added.item == {"id": target.pk, "name": "lamp", "category": None, "sceneId": scene.pk}

    response = admin.post(
        reverse("admin:demo_target_change", args=[target.pk]),
        target_form(name="spot", category="light", scene=scene.pk),
    )
    assert response.status_code == 302
    [edited] = events_after(added.position)
    assert edited.change_type == "SET"
    assert edited.item["name"] == "spot" and edited.item["category"] == "light"

    response = admin.post(reverse("admin:demo_target_delete", args=[target.pk]), {"post": "yes"})
    assert response.status_code == 302
    [deleted] = events_after(edited.position)
    assert (deleted.change_type, deleted.item_id) == ("DEL", target.pk)
    assert not Target.objects.exists()


def test_delete_selected_action_logs_each_target(admin: Client):
    a, b, kept = (Target.objects.create(name=n) for n in ("a", "b", "kept"))
    last = log_read.high_water()

    response = admin.post(
        reverse("admin:demo_target_changelist"),
        {"action": "delete_selected", "_selected_action": [a.pk, b.pk], "post": "yes"},
    )

    assert response.status_code == 302
    new = events_after(last)
    assert sorted((e.change_type, e.item_id) for e in new) == sorted([("DEL", a.pk), ("DEL", b.pk)])
    assert list(Target.objects.values_list("pk", flat=True)) == [kept.pk]


def test_deleting_scene_in_admin_logs_set_null_targets(admin: Client):
    scene = Scene.objects.create(name="stage")
    t1 = Target.objects.create(name="t1", scene=scene)
    t2 = Target.objects.create(name="t2", scene=scene)
    other = Target.objects.create(name="other")
    last = log_read.high_water()

    response = admin.post(reverse("admin:demo_scene_delete", args=[scene.pk]), {"post": "yes"})

    assert response.status_code == 302
    new = events_after(last)
    sets = {e.item_id: e.item for e in new if e.change_type == "SET"}
    assert set(sets) == {t1.pk, t2.pk}
    assert all(item["sceneId"] is None for item in sets.values())
    assert [(e.change_type, e.item_type, e.item_id) for e in new if e.change_type == "DEL"] == [
        ("DEL", "Scene", scene.pk)
    ]
    assert other.pk not in sets


def test_event_changelist_filters_by_item(admin: Client):
    a = Target.objects.create(name="a")
    b = Target.objects.create(name="b")
    a.name = "a2"
    a.save()
    b_pk = b.pk
    b.delete()

    url = reverse("admin:myko_django_event_changelist")
    response = admin.get(url)
    assert response.status_code == 200

    response = admin.get(url, {"item_type": "Target", "item_id": a.pk})
    assert response.status_code == 200
    shown = list(response.context["cl"].queryset)
    assert [(e.item_type, e.item_id, e.change_type) for e in shown] == [
        ("Target", a.pk, "SET"),
        ("Target", a.pk, "SET"),
    ]
    assert b_pk not in response.content.decode()


def test_event_admin_is_read_only(admin: Client):
    Target.objects.create(name="a")
    event = Event.objects.get()
    before = list(Event.objects.values_list("position", "item"))

    assert admin.get(reverse("admin:myko_django_event_add")).status_code == 403
    assert admin.post(reverse("admin:myko_django_event_add"), {}).status_code == 403
    change = reverse("admin:myko_django_event_change", args=[event.pk])
    assert admin.get(change).status_code == 200  # viewable
    assert admin.post(change, {"tx": "forged"}).status_code == 403
    delete = reverse("admin:myko_django_event_delete", args=[event.pk])
    assert admin.post(delete, {"post": "yes"}).status_code == 403
    response = admin.post(
        reverse("admin:myko_django_event_changelist"),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302, 403)
    assert list(Event.objects.values_list("position", "item")) == before


def test_target_change_page_links_to_its_history(admin: Client):
    target = Target.objects.create(name="lamp")

    response = admin.get(reverse("admin:demo_target_change", args=[target.pk]))

    assert response.status_code == 200
    link = f"{reverse('admin:myko_django_event_changelist')}?item_type=Target&item_id={target.pk}"
    assert link in html.unescape(response.content.decode())


def test_history_link_only_for_saved_items_and_escapes_odd_ids(admin_client):
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    from project.demo.models import Target

    page = admin_client.get("/admin/demo/target/add/").content.decode()
    assert "History of this Target" not in page
    t = Target.objects.create(id="a&b c", name="odd")
    url = reverse("admin:demo_target_change", args=[quote(t.pk)])
    page = admin_client.get(url).content.decode()
    assert "item_id=a%26b+c" in page
