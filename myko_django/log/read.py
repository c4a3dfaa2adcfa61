"""Reading the event log and the item tables: what the live layer is fed from.

Every read here is blocking I/O; the server runs them on its database threads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import connections, transaction

from myko_django.items.registry import registry
from myko_django.live.committed import CommittedEvent
from myko_django.live.sequencer import LogRead, Snapshot
from myko_django.log.tables import Event


def high_water(using: str = "default") -> int:
    """The highest committed position (every position below it is committed too)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(position), 0) FROM myko_event")
        return cursor.fetchone()[0]


def read(
    after: int,
    upto: int | None = None,
    *,
    item_type: str | None = None,
    using: str = "default",
    chunk: int = 5000,
) -> Iterator[CommittedEvent]:
    """Committed events with position > after (and <= upto), in position order."""
    query = Event.objects.using(using).filter(position__gt=after).order_by("position")
    if upto is not None:
        query = query.filter(position__lte=upto)
    if item_type is not None:
        query = query.filter(item_type=item_type)
    fields = ("position", "item_type", "item_id", "change_type", "item")
    for position, item_type_name, item_id, change_type, item in query.values_list(*fields).iterator(
        chunk_size=chunk
    ):
        yield CommittedEvent(
            position, item_type_name, item_id, change_type, _restore_floats(item_type_name, item)
        )


def _restore_floats(item_type: str, item: dict | None) -> dict | None:
    """jsonb stores numbers as numeric, so 1e16 comes back as an int: make floats floats
    again, so events read from the log equal the ones published live. Keys of fields that
    no longer travel (excluded since the event was logged) are dropped for the same reason."""
    if not item:
        return item
    known = registry.by_name.get(item_type)
    if known is None:
        return item
    if not item.keys() <= known.wires:
        item = {k: v for k, v in item.items() if k in known.wires}
    for codec in known.codecs:
        value = item.get(codec.wire)
        if codec.kind == "float" and type(value) is int:
            item[codec.wire] = float(value)
    return item


@dataclass(frozen=True)
class LoggedEvent:
    """An event as the log holds it, with who wrote it and when (sagas hand these to their
    handlers; the live layer needs only a CommittedEvent)."""

    position: int
    tx: str
    item_type: str
    item_id: str
    change_type: str
    item: dict | None
    created_at: dt.datetime
    source_id: str | None


def read_logged(
    after: int,
    upto: int,
    *,
    item_type: str | None = None,
    limit: int = 1000,
    using: str = "default",
) -> list[LoggedEvent]:
    """At most `limit` events with after < position <= upto, in position order (a page:
    a follower of the log passes the last position it got as the next `after`)."""
    query = Event.objects.using(using).filter(position__gt=after, position__lte=upto)
    if item_type is not None:
        query = query.filter(item_type=item_type)
    fields = ("position", "tx", "item_type", "item_id", "change_type", "item", "created_at")
    rows = query.order_by("position").values_list(*fields, "source_id")[:limit]
    return [
        LoggedEvent(p, tx, t, i, c, _restore_floats(t, item), at, source)
        for p, tx, t, i, c, item, at, source in rows
    ]


def state_before(
    item_type: str, item_id: str, position: int, using: str = "default"
) -> dict | None:
    """The item as the log had it just before `position`: the payload of its latest earlier
    SET, or None (never set, deleted, or that event compacted away)."""
    row = (
        Event.objects.using(using)
        .filter(item_type=item_type, item_id=item_id, position__lt=position)
        .order_by("-position")
        .values_list("change_type", "item")
        .first()
    )
    if row is None or row[0] != Event.SET:
        return None
    return _restore_floats(item_type, row[1])


def read_request(request: LogRead, using: str = "default") -> list[CommittedEvent]:
    """The events a sequencer asked for (see live/sequencer.py)."""
    return list(read(request.after, request.upto, item_type=request.item_type, using=using))


def read_snapshot(item_type: str, using: str = "default") -> Snapshot:
    """A table and the log's high-water mark in one consistent read."""
    it = registry.get(item_type)
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        position = high_water(using)
        rows = it.model._base_manager.using(using).values_list(*it.attnames)
        items = list(it.encode_values(rows.iterator(chunk_size=2000)))
        if connection.vendor == "postgresql":
            items = _as_of(it.name, items, position, using)
    return Snapshot(it.name, items, position)


def _as_of(item_type: str, items: list[dict], position: int, using: str) -> list[dict]:
    """A row whose change is committed but has no position yet (log/append.py: pending
    events) is ahead of `position`: take such items as the log has them at `position`
    instead, so the events that follow apply on exactly that state. In the same snapshot."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT item_id FROM myko_pending_event WHERE item_type = %s", [item_type]
        )
        ahead = {row[0] for row in cursor.fetchall()}
    if not ahead:
        return items
    kept = [item for item in items if item["id"] not in ahead]
    latest = (
        Event.objects.using(using)
        .filter(item_type=item_type, item_id__in=list(ahead), position__lte=position)
        .order_by("item_id", "-position")
        .distinct("item_id")
        .values_list("change_type", "item")
    )
    for change_type, item in latest:
        if change_type == Event.SET and item is not None:
            kept.append(_restore_floats(item_type, item))
    return kept
