"""Loading a store reads plain column values (no model instances): the items must be exactly
what encoding model instances gives, for every field kind and for non-string primary keys."""

import decimal

import pytest

from myko_django.items.registry import registry
from myko_django.log.read import read_snapshot
from tests.support.data import every_kind
from tests.testapp.models import Gadget, LegacyRow, Owner

# read_snapshot opens its own REPEATABLE READ transaction: not inside a test transaction.
pytestmark = [pytest.mark.django_db(transaction=True)]


def test_snapshot_items_equal_encoded_instances():
    Owner.objects.create(id="o1", name="owner")
    Gadget.objects.create(**every_kind(extra={"a": [1, None], "b": 2.5}))
    Gadget.objects.create(id="g2", label="nulls")
    LegacyRow.objects.create(title="legacy", amount=decimal.Decimal("1.20"))
    for name, model in (("Gadget", Gadget), ("Legacy", LegacyRow), ("Owner", Owner)):
        it = registry.get(name)
        expected = sorted((it.encode(row) for row in model.objects.all()), key=lambda i: i["id"])
        got = sorted(read_snapshot(name).items, key=lambda i: i["id"])
        assert got == expected
        for a, b in zip(got, expected, strict=True):  # same types too (1 is not 1.0 or True)
            assert [type(v) for v in a.values()] == [type(v) for v in b.values()]
    assert read_snapshot("Legacy").items[0]["id"] == str(LegacyRow.objects.get().pk)
