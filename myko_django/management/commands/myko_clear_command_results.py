"""`manage.py myko_clear_command_results`: delete stored command responses past
MYKO["COMMAND_RESULT_TTL"], as Django's `clearsessions` does for sessions. Run it from cron;
commands no longer purge on the request path (an expired response is ignored when a retry
looks it up, whether or not this has run)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from myko_django import conf
from myko_django.log.tables import CommandResult

BATCH = 1000  # rows per DELETE: a huge backlog never becomes one giant transaction


class Command(BaseCommand):
    help = (
        "Delete stored command responses older than MYKO['COMMAND_RESULT_TTL'] seconds, "
        "in batches. Safe to run while the servers run (e.g. hourly from cron)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH,
            help=f"Rows deleted per transaction (default {BATCH}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        using, batch = options["database"], options["batch_size"]
        if batch < 1:
            raise CommandError("--batch-size must be at least 1.")
        ttl = conf.get("COMMAND_RESULT_TTL")
        expired = CommandResult.objects.using(using).filter(
            created_at__lt=timezone.now() - dt.timedelta(seconds=ttl)
        )
        if options["dry_run"]:
            count = expired.count()
            self.stdout.write(f"Would delete {count} command result(s) older than {ttl} s.")
            return
        deleted = 0
        while True:
            # Oldest first, by the created_at index; each DELETE commits on its own.
            pks = list(expired.order_by("created_at").values_list("pk", flat=True)[:batch])
            if not pks:
                break
            deleted += expired.filter(pk__in=pks).delete()[0]
            if len(pks) < batch:
                break
        self.stdout.write(f"Deleted {deleted} command result(s) older than {ttl} s.")
