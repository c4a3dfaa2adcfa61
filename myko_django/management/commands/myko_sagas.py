"""`manage.py myko_sagas`: run the project's sagas beside the daphne workers.

One process runs every registered saga (or the ones named); run a second copy for
availability: one process is active per saga, the other takes over when it dies
(`myko_django/sagas/runner.py`; README, "Sagas").
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from myko_django.items.errors import OperationError
from myko_django.items.sagas import get, registered
from myko_django.log.read import high_water
from myko_django.sagas import runtime
from myko_django.sagas.runner import Runner


def _position(value: str) -> str | int:
    """A command-line start position: "head" or a log position >= 0."""
    if value == "head":
        return value
    try:
        position = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'head' or a log position, got {value!r}"
        ) from None
    if position < 0:
        raise argparse.ArgumentTypeError(f"a log position is >= 0, got {position}")
    return position


class Command(BaseCommand):
    help = (
        "Run the sagas (all, or those named): follow the event log from each saga's "
        "checkpoint and commit each event's effects with the checkpoint's advance. Stops "
        "on SIGTERM or Ctrl-C after the transaction in progress."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="SAGA", help="Only these sagas.")
        parser.add_argument(
            "--start",
            type=_position,
            metavar="head|POSITION",
            help="Where a saga without a checkpoint starts, instead of its own `start` "
            "(head: only new events; 0: the whole log).",
        )
        parser.add_argument(
            "--set-checkpoint",
            type=_position,
            metavar="head|POSITION",
            help="Move the named sagas' checkpoints (0: replay the log) and exit. Stop the "
            "running ones first, and undo what the saga derived if it must not count twice.",
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="Handle what is waiting, then exit (instead of following the log).",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            help="Print each saga's checkpoint, lag and parked events.",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        try:
            sagas = [get(n) for n in options["names"]] or list(registered().values())
            for saga in sagas:
                saga.compiled_filter()  # an unknown item type or a bad filter: say so now
        except OperationError as exc:
            raise CommandError(str(exc)) from None
        if options["list"]:
            for s in runtime.status(using):
                at = "not started" if s.position is None else f"at {s.position}"
                self.stdout.write(f"{s.name}: {at}, {s.lag} behind, {s.parked} parked")
            return
        if options["set_checkpoint"] is not None:
            if not options["names"]:
                raise CommandError("--set-checkpoint needs the names of the sagas to move")
            where = options["set_checkpoint"]
            for saga in sagas:
                position = high_water(using) if where == "head" else where
                runtime.set_checkpoint(saga.name, position, using)
                self.stdout.write(f"{saga.name}: checkpoint set to {position}")
            return
        if not sagas:
            raise CommandError("No sagas are registered (declare them with @saga in myko.py).")
        runner = Runner(sagas, start=options["start"], using=using)

        def stop(signum: int, frame: Any) -> None:
            runner.stop.set()
            runner.wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        names = ", ".join(s.name for s in sagas)
        self.stdout.write(f"myko_sagas: running {names}", ending="\n")
        self.stdout.flush()
        runner.run(once=options["once"])
        self.stdout.write("myko_sagas: stopped")
