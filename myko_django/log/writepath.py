"""The one write path for wire-level changes: SET/DEL batches validated and applied in a
transaction; the event log rows come from the capture of the ORM writes it makes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction

from myko_django.items.errors import ItemError
from myko_django.items.permissions import ADD, CHANGE, DELETE, SYSTEM, PermissionDenied, check
from myko_django.items.registry import ItemType, registry
from myko_django.live.filters import Filter
from myko_django.log import django_internals, retry, sequences
from myko_django.log.capture import write_transaction
from myko_django.log.retry import retryable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """One wire-level change: SET replaces the whole item, DEL removes it by id."""

    change_type: str
    item_type: str
    item: dict[str, Any]


def db_message(exc: BaseException) -> str:
    """A database error as a client is told it: its first line. Postgres's DETAIL line
    quotes the row ("Failing row contains (...)"), fields kept off the wire included."""
    return str(exc).strip().split("\n", 1)[0]


class NotFound(ItemError):
    pass


def change_from_event(event: Any) -> Change:
    """Validate the shape of a client event (docs/protocol.md, "Events"); values are
    checked on apply."""
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


# A writer's check of one change: (item type, action, the row as stored or None, the row
# as it would be or None) -> False when the row is hidden from that writer; it raises
# PermissionDenied for what the writer may not do.
Guard = Callable[[ItemType, str, dict | None, dict | None], bool]


def apply(
    change: Change,
    *,
    using: str = "default",
    missing_ok: bool = True,
    guard: Guard | None = None,
) -> dict | bool:
    """Apply one change inside the caller's transaction.

    SET returns the stored wire item; DEL returns whether the item existed (a row the
    `guard` hides counts as missing).
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
    before = item_type.encode(existing) if guard is not None and existing is not None else None
    if change.change_type == "DEL":
        # Checked for a missing id too: a writer who may not delete learns nothing of ids.
        if guard is not None and not guard(item_type, DELETE, before, None):
            existing = None  # hidden from this writer: as if it did not exist
        if existing is None:
            if missing_ok:
                return False
            raise NotFound(f"{item_type.name} not found: {change.item['id']}")
        existing.delete()
        return True
    # The permission (and the row's visibility) first: a writer who may not write this
    # row gets no validation messages, nor which referenced rows exist.
    action = ADD if existing is None else CHANGE
    if guard is not None and not guard(item_type, action, before, None):
        raise PermissionDenied(f"may not change {item_type.name} {change.item['id']}")
    instance = item_type.build(change.item, existing, check_references=guard is None)
    if guard is not None:
        if not guard(item_type, action, before, item_type.encode(instance)):
            raise PermissionDenied(f"may not change {item_type.name} {change.item['id']}")
        item_type.check_references([instance], using)
    try:
        if existing is None:
            # An explicit id must not be handed out again by an auto-increment sequence.
            _refuse_too_large(item_type, [pk], using)
            sequences.advance_past(model, [pk], using)
            # A savepoint: a concurrent writer may insert the same id first (FOR UPDATE
            # cannot lock a row that does not exist yet).
            with transaction.atomic(using=using):
                instance.save(using=using, force_insert=True)
        else:
            instance.save(using=using, force_update=True)
    except IntegrityError as exc:
        if existing is None and rows.filter(pk=pk).exists():
            # Lost the race: SET replaces what it wrote (checked again, now as a change).
            return apply(change, using=using, guard=guard)
        raise ItemError(
            f"{item_type.name} {change.item['id']}: rejected by the database: {db_message(exc)}"
        ) from exc
    return item_type.encode(instance)


def _refuse_too_large(item_type: ItemType, pks: Sequence[Any], using: str) -> None:
    """A new row's explicit id must leave its auto-increment key's sequence room to go on
    (log/sequences.py, "Not too far")."""
    found = sequences.too_large(item_type.model, pks, using)
    if found is not None:
        pk, top = found
        raise ItemError(
            f"{item_type.name} {pk}: a new item's id may be at most {top} (larger ones would "
            f"use up the ids the database assigns); leave the id out with Create{item_type.name}"
        )


def create(
    item_type_name: str, item: Any, *, using: str = "default", guard: Guard | None = None
) -> dict:
    """Insert a new item whose id the server assigns, inside the caller's transaction: the
    next value of an auto-increment key, or the primary key's default (a UUID for an
    `Item`). `item` is the item without `id`, validated as a SET's; returns it as stored."""
    item_type = registry.get(item_type_name)
    # As in apply(): the permission first, then the item, then the new row's visibility.
    if guard is not None and not guard(item_type, ADD, None, None):
        raise PermissionDenied(f"may not add {item_type.plural}")
    instance = item_type.build(item, None, assign_id=True, check_references=guard is None)
    if guard is not None:
        if not guard(item_type, ADD, None, item_type.encode(instance)):
            raise PermissionDenied(f"may not add {item_type.plural}")
        item_type.check_references([instance], using)
    try:
        with transaction.atomic(using=using):  # a refused row rolls back alone
            instance.save(using=using, force_insert=True)
    except IntegrityError as exc:
        raise ItemError(f"{item_type.name}: rejected by the database: {db_message(exc)}") from exc
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
            _refuse_too_large(item_type, [i.pk for i in new], using)
            sequences.advance_past(model, [i.pk for i in new], using)
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
        raise ItemError(f"{item_type.name}: rejected by the database: {db_message(exc)}") from exc
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
    user: Any = SYSTEM,
    tx: str | None = None,
    source_id: str | None = None,
    using: str = "default",
) -> tuple[int, list[tuple[int, Any, str]]]:
    """A client event batch: valid events commit together in order; each invalid one is
    reported as (index, event, message) and does not stop the others.

    Tried first without a savepoint per event (hundreds of subtransactions slow Postgres
    down); only when the database itself refuses an event is the batch redone with one
    savepoint each, so that event alone is dropped. A transaction lost to a deadlock or a
    serialization failure runs again (log/retry.py); a batch the database still refuses
    as a whole, at COMMIT say, is returned with every event rejected.
    """
    guard = writer_guard(user)
    rejected: list[tuple[int, Any, str]] = []

    def attempt() -> int:
        rejected.clear()
        with write_transaction(tx, source_id, using) as ctx:
            try:
                with transaction.atomic(using=using):
                    rejected[:] = _apply_each(events, using, guard, savepoints=False)
            except (DatabaseError, _Redo) as exc:
                if retryable(exc):
                    raise  # the whole transaction is lost: run it again
                rejected[:] = _apply_each(events, using, guard, savepoints=True)
        return ctx.last_position

    try:
        return retry.run(attempt, using=using), rejected
    except DatabaseError as exc:
        # Refused as a whole (at COMMIT, say: a deferred foreign key, or a deadlock that
        # outlasted the retries): nothing committed, and every event is told so.
        logger.warning("myko: event batch (tx %s) failed in the database: %s", tx, exc)
        message = f"the database refused the batch: {db_message(exc)}"
        already = {index for index, _, _ in rejected}
        return 0, sorted(
            rejected + [(i, e, message) for i, e in enumerate(events) if i not in already],
            key=lambda r: r[0],
        )


def writer_guard(user: Any) -> Guard | None:
    """The checks of a client's writes: the permission for each action (add, change,
    delete) and the rows the user may see (a hidden row cannot be changed or deleted, and
    a write must leave the row visible to its writer). None for SYSTEM: no checks."""
    if user is SYSTEM:
        return None
    visible: dict[str, Filter | None] = {}

    def guard(item_type: ItemType, action: str, before: dict | None, after: dict | None) -> bool:
        if item_type.name not in visible:
            visible[item_type.name] = item_type.visibility(user)
        flt = visible[item_type.name]
        if before is not None and flt is not None and not flt.matches(before):
            return False
        check(user, action, item_type, f"{action} {item_type.plural}")
        if after is not None and flt is not None and not flt.matches(after):
            raise PermissionDenied(f"this {item_type.name} would be hidden from its writer")
        return True

    return guard


def _apply_each(
    events: Sequence[Any], using: str, guard: Guard | None, *, savepoints: bool
) -> list[tuple[int, Any, str]]:
    rejected: list[tuple[int, Any, str]] = []
    for index, event in enumerate(events):
        try:
            change = change_from_event(event)
            if savepoints:
                with transaction.atomic(using=using):
                    apply(change, using=using, guard=guard)
            else:
                apply(change, using=using, guard=guard)
        except DatabaseError as exc:
            if not savepoints or retryable(exc):
                raise
            rejected.append((index, event, db_message(exc)))
        except (ItemError, ValueError, TypeError) as exc:
            if isinstance(exc.__cause__, DatabaseError) and (
                not savepoints or retryable(exc.__cause__)
            ):
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
