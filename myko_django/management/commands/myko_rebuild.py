"""`manage.py myko_rebuild`: make the item tables equal to the latest state in the event log.

Rows are upserted and deleted in place with plain queries that fire no signals, so no
event is appended (the log already says all this) and no non-item row is cascaded away.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import sql
from tqdm import tqdm

from myko_django.items.errors import ItemError
from myko_django.items.registry import ItemType, registry
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
        "item's latest SET, delete rows whose item is deleted or not logged. Appends nothing."
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
        interactive = options["interactive"]
        if interactive:
            answer = input(
                "This rewrites the item tables from the event log. Type 'yes' to continue: "
            )
            if answer != "yes":
                raise CommandError("Rebuild cancelled.")
        show_progress = interactive and sys.stderr.isatty()
        counts: list[tuple[str, int, int, int]] = []
        connection = connections[using]
        try:
            with transaction.atomic(using=using):
                lock_out_writers(types, using)
                for item_type in types:
                    counts.append((item_type.name, *self._rebuild(item_type, using, show_progress)))
                # Foreign keys are checked at commit; check now to name what broke.
                connection.check_constraints(table_names=_tables_touching(types))
        except IntegrityError as exc:
            raise CommandError(
                f"The rebuilt tables break a foreign key, so nothing was changed: {exc}"
            ) from exc
        for name, inserted, updated, deleted in counts:
            self.stdout.write(f"{name}: {inserted} inserted, {updated} updated, {deleted} deleted")
        total = [sum(c[i] for c in counts) for i in (1, 2, 3)]
        self.stdout.write(
            f"Rebuilt {len(counts)} item types from the log: {total[0]} inserted, "
            f"{total[1]} updated, {total[2]} deleted; no events appended."
        )

    def _rebuild(self, item_type: ItemType, using: str, show: bool) -> tuple[int, int, int]:
        """Upsert the logged items of one type, then delete the rows the log does not hold."""
        model, name = item_type.model, item_type.name
        plain = plain_rows(model, using)
        logged = Event.objects.using(using).filter(item_type=name).order_by()
        logged = logged.values("item_id").distinct()
        total = logged.count() + plain.count()
        inserted = updated = deleted = 0
        with tqdm(total=total, desc=name, unit="item", file=sys.stderr, disable=not show) as bar:
            for page in latest_pages(name, using):
                decoded = {i: _decode(item_type, i, p) for i, c, p in page if c == Event.SET}
                pks = [pk for pk, _ in decoded.values()]
                rows = {item_type.wire_id(r.pk): r for r in plain.filter(pk__in=pks)}
                missing = []
                for item_id, (pk, values) in decoded.items():
                    row = rows.get(item_id)
                    if row is None:
                        missing.append(model(pk=pk, **values))
                    elif not _matches(item_type, row, values):
                        plain.filter(pk=pk).update(**values)
                        updated += 1
                inserted += _insert(model, missing, using)
                bar.update(len(page))
            for pks in pk_pages(model, using):
                ids = [item_type.wire_id(pk) for pk in pks]
                states = latest_for(name, ids, using)
                gone = [
                    pk
                    for pk, item_id in zip(pks, ids, strict=True)
                    if states.get(item_id, ("",))[0] != Event.SET
                ]
                if gone:
                    _refuse_if_referenced(item_type, gone, using)
                    deleted += sql.DeleteQuery(model).delete_batch(gone, using)
                bar.update(len(pks))
        return inserted, updated, deleted


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
    fields = [f for f in model._meta.concrete_fields if not getattr(f, "generated", False)]
    batch = max(connection.ops.bulk_batch_size(fields, objs), 1)
    for start in range(0, len(objs), batch):
        query = sql.InsertQuery(model)
        query.insert_values(fields, objs[start : start + batch], raw=True)
        query.get_compiler(using=using).execute_sql(None)
    # Explicit ids do not move an autoincrement sequence; loaddata resets it the same way.
    statements = connection.ops.sequence_reset_sql(no_style(), [model])
    if statements:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
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
