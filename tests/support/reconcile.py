"""Helpers of the tests that compare item tables with the log (rebuild, resync, compact):
read both sides, write raw SQL past the log, and make random writes over every ORM path."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import random
import uuid
from typing import Any

from django.db import connection
from django.db.models import F

from myko_django.items.registry import registry
from myko_django.models import Event
from project.demo.models import Scene, Target
from tests.testapp.models import Gadget, LegacyRow, Note, Owner, Stamp

UTC = dt.UTC


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of every item table (and of Note), as stored, in a stable order."""
    models = [t.model for t in registry] + [Note]
    return {
        m._meta.label: sorted(
            m._base_manager.values(), key=lambda row, pk=m._meta.pk.attname: str(row[pk])
        )
        for m in models
    }


def log() -> list[tuple]:
    return list(
        Event.objects.order_by("position").values_list(
            "position", "tx", "item_type", "item_id", "change_type", "item"
        )
    )


def sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def random_gadget(rng: random.Random, owners: list[Owner], **extra: Any) -> Gadget:
    def maybe_owner():
        return rng.choice([*owners, None]) if owners else None

    fields = dict(
        label=f"g{rng.randint(0, 9999)}",
        note=rng.choice(["", "some text", "ünïcode ✓"]),
        count=rng.randint(-5, 500),
        ratio=rng.choice([None, rng.random() * 100, 1e16, 0.5]),
        active=rng.random() < 0.5,
        price=rng.choice([None, decimal.Decimal(rng.randint(0, 999999)) / 100]),
        seen_at=rng.choice(
            [None, dt.datetime(2024, 1, 2, 3, 4, 5, rng.randint(0, 999999), tzinfo=UTC)]
        ),
        day=rng.choice([None, dt.date(2023, rng.randint(1, 12), rng.randint(1, 28))]),
        at=rng.choice([None, dt.time(rng.randint(0, 23), 30, 15, rng.randint(0, 999999))]),
        token=rng.choice([None, uuid.UUID(int=rng.getrandbits(128))]),
        extra=rng.choice([None, {"k": [1, 2.5, True, None, "s"]}, [1, 2], "text", 3]),
        owner=maybe_owner(),
        keeper=maybe_owner(),
        backup=maybe_owner(),
    )
    fields.update(extra)
    return Gadget.objects.create(**fields)


def random_writes(seed: int, rounds: int = 150) -> Gadget:
    """A seeded mix of ORM writes over every write path; returns a Gadget that a Note holds."""
    rng = random.Random(seed)
    seq = itertools.count(1)

    def nid(prefix: str) -> str:  # ids in creation order, so runs repeat exactly
        return f"{prefix}{next(seq):05d}"

    anchor = random_gadget(rng, [], id=nid("g"), label="anchor")
    Note.objects.create(gadget=anchor, text="keep me")

    def pick(model, **exclude):
        rows = (
            list(model.objects.exclude(**exclude).order_by("pk"))
            if exclude
            else list(model.objects.order_by("pk"))
        )
        return rng.choice(rows) if rows else None

    def op_owner():
        Owner.objects.create(id=nid("o"), name=f"o{rng.randint(0, 999)}")

    def op_owners_bulk():
        Owner.objects.bulk_create(
            [Owner(id=nid("o"), name=f"b{i}") for i in range(rng.randint(1, 3))]
        )

    def op_gadget():
        random_gadget(rng, list(Owner.objects.order_by("pk")), id=nid("g"))

    def op_gadget_save():
        g = pick(Gadget)
        g.count += 1
        g.label = f"s{rng.randint(0, 999)}"
        g.extra = {"saved": rng.randint(0, 9)}
        g.save()

    def op_gadget_update_fields():
        g = pick(Gadget)
        g.note = "only note"
        g.save(update_fields=["note"])

    def op_gadget_qs_update():
        Gadget.objects.filter(active=True).update(count=F("count") + 1, ratio=None)

    def op_gadget_bulk_update():
        gs = list(Gadget.objects.order_by("pk")[:3])
        for g in gs:
            g.note = f"bulk {rng.randint(0, 99)}"
            g.active = not g.active
        Gadget.objects.bulk_update(gs, ["note", "active"])

    def op_gadget_delete():
        g = pick(Gadget, pk=anchor.pk)
        if g is not None:
            g.delete()

    def op_owner_delete():  # CASCADE owner, SET(callable) keeper, SET_DEFAULT backup
        o = pick(Owner)
        if o is not None:
            o.delete()

    def op_stamp():
        Stamp.objects.create(id=nid("st"))

    def op_stamp_save():
        s = pick(Stamp)
        if s is not None:
            s.hits += 1
            s.save()

    def op_legacy():
        LegacyRow.objects.create(title=f"t{rng.randint(0, 99)}", amount=decimal.Decimal("1.50"))

    def op_legacy_update():
        LegacyRow.objects.filter(pk__in=LegacyRow.objects.values("pk")[:2]).update(
            amount=F("amount") + 1
        )

    def op_legacy_delete():
        LegacyRow.objects.filter(
            pk__in=list(LegacyRow.objects.values_list("pk", flat=True)[:1])
        ).delete()

    def op_scene():
        scene = Scene.objects.create(id=nid("sc"), name=f"s{rng.randint(0, 99)}")
        for i in range(rng.randint(0, 3)):
            Target.objects.create(
                id=nid("t"), name=f"t{i}", category=rng.choice([None, "a", "b"]), scene=scene
            )

    def op_target_qs_delete():
        Target.objects.filter(category="b").delete()

    def op_scene_delete():  # SET_NULL on Target.scene
        s = pick(Scene)
        if s is not None:
            s.delete()

    ops = [value for name, value in locals().items() if name.startswith("op_")]
    creates = [op_owner, op_gadget, op_gadget, op_gadget, op_stamp, op_legacy, op_scene]
    for op in creates:
        op()
    for _ in range(rounds):
        rng.choice(ops + creates)()
    for op in creates:  # every table ends with rows to corrupt
        op()
    return anchor
