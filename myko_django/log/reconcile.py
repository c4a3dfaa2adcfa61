"""Helpers shared by the myko management commands that compare item tables with the log.

Both sides are read in pages (keyset on the primary key, or on the logged item id), so a
table of 100k items never sits in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.core.management.base import CommandError
from django.db import connections, models
from django.db.models import Max

from myko_django.items.errors import ItemError
from myko_django.items.registry import ItemType, registry
from myko_django.log import append
from myko_django.log.tables import Event

# Rows or logged items read per query; tests lower it to cross page boundaries.
PAGE = 500


def item_types(names: Sequence[str] | None) -> list[ItemType]:
    """The item types named on the command line (all of them when none are)."""
    if not names:
        return sorted(registry, key=lambda t: t.name)
    try:
        return [registry.get(name) for name in dict.fromkeys(names)]
    except ItemError as exc:
        raise CommandError(str(exc)) from exc


def plain_rows(model: type[models.Model], using: str) -> models.QuerySet:
    """A plain QuerySet: its writes bypass the item manager, so nothing is captured."""
    return models.QuerySet(model=model, using=using)


def lock_out_writers(types: Iterable[ItemType], using: str) -> None:
    """Block writes to these item tables and appends to the log until we commit; every
    event committed before is in the log then.

    Postgres only; the item tables are locked first so a writer already holding row locks
    on them commits before we take the positioning lock (log/append.py) and move what is
    pending, never waiting on us for it.
    Plain reads go on. A writer holding one of these tables while waiting for another we
    hold is a deadlock Postgres breaks by aborting one side; run the command again then.
    On SQLite the single writer lock does the same once we write.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    tables = sorted({t.model._meta.db_table for t in types})
    names = ", ".join(connection.ops.quote_name(t) for t in tables)
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
    append.position_committed(using)


def table_pages(model: type[models.Model], using: str) -> Iterator[list]:
    """The rows of an item table, PAGE at a time in primary key order."""
    page = PAGE
    rows = plain_rows(model, using).order_by("pk")
    after = None
    while True:
        chunk = list((rows if after is None else rows.filter(pk__gt=after))[:page])
        if not chunk:
            return
        yield chunk
        after = chunk[-1].pk


def pk_pages(model: type[models.Model], using: str) -> Iterator[list]:
    """The primary keys of an item table, PAGE at a time in order."""
    page = PAGE
    pks = plain_rows(model, using).order_by("pk").values_list("pk", flat=True)
    after = None
    while True:
        chunk = list((pks if after is None else pks.filter(pk__gt=after))[:page])
        if not chunk:
            return
        yield chunk
        after = chunk[-1]


def latest_for(item_type: str, item_ids: Sequence[str], using: str) -> dict[str, tuple[str, Any]]:
    """item id -> (change type, payload) of its latest logged event, for these ids."""
    last = (
        Event.objects.using(using)
        .filter(item_type=item_type, item_id__in=list(item_ids))
        .order_by()
        .values("item_id")
        .annotate(last=Max("position"))
        .values("last")
    )
    events = Event.objects.using(using).filter(position__in=last).order_by()
    return {i: (c, item) for i, c, item in events.values_list("item_id", "change_type", "item")}


def latest_pages(item_type: str, using: str) -> Iterator[list[tuple[str, str, Any]]]:
    """(item id, change type, payload) of each item's latest logged event, by item id."""
    page = PAGE
    grouped = (
        Event.objects.using(using)
        .filter(item_type=item_type)
        .order_by()
        .values("item_id")
        .annotate(last=Max("position"))
    )
    after = None
    while True:
        keys = grouped if after is None else grouped.filter(item_id__gt=after)
        chunk = list(keys.order_by("item_id").values_list("item_id", "last")[:page])
        if not chunk:
            return
        events = Event.objects.using(using).filter(position__in=[p for _, p in chunk])
        by_position = {
            p: (i, c, item)
            for p, i, c, item in events.values_list("position", "item_id", "change_type", "item")
        }
        yield [by_position[p] for _, p in chunk]
        after = chunk[-1][0]


def existing_ids(item_type: ItemType, item_ids: Sequence[str], using: str) -> set[str]:
    """Which of these logged item ids have a row in the item table."""
    pks = []
    for item_id in item_ids:
        try:
            pks.append(item_type.decode_id(item_id))
        except ItemError:
            continue  # an id the table cannot hold has no row
    rows = plain_rows(item_type.model, using).filter(pk__in=pks)
    return {item_type.wire_id(pk) for pk in rows.values_list("pk", flat=True)}


def same(a: Any, b: Any) -> bool:
    """Equal as wire values: booleans are not numbers, but 1 and 1.0 are one number.

    Postgres jsonb may hand a float back as an integer (1e16), so numbers compare by value.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
