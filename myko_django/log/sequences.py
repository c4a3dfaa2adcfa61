"""Explicit ids and auto-increment keys: a row inserted with an id of its own must not be
handed out again by the table's sequence.

On Postgres an auto-increment primary key (`AutoField`, `BigAutoField`, `SmallAutoField`: an
identity or serial column) takes its values from a sequence, and a row inserted with an
explicit id does not move it. A client's SET of a new id, `ctx.set`, `ctx.set_many` and
`myko_rebuild` all insert explicit ids; without this, the next ORM or admin insert would be
handed one of them and fail with a duplicate key (issue 10, point 4). So just before such an
insert, `advance_past` moves the sequence past the largest of the ids:

- Never backwards. The sequence is only moved when it would hand one of the ids out later,
  and then to the id itself (`setval(seq, id)`: the next value is the one after). Django's
  `connection.ops.sequence_reset_sql`, which `loaddata` uses, is not used: it sets the
  sequence to the table's largest id, which moves it back when the rows with the largest
  ids were deleted, and the ids of deleted items stay in the event log, so a new row could
  get the id of a deleted item. It also reads and sets without a lock (below).
- Concurrency-safe. Reading the sequence and then setting it would race with another
  transaction's insert taking the next value in between (the sequence would then hand that
  value out twice). So when the sequence is behind, the table is locked against inserts
  (`SHARE ROW EXCLUSIVE`: plain reads and `SELECT ... FOR UPDATE` go on; the lock waits for
  transactions that wrote the table to end) and the sequence is read again and set in one
  statement under that lock, which is held until the transaction ends. `setval` is never
  rolled back: a rolled-back insert leaves a gap in the ids, which is harmless.
- Cheap when nothing is behind: an explicit id the sequence has already passed (an id it
  handed out earlier, or a gap below it) costs one read of the sequence, no lock. The lock
  is taken before the row is inserted, so two transactions that each insert an id ahead of
  the sequence take turns. Two that had changed other rows of the table earlier (holding
  a lock this one waits for) and then do so at once may deadlock, which Postgres breaks by
  failing one of them (a client's event is then rejected with that error).
- Not too far. A sequence moved past an id near its column's largest value would soon have
  none left, and every insert after that fails (`nextval: reached maximum value`), so one
  client could break a table for good. A new row's explicit id above half the column's
  range (`limit`) is refused by the write path (`too_large`), on every database (SQLite's
  and MySQL's counters have the same end). Rows already there with such ids (adopted, or
  restored by `myko_rebuild`) do not move the sequence: it would take it some 2^62 inserts
  (2^30 for a 32-bit key) to reach them.

On Postgres the database role needs SELECT and UPDATE on the sequence (its owner, the role
that ran the migrations, has them; a role granted only USAGE can take values but cannot read
or set them, and an explicit id of a new row then fails).

Other databases need nothing else: SQLite (Django declares `AUTOINCREMENT`) and MySQL / MariaDB
continue after the largest id ever inserted. Oracle's identity columns are not handled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connections, models, transaction

# (alias, quoted table, column) -> the sequence's name as Postgres quotes it, or None when
# the column has none. A column's sequence does not change while a process runs.
_names: dict[tuple[str, str, str], str | None] = {}


def auto_keys(model: type[models.Model]) -> list[models.Field]:
    """The auto-increment primary keys of the tables a row of `model` is inserted into: the
    model's own, and its parents' (multi-table inheritance)."""
    out = []
    for m in (model._meta.concrete_model, *model._meta.get_parent_list()):
        pk = m._meta.pk
        if isinstance(pk, models.AutoField):  # also BigAutoField and SmallAutoField
            out.append(pk)
    return out


def limit(pk_field: models.Field, using: str = "default") -> int:
    """The largest explicit id a new row of this auto-increment key may have: half of its
    column's range (module docstring, "Not too far")."""
    return connections[using].ops.integer_field_range(pk_field.get_internal_type())[1] // 2


def too_large(
    model: type[models.Model], pks: Iterable[Any], using: str = "default"
) -> tuple[Any, int] | None:
    """(id, limit) of the first of these explicit ids of new rows of `model` that is above
    the limit of an auto-increment key, or None."""
    keys = auto_keys(model)
    for pk in pks if keys else ():
        if isinstance(pk, int) and not isinstance(pk, bool):
            for pk_field in keys:
                top = limit(pk_field, using)
                if pk > top:
                    return pk, top
    return None


def advance_past(model: type[models.Model], pks: Iterable[Any], using: str = "default") -> None:
    """Before inserting rows of `model` with these explicit primary keys: move its
    auto-increment sequence (Postgres) so that it never hands one of them out. Call it inside
    the transaction that inserts them; nothing to do on other databases or for other keys."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    ints = [pk for pk in pks if isinstance(pk, int) and not isinstance(pk, bool)]
    for pk_field in auto_keys(model) if ints else ():
        # Ids below 1 are never handed out; those above the limit are left behind (the
        # write path refuses them; an id the column cannot hold fails on insert).
        top = limit(pk_field, using)
        fitting = [pk for pk in ints if 0 < pk <= top]
        if fitting:
            _advance(connection, using, pk_field, max(fitting))


# The sequence is behind when its next value is not above `top` (increments are 1 in
# Django's tables; a larger one only makes `setval` move it further).
_BEHIND = "%s >= CASE WHEN is_called THEN last_value + 1 ELSE last_value END"


def _advance(connection: Any, using: str, pk_field: models.Field, top: int) -> None:
    table = connection.ops.quote_name(pk_field.model._meta.db_table)
    key = (using, table, pk_field.column)
    with connection.cursor() as cursor:
        if key not in _names:
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [table, pk_field.column])
            _names[key] = cursor.fetchone()[0]
        sequence = _names[key]
        if sequence is None:
            return  # an integer key without a sequence: nothing hands ids out
        # `sequence` comes from Postgres, quoted as an identifier by pg_get_serial_sequence.
        cursor.execute(f"SELECT {_BEHIND} FROM {sequence}", [top])
        if not cursor.fetchone()[0]:
            return  # the sequence is already past every id given
    with transaction.atomic(using=using, savepoint=False), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
        # Read again under the lock: an insert may have taken values since the first read.
        cursor.execute(
            f"SELECT setval(%s::regclass, %s, true) FROM {sequence} WHERE {_BEHIND}",
            [sequence, top, top],
        )
