"""Adopting existing rows: the rows an item table held before its model was registered.

Registering an existing model (`myko_django.register`, or making it an `Item`) changes no
table, so its rows are not in the log until something appends a SET for each. Until then the
log is not the truth for them (README, "The event log"): `myko_rebuild` could not restore
them.

How it is handled, and why:

- `manage.py migrate` adopts them, at its end (`post_migrate`): every deploy and every model
  change runs it, so there is no extra step to forget, and it runs before the new code
  serves. It costs nothing once done: each item type that was adopted has a row in
  `myko_adoption` (`Adoption`), so a run looks at one small table, plus one `EXISTS` per
  type not adopted yet (an empty table is marked at once): 0.6 ms, however large the
  tables. Counting (table rows against logged ids) is no answer, as ids of deleted items
  stay in the log; the exact question, "a row without an event?", took 2.3 s per million
  rows on every run once all were logged (measured on 2 cores, Postgres 1M rows).
- The rows are adopted a page at a time, one short transaction each: the item table is
  locked against writes (reads go on) for one page, about 80 ms for 1,000 rows, and the
  position counter only from the append to the commit, as for any writer. About 12,000
  rows a second, so 10 million rows take some 14 minutes of that deploy's `migrate`;
  interrupted, the next run skips the rows already logged (~100,000 a second) and goes on.
  Only rows with no event for their id get a SET: rows that are logged are the log's
  business (`myko_resync` compares and repairs those).
- Several processes running `migrate` at once are safe: each page is read and appended
  under the table lock, so a row gets one SET; the marker is written once.
- A first-start baseline in the workers was not chosen: several workers would race for it
  and the first would serve late (or be restarted by its health check) while it runs. A
  system check that refuses to start until a command has run was not chosen either: Django
  runs database checks in `migrate`, which would then refuse to run the very step that
  adopts, and daphne runs no checks. `manage.py check --database default` (and `migrate`
  itself, before it adopts) report un-adopted types with rows as `myko.W020`.
- `myko_resync`, which makes the log match the tables in full, marks what it covered.

Rows written by processes still running code without the registration (a rolling deploy)
after their type was adopted are not logged: run `manage.py myko_resync` once those are
gone. `myko_rebuild` keeps rows that were never logged unless told otherwise.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterable, Sequence

from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from myko_django.items.registry import ItemType, registry
from myko_django.log import append, reconcile, sequences
from myko_django.log.tables import Adoption, Event

SOURCE = "myko_adopt"
# Rows read (and writers of that table held back) per transaction; tests lower it.
PAGE = 1000


def adopted(using: str = "default") -> set[str]:
    """The item types marked as adopted."""
    return set(Adoption.objects.using(using).values_list("item_type", flat=True))


def not_adopted(using: str = "default") -> list[ItemType]:
    """Registered item types without the marker (one query)."""
    done = adopted(using)
    return sorted((t for t in registry if t.name not in done), key=lambda t: t.name)


def waiting(using: str = "default") -> list[ItemType]:
    """Item types not adopted whose table exists and has rows: what `migrate` would adopt.

    One query for the markers, then one `EXISTS` per type not adopted."""
    tables = set(connections[using].introspection.table_names())
    if Adoption._meta.db_table not in tables:
        return []  # not migrated yet: `migrate` creates the table, then adopts
    pending = not_adopted(using)
    return [
        t
        for t in pending
        if t.model._meta.db_table in tables and reconcile.plain_rows(t.model, using).exists()
    ]


def mark(names: Iterable[str], source: str, using: str = "default", events: int = 0) -> None:
    """Mark item types adopted (a type already marked keeps its marker)."""
    now = timezone.now()
    Adoption.objects.using(using).bulk_create(
        [Adoption(item_type=n, adopted_at=now, events=events, source=source) for n in names],
        ignore_conflicts=True,
    )


def adopt(
    item_type: ItemType,
    using: str = "default",
    *,
    source: str = SOURCE,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Append a SET for each row of the type's table that has no event, a page per
    transaction; mark the type adopted with the last page. Returns the SETs appended.

    `progress(rows_read, sets_appended)` is called after each page."""
    name, model = item_type.name, item_type.model
    tx = f"adopt-{uuid.uuid4()}"
    rows = reconcile.plain_rows(model, using).order_by("pk")
    rows = rows.values_list("pk", *item_type.attnames)
    after, read, appended = None, 0, 0
    while True:
        with transaction.atomic(using=using):
            _lock_table(item_type, using)
            append.position_committed(using)  # events committed meanwhile count as logged
            page = list((rows if after is None else rows.filter(pk__gt=after))[:PAGE])
            if not page:
                if after is not None:
                    # Rows written with ids of their own (raw SQL, another app) may have
                    # left the auto-increment sequence behind: move it past them.
                    sequences.advance_past(model, [after], using)
                mark([name], source, using, events=appended)
                return appended
            ids = [item_type.wire_id(row[0]) for row in page]
            logged = _logged(name, ids, using)
            fresh = [(i, row[1:]) for i, row in zip(ids, page, strict=True) if i not in logged]
            items = item_type.encode_values(row for _, row in fresh)
            pending = [
                append.Pending(Event.SET, name, item_id, item)
                for (item_id, _), item in zip(fresh, items, strict=True)
            ]
            # Last, after the page's reads (log/append.py: pending events go last).
            append.append(pending, tx=tx, source_id=source, using=using)
        after = page[-1][0]
        read += len(page)
        appended += len(pending)
        if progress is not None:
            progress(read, appended)


def _lock_table(item_type: ItemType, using: str) -> None:
    """Hold writes to this item table until we commit (reads go on): no row can change
    between our read of it and our append. Postgres only; on SQLite the single writer lock
    does the same once we write."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(item_type.model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")


def _logged(item_type: str, item_ids: Sequence[str], using: str) -> set[str]:
    """Which of these ids have at least one event (read from the index alone)."""
    events = Event.objects.using(using).filter(item_type=item_type, item_id__in=list(item_ids))
    return set(events.order_by().values_list("item_id", flat=True).distinct())


def fully_migrated(using: str = "default") -> bool:
    """Whether every migration is applied, so the models match their tables."""
    executor = MigrationExecutor(connections[using])
    return not executor.migration_plan(executor.loader.graph.leaf_nodes())


def adopt_waiting(using: str = "default", *, write: Callable[[str], None] | None = None) -> None:
    """Adopt every registered type not adopted yet: what `migrate` runs at its end.

    Empty tables are marked at once; rows are adopted only once every migration is applied
    (a partial `migrate` leaves models and tables apart), else this says so and waits."""
    tables = set(connections[using].introspection.table_names())
    if Adoption._meta.db_table not in tables:
        return  # myko_django is not migrated on this database
    pending = not_adopted(using)
    if not pending:
        return
    with_rows = []
    empty = []
    for item_type in pending:
        if item_type.model._meta.db_table not in tables:
            continue  # its own migration has not run yet
        if reconcile.plain_rows(item_type.model, using).exists():
            with_rows.append(item_type)
        else:
            empty.append(item_type.name)
    if empty:
        mark(empty, SOURCE, using)
    if not with_rows:
        return
    say = write or (lambda line: None)
    if not fully_migrated(using):
        names = ", ".join(t.name for t in with_rows)
        say(f"myko: not adopting the existing rows of {names} until every migration is applied.")
        return
    for item_type in with_rows:
        say(f"myko: adopting the existing rows of {item_type.name} into the event log...")

        def report(read: int, appended: int, name: str = item_type.name) -> None:
            if read % (PAGE * 100) == 0:
                say(f"  {name}: {read} rows read, {appended} SET appended")

        appended = adopt(item_type, using, progress=report)
        say(f"  {item_type.name}: adopted, {appended} SET appended.")


def after_migrate(*, using: str = "default", verbosity: int = 1, stdout=None, **kwargs) -> None:
    """The `post_migrate` receiver (connected for this app only, so it runs once a run)."""
    out = stdout or sys.stdout
    adopt_waiting(using, write=(lambda line: out.write(line + "\n")) if verbosity else None)
