"""The one write path for wire-level changes: SET/DEL batches validated and applied in a
transaction; the event log rows come from the capture of the ORM writes it makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction

from myko_django.items.errors import ItemError
from myko_django.items.registry import registry
from myko_django.log import django_internals
from myko_django.log.capture import write_transaction


@dataclass(frozen=True)
class Change:
    """One wire-level change: SET replaces the whole item, DEL removes it by id."""

    change_type: str
    item_type: str
    item: dict[str, Any]


class NotFound(ItemError):
    pass


def change_from_event(event: Any) -> Change:
    """Validate the shape of a client MEvent (PROTOCOL.md §6); values are checked on apply."""
    if not isinstance(event, dict):
        raise ItemError(f"An event must be an object, got {type(event).__name__}")
    change_type = event.get("changeType")
    if change_type not in ("SET", "DEL"):
        raise ItemError(f'Event "changeType" must be "SET" or "DEL", got {change_type!r:.40}')
    item_type = event.get("itemType")
    if not isinstance(item_type, str):
        raise ItemError(f'Event "itemType" must be a string, got {item_type!r:.40}')
    item = event.get("item")
    if not isinstance(item, dict):
        raise ItemError(f'Event "item" must be an object, got {type(item).__name__}')
    return Change(change_type, item_type, item)


def apply(change: Change, *, using: str = "default", missing_ok: bool = True) -> dict | bool:
    """Apply one change inside the caller's transaction.

    SET returns the stored wire item; DEL returns whether the item existed.
    """
    item_type = registry.get(change.item_type)
    model = item_type.model
    if "id" not in change.item:
        raise ItemError(f"{item_type.name}: item has no id")
    pk = item_type.decode_id(change.item["id"])
    rows = model._base_manager.using(using)
    if django_internals.can_lock_rows(using):
        rows = rows.select_for_update()
    existing = rows.filter(pk=pk).first()
    if change.change_type == "DEL":
        if existing is None:
            if missing_ok:
                return False
            raise NotFound(f"{item_type.name} not found: {change.item['id']}")
        existing.delete()
        return True
    instance = item_type.build(change.item, existing)
    try:
        if existing is None:
            # A savepoint: a concurrent writer may insert the same id first (FOR UPDATE
            # cannot lock a row that does not exist yet).
            with transaction.atomic(using=using):
                instance.save(using=using, force_insert=True)
        else:
            instance.save(using=using, force_update=True)
    except IntegrityError as exc:
        if existing is None and rows.filter(pk=pk).exists():
            return apply(change, using=using)  # lost the race: SET replaces what it wrote
        raise ItemError(
            f"{item_type.name} {change.item['id']}: rejected by the database: {exc}".strip()
        ) from exc
    return item_type.encode(instance)


def apply_sets(item_type_name: str, items: Sequence[Any], *, using: str = "default") -> int:
    """SET many items of one type in a few statements: one read of the existing rows, one
    reference check per foreign key, one bulk insert, one bulk update, one append.

    Same validation and events as SETting them one by one; returns how many were set.
    """
    item_type = registry.get(item_type_name)
    model = item_type.model
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            raise ItemError(f"{item_type.name}: every item must be an object with an id")
    pks = [item_type.decode_id(item["id"]) for item in items]
    if len(set(pks)) != len(pks):
        for item in items:  # later SETs of the same id must win, in order
            apply(Change("SET", item_type.name, item), using=using)
        return len(items)
    rows = model._base_manager.using(using)
    if django_internals.can_lock_rows(using):
        rows = rows.select_for_update()
    existing = rows.in_bulk(pks)
    instances = [
        item_type.build(item, existing.get(pk), check_references=False)
        for item, pk in zip(items, pks, strict=True)
    ]
    item_type.check_references(instances, using)
    new = [i for i in instances if i._state.adding]
    old = [i for i in instances if not i._state.adding]
    manager = model._base_manager.using(using)
    try:
        if new:
            try:
                with transaction.atomic(using=using):  # see apply(): racing inserts
                    manager.bulk_create(new)
            except IntegrityError:
                if not rows.filter(pk__in=[i.pk for i in new]).exists():
                    raise
                for item in items:  # lost a race for some ids: SET them one by one
                    apply(Change("SET", item_type.name, item), using=using)
                return len(items)
        if old:
            for instance in old:  # what save() would do for auto_now fields
                for codec in item_type.codecs:
                    if getattr(codec.field, "auto_now", False):
                        codec.field.pre_save(instance, False)
            manager.bulk_update(old, [c.field.name for c in item_type.codecs[1:]])
    except IntegrityError as exc:
        raise ItemError(f"{item_type.name}: rejected by the database: {exc}".strip()) from exc
    return len(instances)


def apply_batch(
    changes: Sequence[Change],
    *,
    tx: str | None = None,
    source_id: str | None = None,
    using: str = "default",
) -> int:
    """All changes in one transaction, in order; any error rolls back all. Returns the last
    position appended (0 when nothing changed)."""
    with write_transaction(tx, source_id, using) as ctx:
        for change in changes:
            apply(change, using=using)
    return ctx.last_position


def apply_events(
    events: Sequence[Any],
    *,
    user: Any = None,
    tx: str | None = None,
    source_id: str | None = None,
    using: str = "default",
) -> tuple[int, list[tuple[int, Any, str]]]:
    """A client event batch: valid events commit together in order; each invalid one is
    reported as (index, event, message) and does not stop the others.

    Tried first without a savepoint per event (hundreds of subtransactions slow Postgres
    down); only when the database itself refuses an event is the batch redone with one
    savepoint each, so that event alone is dropped.
    """
    with write_transaction(tx, source_id, using) as ctx:
        try:
            with transaction.atomic(using=using):
                rejected = _apply_each(events, using, savepoints=False)
        except (DatabaseError, _Redo):
            rejected = _apply_each(events, using, savepoints=True)
    return ctx.last_position, rejected


def _apply_each(
    events: Sequence[Any], using: str, *, savepoints: bool
) -> list[tuple[int, Any, str]]:
    rejected: list[tuple[int, Any, str]] = []
    for index, event in enumerate(events):
        try:
            change = change_from_event(event)
            if savepoints:
                with transaction.atomic(using=using):
                    apply(change, using=using)
            else:
                apply(change, using=using)
        except DatabaseError as exc:
            if not savepoints:
                raise
            rejected.append((index, event, str(exc)))
        except (ItemError, ValueError, TypeError) as exc:
            if not savepoints and isinstance(exc.__cause__, DatabaseError):
                raise exc.__cause__ from exc  # the transaction may be aborted: redo
            if not savepoints and transaction.get_rollback(using):
                # It failed inside a block without a savepoint (a save's or a delete's
                # own atomic): the whole pass would be rolled back, silently. Redo.
                raise _Redo from exc
            # ValueError includes a driver's UnicodeEncodeError; the batch goes on.
            rejected.append((index, event, str(exc)))
    return rejected


class _Redo(Exception):
    """The pass without per-event savepoints cannot keep its valid events."""
