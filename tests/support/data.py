"""Test data: wire items of the demo's Target, rows in the database from async tests, and
a Gadget with every supported field kind."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from asgiref.sync import sync_to_async
from django.db import connections


def target(tid: str, name: str = "n", category: str | None = None) -> dict:
    """A Target as it is on the wire."""
    return {"id": tid, "name": name, "category": category, "sceneId": None}


def row(item: dict, item_type: str = "Target") -> dict:
    """One upsert of a query-response."""
    return {"item": item, "itemType": item_type}


def items_by_id(response: dict) -> dict[str, dict]:
    return {u["item"]["id"]: u["item"] for u in response["upserts"]}


async def db(func, *args, **kwargs):
    """Run ORM code on a worker thread (and close that thread's connection afterwards)."""

    def run():
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return await sync_to_async(run, thread_sensitive=True)()


async def seed_targets(*ids: str, **fields) -> None:
    from project.demo.models import Target

    def create():
        for i in ids:
            Target.objects.create(id=i, name=f"n{i}", **fields)

    await db(create)


async def count_rows(model_path: str, **filters) -> int:
    """Rows of `app_label.Model` matching `filters`, from an async test."""
    from django.apps import apps

    model = apps.get_model(model_path)
    return await db(lambda: model.objects.filter(**filters).count())


def every_kind(**fields) -> dict:
    """Field values of a Gadget that uses every supported field kind (owner "o1")."""
    return {
        "id": "g1",
        "label": "x",
        "count": 3,
        "ratio": 1.5,
        "active": True,
        "price": decimal.Decimal("12.50"),
        "seen_at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 2),
        "at": dt.time(3, 4),
        "token": uuid.uuid4(),
        "extra": {"a": [1, None]},
        "owner_id": "o1",
        **fields,
    }
