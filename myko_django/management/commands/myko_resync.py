"""`manage.py myko_resync`: append the events that make the log match the item tables again,
after writes that bypassed capture (raw SQL, data migrations, loaddata).

Rows are compared as encoded for the wire, so fields kept off it (`fields` / `exclude`) are
ignored: a change only to those appends nothing.

The rows of a model registered after they were written are adopted by `manage.py migrate`
(a SET each, a page per short transaction; `myko_django/log/adoption.py` says why there and
not in a check or at first start). This command does the same and more, in one transaction
that holds writers back until it ends, and marks each item type it covered as adopted. For
a large table, prefer `migrate`."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, transaction

from myko_django.items.registry import ItemType
from myko_django.log import adoption, append
from myko_django.log.reconcile import (
    existing_ids,
    item_types,
    latest_for,
    latest_pages,
    lock_out_writers,
    same,
    table_pages,
)
from myko_django.log.tables import Event

_FLUSH = 500  # events per append


class Command(BaseCommand):
    help = (
        "Append a SET for each item row that differs from (or is missing in) the event log, "
        "and a DEL for each logged item whose row is gone. Idempotent."
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
            "--dry-run", action="store_true", help="Only report what would be appended."
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
        dry_run = options["dry_run"]
        if options["interactive"] and not dry_run:
            answer = input(
                "This appends SET/DEL events so the event log matches the item tables. "
                "Type 'yes' to continue: "
            )
            if answer != "yes":
                raise CommandError("Resync cancelled.")
        tx = f"resync-{uuid.uuid4()}"
        totals = [0, 0]
        with transaction.atomic(using=using):
            lock_out_writers(types, using)
            for item_type in types:
                sets, dels = self._resync(item_type, tx, using, dry_run)
                if not dry_run:  # every row is in the log now: nothing left to adopt
                    adoption.mark([item_type.name], "myko_resync", using, events=sets)
                totals[0] += sets
                totals[1] += dels
                self.stdout.write(f"{item_type.name}: {sets} SET, {dels} DEL")
        verb = "Would append" if dry_run else "Appended"
        summary = f"{verb} {totals[0]} SET, {totals[1]} DEL in total"
        if totals[0] + totals[1] and not dry_run:
            summary += f" (tx {tx})"
        self.stdout.write(summary + ".")

    def _resync(self, item_type: ItemType, tx: str, using: str, dry_run: bool) -> tuple[int, int]:
        """Compare one item type's table with the log; append (unless dry) what differs."""
        name = item_type.name
        pending: list[append.Pending] = []
        sets = dels = 0

        def flush(force: bool = False) -> None:
            if pending and (force or len(pending) >= _FLUSH):
                if not dry_run:
                    append.append(list(pending), tx=tx, source_id="myko_resync", using=using)
                pending.clear()

        for rows in table_pages(item_type.model, using):
            ids = [item_type.wire_id(row.pk) for row in rows]
            logged = latest_for(name, ids, using)
            for row, item_id in zip(rows, ids, strict=True):
                item = item_type.encode(row)
                change_type, payload = logged.get(item_id, (None, None))
                if change_type != Event.SET or not same(item, payload):
                    pending.append(append.Pending(Event.SET, name, item_id, item))
                    sets += 1
            flush()
        for page in latest_pages(name, using):
            logged_sets = [(i, item) for i, c, item in page if c == Event.SET]
            present = existing_ids(item_type, [i for i, _ in logged_sets], using)
            for item_id, payload in logged_sets:
                if item_id not in present:
                    pending.append(append.Pending(Event.DEL, name, item_id, payload))
                    dels += 1
            flush()
        flush(force=True)
        return sets, dels
