"""Processes for the commit-order test: writers that stall between append and commit, and
a reader that tails the log and reports any position it saw before a lower one.

    python -m tests.support.log_workers write <count> <seed>
    python -m tests.support.log_workers read <seconds> [<last position>]
"""

import os
import random
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.db import connection, transaction  # noqa: E402

from project.demo.models import Scene  # noqa: E402


def write(count: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        with transaction.atomic():
            Scene.objects.create(name=f"{seed}-{i}")  # appends its event under the lock
            time.sleep(rng.uniform(0, 0.02))  # a stall between append and commit


def read(seconds: float, until: int | None = None) -> None:
    """Tail the log for up to `seconds` (or until position `until` was read): each read must
    continue exactly where the last one ended."""
    last, reads, problems = 0, 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (until is None or last < until):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT position FROM myko_event WHERE position > %s ORDER BY position", [last]
            )
            positions = [row[0] for row in cursor.fetchall()]
        reads += 1
        for position in positions:
            if position != last + 1:
                problems.append(f"saw {position} after {last}")
            last = position
    print(f"last={last} reads={reads} problems={len(problems)}")
    for line in problems[:10]:
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(int(sys.argv[2]), int(sys.argv[3]))
    else:
        read(float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
