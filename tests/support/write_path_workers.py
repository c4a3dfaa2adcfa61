"""Processes for the write-path proof (tests/system/test_write_path.py): writers that stall
at random inside their transactions and between their commit and the positioning of their
events (some die there), and readers that tail the log.

    python -m tests.support.write_path_workers write <seed> <count> <die: 0|1> <ids,...>
    python -m tests.support.write_path_workers read <seconds> <last position>
"""

import os
import random
import sys
import time
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.db import connection, transaction  # noqa: E402
from django.db.models import F  # noqa: E402

from myko_django.log.capture import write_transaction  # noqa: E402
from myko_django.models import Event  # noqa: E402
from tests.testapp.models import Gadget  # noqa: E402


def _stall(rng: random.Random) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [rng.choice([0, 0, 0.002, 0.01, 0.03])])


def write(seed: int, count: int, die: bool, ids: list[str]) -> None:
    """`count` increments of a random Gadget's count, each one transaction; each writer
    checks read-your-writes: once it returns, its event has a position at or below the
    head it was told. With `die`, the last one exits between commit and positioning."""
    rng = random.Random(seed)
    problems = []
    for i in range(count):
        tx = uuid.uuid4().hex
        last = i == count - 1
        with write_transaction(tx) as ctx:
            _stall(rng)  # before the row write
            Gadget.objects.filter(pk=rng.choice(ids)).update(count=F("count") + 1)
            _stall(rng)  # holding the row lock
            after_commit = rng.choice([0, 0, 0.005, 0.02])
            # Runs after commit, before the positioning run registered at the append.
            if die and last:
                transaction.on_commit(lambda: os._exit(0))
            elif after_commit:
                transaction.on_commit(lambda s=after_commit: time.sleep(s))
        positions = list(Event.objects.filter(tx=tx).values_list("position", flat=True))
        if len(positions) != 1 or positions[0] > ctx.last_position:
            problems.append(f"tx {tx}: positions {positions}, told head {ctx.last_position}")
    print(f"problems={len(problems)}")
    for line in problems[:10]:
        print(line)


def read(seconds: float, until: int) -> None:
    """Tail the log until position `until` was read: each read must continue exactly where
    the last ended, and no position may ever appear at or below one already read."""
    last, reads, problems = 0, 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and last < until:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT position FROM myko_event WHERE position > %s ORDER BY position", [last]
            )
            positions = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT COUNT(*) FROM myko_event WHERE position <= %s", [last])
            below = cursor.fetchone()[0]
        reads += 1
        if below != last:
            problems.append(f"{below} positions at or below {last}")
        for position in positions:
            if position != last + 1:
                problems.append(f"saw {position} after {last}")
            last = position
    print(f"last={last} reads={reads} problems={len(problems)}")
    for line in problems[:10]:
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5].split(","))
    else:
        read(float(sys.argv[2]), int(sys.argv[3]))
