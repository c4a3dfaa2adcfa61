"""`manage.py myko_typegen [--output FILE]`: TypeScript types of the project's item types and
operations, for myko.js and upstream's TypeScript client (myko_django/items/typegen.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from myko_django.items.typegen import generate


class Command(BaseCommand):
    help = (
        "Print TypeScript declarations of every item type and of the derived and project "
        "queries, reports and commands (classes shaped like upstream myko's generated ones). "
        "--output FILE writes them to FILE instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output",
            "-o",
            metavar="FILE",
            help="write the module to FILE (its folder must exist) instead of printing it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = generate()
        output = options["output"]
        if not output:
            self.stdout.write(text, ending="")
            return
        path = Path(output)
        if path.is_dir():
            raise CommandError(f"--output {output}: is a folder; give a file name")
        if not path.parent.is_dir():
            raise CommandError(f"--output {output}: folder {path.parent} does not exist")
        # Written whole or not at all: a watcher or a build never reads half a file.
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            raise CommandError(f"--output {output}: {exc.strerror or exc}") from None
        self.stderr.write(f"Wrote {path} ({len(text.splitlines())} lines).")
