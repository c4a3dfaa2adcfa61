"""`manage.py myko_rebuild`: make the item tables equal to the latest state in the event log.

Rows are upserted and deleted in place with plain queries that fire no signals, so no
event is appended (the log already says all this) and no non-item row is cascaded away.
Fields kept off the wire (`fields` / `exclude`) are not in the log: existing rows keep their
values, recreated rows get their defaults.

The log decides only about what it holds. A row whose latest event is a DEL is deleted; a
row with no event for its id at all (written before its model was registered and not
adopted yet, or by raw SQL) was never logged, so the log cannot say it is gone: it is kept,
counted and named, unless `--delete-unlogged` is given (`myko_resync` logs it instead; see
`myko_django/log/adoption.py` for how `migrate` adopts the rows of newly registered models).

Before asking, the command counts, in one read-only snapshot and without locks, what it
would insert, update, delete and keep, and shows it (`--dry-run` stops there). It then does
the work under the locks and, if the counts came out different (a write in between), changes
nothing and says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import sql
from tqdm import tqdm

from myko_django.items.errors import ItemError
from myko_django.items.registry import ItemType, registry
from myko_django.log import append, sequences
from myko_django.log.reconcile import (
    item_types,
    latest_for,
    latest_pages,
    lock_out_writers,
    pk_pages,
    plain_rows,
    same,
)
from myko_django.log.tables import Event


class Command(BaseCommand):
    help = (
        "Rewrite the item tables from the event log: update and insert rows to match each "
        "item's latest SET, delete rows whose item the log says is deleted. Rows never logged "
        "are kept unless --delete-unlogged. Shows the counts before it asks. Appends nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only print what would be inserted, updated, deleted and kept; change nothing.",
        )
        parser.add_argument(
            "--delete-unlogged",
            action="store_true",
            help="Also delete rows that have no event at all (never logged). By default they "
            "are kept: run myko_resync to log them.",
        )
        parser.add_argument(
            "--item-type",
            action="append",
            dest="item_types",
            metavar="NAME",
            help="Only this item type (repeatable; default: all).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args: Any, **options: Any) -> None:
        types = item_types(options["item_types"])
        using = options["database"]
        interactive, dry_run = options["interactive"], options["dry_run"]
        self.delete_unlogged = options["delete_unlogged"]
        show_progress = (interactive or dry_run) and sys.stderr.isatty()
        plan: list[Counts] | None = None
        if interactive or dry_run:
            # Counted first, without locks (nobody waits while a person reads the prompt);
            # what is then done under the locks must be what was shown.
            plan = self._plan(types, using, show_progress)
            self._report(plan, planned=True)
            if dry_run:
                return
            if not any(c.changes for c in plan):
                self.stdout.write("Nothing to rebuild.")
                return
            total = _sum(plan)
            answer = input(
                f"This rewrites the item tables from the event log: {total.inserted} "
                f"inserted, {total.updated} updated, {total.deleted} deleted"
                f"{_kept_note(total)}. Type 'yes' to continue: "
            )
            if answer != "yes":
                raise CommandError("Rebuild cancelled.")
        counts: list[Counts] = []
        connection = connections[using]
        try:
            with transaction.atomic(using=using):
                lock_out_writers(types, using)
                for item_type in types:
                    counts.append(self._rebuild(item_type, using, show_progress, apply=True))
                # Foreign keys are checked at commit; check now to name what broke.
                connection.check_constraints(table_names=_tables_touching(types))
                if plan is not None and counts != plan:
                    raise CommandError(
                        "The item tables or the log changed while you were asked, so nothing "
                        "was changed: run myko_rebuild again to see the new counts."
                    )
        except IntegrityError as exc:
            raise CommandError(
                f"The rebuilt tables break a foreign key, so nothing was changed: {exc}"
            ) from exc
        self._report(counts, planned=False)

    def _plan(self, types: list[ItemType], using: str, show: bool) -> list[Counts]:
        """What a rebuild would do, counted in one read-only snapshot."""
        connection = connections[using]
        outermost = not connection.in_atomic_block
        if outermost:
            append.position_committed(using)  # committed events not positioned yet count
        with transaction.atomic(using=using):
            if outermost and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return [self._rebuild(t, using, show, apply=False) for t in types]

    def _report(self, counts: list[Counts], *, planned: bool) -> None:
        for c in counts:
            if planned:
                line = (
                    f"{c.name}: would insert {c.inserted}, update {c.updated}, delete {c.deleted}"
                )
            else:
                line = f"{c.name}: {c.inserted} inserted, {c.updated} updated, {c.deleted} deleted"
            if c.kept:
                line += _kept_note(c)
            self.stdout.write(line)
        total = _sum(counts)
        done = (
            f"{total.inserted} inserted, {total.updated} updated, {total.deleted} deleted"
            f"{_kept_note(total)}"
        )
        if planned:
            self.stdout.write(f"Would rebuild {len(counts)} item types from the log: {done}.")
        else:
            self.stdout.write(
                f"Rebuilt {len(counts)} item types from the log: {done}; no events appended."
            )
        if total.kept:
            self.stdout.write(
                "Rows never logged (no event for their id) are kept: the log cannot say they "
                "are gone. Run myko_resync to log them, or myko_rebuild --delete-unlogged to "
                "delete them."
            )

    def _rebuild(self, item_type: ItemType, using: str, show: bool, *, apply: bool) -> Counts:
        """Upsert the logged items of one type, then delete the rows the log says are
        deleted (and, with --delete-unlogged, those it never held). With apply=False only
        count what would be done."""
        model, name = item_type.model, item_type.name
        plain = plain_rows(model, using)
        logged = Event.objects.using(using).filter(item_type=name).order_by()
        logged = logged.values("item_id").distinct()
        total = logged.count() + plain.count()
        inserted = updated = deleted = kept = 0
        with tqdm(total=total, desc=name, unit="item", file=sys.stderr, disable=not show) as bar:
            for page in latest_pages(name, using):
                decoded = {i: _decode(item_type, i, p) for i, c, p in page if c == Event.SET}
                pks = [pk for pk, _ in decoded.values()]
                rows = {item_type.wire_id(r.pk): r for r in plain.filter(pk__in=pks)}
                missing = []
                for item_id, (pk, values) in decoded.items():
                    row = rows.get(item_id)
                    if row is None:
                        missing.append(_new_row(item_type, item_id, pk, values))
                    elif not _matches(item_type, row, values):
                        if apply:
                            plain.filter(pk=pk).update(**values)
                        updated += 1
                inserted += _insert(model, missing, using) if apply else len(missing)
                bar.update(len(page))
            for pks in pk_pages(model, using):
                ids = [item_type.wire_id(pk) for pk in pks]
                states = latest_for(name, ids, using)
                gone = []
                for pk, item_id in zip(pks, ids, strict=True):
                    state = states.get(item_id)
                    if state is None and not self.delete_unlogged:
                        kept += 1  # never logged: the log cannot say it is gone
                    elif state is None or state[0] != Event.SET:
                        gone.append(pk)
                if gone:
                    _refuse_if_referenced(item_type, gone, using)
                    if apply:
                        sql.DeleteQuery(model).delete_batch(gone, using)
                    deleted += len(gone)
                bar.update(len(pks))
        return Counts(name, inserted, updated, deleted, kept)


@dataclass(frozen=True)
class Counts:
    """What a rebuild did (or would do) to one item type's table."""

    name: str
    inserted: int
    updated: int
    deleted: int
    kept: int  # rows never logged, left alone

    @property
    def changes(self) -> int:
        return self.inserted + self.updated + self.deleted


def _sum(counts: list[Counts]) -> Counts:
    return Counts(
        "total",
        sum(c.inserted for c in counts),
        sum(c.updated for c in counts),
        sum(c.deleted for c in counts),
        sum(c.kept for c in counts),
    )


def _kept_note(total: Counts) -> str:
    return f", {total.kept} kept (never logged)" if total.kept else ""


def _decode(item_type: ItemType, item_id: str, payload: Any) -> tuple[Any, dict[str, Any]]:
    """A logged wire item -> (pk, {attname: value}) for the fields it carries."""
    try:
        pk = item_type.decode_id(item_id)
        if not isinstance(payload, dict):
            raise ItemError(f"{item_type.name}: logged item is not an object")
        values = {}
        for codec in item_type.codecs[1:]:
            if codec.wire in payload:
                values[codec.attname] = codec.decode(payload[codec.wire], item_type.name)
    except ItemError as exc:
        raise CommandError(
            f"{item_type.name} {item_id}: the log holds an item the table cannot store: {exc}. "
            "Nothing was changed."
        ) from exc
    return pk, values


def _new_row(item_type: ItemType, item_id: str, pk: Any, values: dict[str, Any]) -> models.Model:
    """A row to insert for a logged item. Fields that do not travel (`fields` / `exclude`,
    unsupported) are not in the log: they get their defaults, as a new row made by a client
    would (and auto_now / auto_now_add the time now); existing rows keep theirs."""
    required = item_type.required_kept
    if required:
        raise CommandError(
            f"{item_type.name} {item_id}: the row is missing and cannot be recreated from the "
            f"log: its field {required[0].name!r} is not on the wire (so not logged) and has no "
            "default. Nothing was changed."
        )
    obj = item_type.model(pk=pk, **values)
    for f in item_type.kept:
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            f.pre_save(obj, True)
    return obj


def _matches(item_type: ItemType, row: models.Model, values: dict[str, Any]) -> bool:
    """Whether the row already stores these decoded values (compared as encoded)."""
    return all(
        same(codec.encode(getattr(row, codec.attname)), codec.encode(values[codec.attname]))
        for codec in item_type.codecs[1:]
        if codec.attname in values
    )


def _insert(model: type[models.Model], objs: list[models.Model], using: str) -> int:
    """INSERT rows as given: raw, so auto_now and other pre_save hooks keep the logged values."""
    if not objs:
        return 0
    connection = connections[using]
    # Explicit ids do not move an auto-increment sequence: move it past them, never back
    # (log/sequences.py says why not loaddata's sequence_reset_sql).
    sequences.advance_past(model, [obj.pk for obj in objs], using)
    fields = [f for f in model._meta.concrete_fields if not getattr(f, "generated", False)]
    batch = max(connection.ops.bulk_batch_size(fields, objs), 1)
    for start in range(0, len(objs), batch):
        query = sql.InsertQuery(model)
        query.insert_values(fields, objs[start : start + batch], raw=True)
        query.get_compiler(using=using).execute_sql(None)
    return len(objs)


def _refuse_if_referenced(item_type: ItemType, pks: list[Any], using: str) -> None:
    """Deleting without cascades must not orphan rows of non-item models: name them."""
    for rel in item_type.model._meta.related_objects:
        related = rel.related_model
        if rel.many_to_many or registry.for_model(related) is not None:
            continue  # item models follow the log; m2m links fall to the constraint check
        targets = plain_rows(item_type.model, using).filter(pk__in=pks)
        refs = plain_rows(related, using).filter(**{f"{rel.field.name}__in": targets})
        blocked = list(refs.values_list(rel.field.attname, flat=True).distinct()[:5])
        if blocked:
            raise CommandError(
                f"Cannot delete {item_type.name} {', '.join(map(str, blocked))}: the log says "
                f"deleted, but {related._meta.label} rows still reference them "
                f"({related.__name__}.{rel.field.name}). Delete or repoint those rows first. "
                "Nothing was changed."
            )


def _tables_touching(types: list[ItemType]) -> list[str]:
    """The rebuilt tables and every table with a foreign key into them."""
    tables = []
    for item_type in types:
        meta = item_type.model._meta
        tables.append(meta.db_table)
        tables += [rel.related_model._meta.db_table for rel in meta.related_objects]
        tables += [
            rel.through._meta.db_table
            for rel in meta.related_objects
            if rel.many_to_many and rel.through is not None
        ]
    return list(dict.fromkeys(tables))
