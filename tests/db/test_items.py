"""Items on the wire: encoding, strict decoding through the model, system checks."""

import datetime as dt
import decimal
import uuid

import pytest
from django.core import checks
from django.db import models

from myko_django.checks import check_items
from myko_django.items.errors import ItemError
from myko_django.items.registry import ItemType, Registry, registry
from project.demo.models import Target
from tests.support.data import every_kind
from tests.testapp.models import Gadget, Owner


def test_registry_names_plurals_and_wire_fields():
    assert registry.get("Target").model is Target
    assert registry.get("Target").plural == "Targets"
    assert registry.get("Legacy").plural == "Legacies"
    wire = [c.wire for c in registry.get("Target").codecs]
    assert wire == ["id", "name", "category", "sceneId"]
    with pytest.raises(ItemError, match="Unknown item type: Nope"):
        registry.get("Nope")


def test_encode_every_kind():
    token = uuid.uuid4()
    g = Gadget(**every_kind(token=token))
    item = registry.get("Gadget").encode(g)
    assert item == {
        "id": "g1",
        "label": "x",
        "note": "",
        "count": 3,
        "ratio": 1.5,
        "active": True,
        "price": "12.50",
        "seenAt": "2024-01-02T03:04:05Z",
        "day": "2024-01-02",
        "at": "03:04:00",
        "token": str(token),
        "extra": {"a": [1, None]},
        "ownerId": "o1",
        "keeperId": None,
        "backupId": None,
    }


@pytest.mark.django_db
def test_build_decodes_and_fills_defaults():
    g = registry.get("Gadget").build(
        {
            "id": "g1",
            "label": "x",
            "price": "3.10",
            "seenAt": "2024-01-02T03:04:05Z",
            "token": "12345678-1234-5678-1234-567812345678",
            "extra": [1, "a"],
            "unknown": 1,
        },
        None,
    )
    assert g.count == 0 and g.active is False and g.note == ""
    assert g.price == decimal.Decimal("3.10")
    assert g.seen_at == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert g.extra == [1, "a"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "patch, message",
    [
        ({"label": 5}, "Gadget.label must be a string, got an integer 5"),
        ({"label": ["a"]}, "Gadget.label must be a string, got a list"),
        ({"count": "1"}, "Gadget.count must be an integer, got a string '1'"),
        ({"count": True}, "Gadget.count must be an integer, got a boolean True"),
        ({"active": 1}, "Gadget.active must be a boolean, got an integer 1"),
        ({"ratio": "1.5"}, "Gadget.ratio must be a number"),
        ({"price": 1.5}, "Gadget.price must be a string"),
        ({"price": "abc"}, 'Gadget.price must be a decimal string like "12.50"'),
        ({"price": "NaN"}, "Gadget.price must be a decimal string"),
        ({"seenAt": "yesterday"}, "Gadget.seenAt must be an ISO-8601 datetime"),
        ({"token": "nope"}, "Gadget.token must be a UUID string"),
        ({"label": "x" * 11}, "Gadget.label: Ensure this value has at most 10 characters"),
        ({"label": None}, "Gadget.label must not be null"),
        ({"ownerId": "missing"}, "Gadget.ownerId"),
        ({"ownerId": 5}, "Gadget.ownerId must be a string"),
    ],
)
def test_build_rejects_bad_values_with_the_field_named(patch, message):
    with pytest.raises(ItemError) as info:
        registry.get("Gadget").build({"id": "g1", "label": "ok", **patch}, None)
    assert message in str(info.value)


@pytest.mark.django_db
def test_required_field_without_default_must_be_present():
    with pytest.raises(ItemError, match="Gadget.label is required"):
        registry.get("Gadget").build({"id": "g1"}, None)
    with pytest.raises(ItemError, match="item has no id"):
        registry.get("Gadget").build({"label": "x"}, None)
    with pytest.raises(ItemError, match="id must be a string"):
        registry.get("Gadget").build({"id": 1, "label": "x"}, None)


def test_item_type_ids_of_integer_pk_models():
    legacy = registry.get("Legacy")
    assert legacy.decode_id("12") == 12
    with pytest.raises(ItemError, match="Legacy.id"):
        legacy.decode_id("twelve")


def test_checks_pass_for_the_project():
    assert check_items() == []


def test_check_reports_duplicates_and_bad_managers_and_unsupported_fields(monkeypatch):
    class Plain(models.Model):
        tags = models.ManyToManyField(Owner)
        blob = models.BinaryField()

        class Meta:
            app_label = "testapp"

    fake = Registry()
    fake.add(ItemType.for_model(Target))
    fake.add(ItemType.for_model(Plain, name="Target"))
    fake.add(ItemType.for_model(Plain, name="Plain"))
    monkeypatch.setattr("myko_django.checks.registry", fake)
    found = {m.id: m for m in check_items()}
    assert set(found) == {"myko.E001", "myko.E002", "myko.E003"}
    assert "Target" in found["myko.E001"].msg and "myko_name" in found["myko.E001"].hint
    assert "ItemManager" in found["myko.E002"].hint
    assert "tags (many-to-many)" in found["myko.E003"].msg
    assert "blob (BinaryField)" in found["myko.E003"].msg
    assert all(isinstance(m, checks.Error) for m in found.values())
