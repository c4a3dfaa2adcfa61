"""`manage.py myko_compact`: remove superseded events (those of an item that has a newer one)
older than `--older-than` days from the event log, optionally archiving them first.

Every item keeps its latest event, SET or DEL, at its position, so `myko_rebuild` computes
exactly what it did before; positions are not renumbered and the recent log is left whole,
so running workers see no difference (`myko_django/log/compaction.py`; docs/deploy.md, "The
log's growth"). Each batch is a short transaction that takes no lock a writer waits for:
run it from cron beside the workers.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone
from tqdm import tqdm

from myko_django.log import compaction

DEFAULT_AGE = 30.0  # days


class Command(BaseCommand):
    help = (
        "Remove superseded events (an item's events older than its latest one) created more "
        "than --older-than days ago. Every item's latest event is kept, so myko_rebuild "
        "stays exact. --archive writes the removed events to a JSON-lines file first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            default=DEFAULT_AGE,
            metavar="DAYS",
            help=f"Only events created more than this many days ago (default {DEFAULT_AGE:g}).",
        )
        parser.add_argument(
            "--archive",
            metavar="PATH",
            help="Append the removed events to this file, one JSON object per line (gzip "
            "when it ends in .gz), each batch written and flushed before it is removed.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be removed."
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=compaction.BATCH,
            help=f"Positions looked at per transaction (default {compaction.BATCH}).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args: Any, **options: Any) -> None:
        days, batch, using = options["older_than"], options["batch"], options["database"]
        if days < 0:
            raise CommandError("--older-than must be 0 or more days.")
        if batch < 1:
            raise CommandError("--batch must be at least 1.")
        dry_run = options["dry_run"]
        cutoff = timezone.now() - dt.timedelta(days=days)
        cut = compaction.cut_position(cutoff, using)
        if not cut:
            self.stdout.write(f"No event is older than {days:g} days: nothing to compact.")
            return
        with ExitStack() as stack:
            archive = None
            if options["archive"] and not dry_run:
                archive = _Archive(stack, Path(options["archive"]))
            bar = stack.enter_context(
                tqdm(total=cut, unit="pos", file=sys.stderr, disable=not sys.stderr.isatty())
            )
            result = compaction.compact(
                cut,
                using=using,
                batch=batch,
                dry_run=dry_run,
                archive=archive,
                progress=lambda position: bar.update(position - bar.n),
            )
        verb = "Would remove" if dry_run else "Removed"
        per_type = ", ".join(f"{name} {n}" for name, n in sorted(result.removed.items()))
        self.stdout.write(
            f"{verb} {result.total} superseded event(s) at positions up to {cut} (older than "
            f"{days:g} days){': ' + per_type if per_type else ''}. Every item's latest event "
            "is kept."
        )
        if archive is not None:
            self.stdout.write(f"Archived them to {options['archive']}.")


class _Archive:
    """Appends events to a JSON-lines file (gzip for .gz), made durable batch by batch."""

    def __init__(self, stack: ExitStack, path: Path) -> None:
        self.raw: BinaryIO = stack.enter_context(open(path, "ab"))  # noqa: SIM115
        self.out: BinaryIO = self.raw
        if path.name.endswith(".gz"):
            # One gzip member per run: concatenated members are one valid gzip file.
            self.out = stack.enter_context(gzip.GzipFile(fileobj=self.raw, mode="ab"))

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self.out.writelines(compaction.archive_line(event) for event in events)
        self.out.flush()
        self.raw.flush()
        os.fsync(self.raw.fileno())
