"""Durable events/s through commands into the configured database (prints numbers).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mykobench PYTHONPATH=. \
        .venv/bin/python bench/write_throughput.py
"""

import os
import statistics
import sys
import time
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
django.setup()

from django.core.management import call_command  # noqa: E402

from myko_django.commands import run_command  # noqa: E402
from tests.testapp.models import Gadget  # noqa: E402


def run(label: str, command_id: str, make_params, commands: int, per_command: int) -> None:
    latencies = []
    started = time.perf_counter()
    for i in range(commands):
        t = time.perf_counter()
        run_command(command_id, make_params(i), tx=uuid.uuid4().hex)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    latencies.sort()
    print(
        f"{label:<42} {commands * per_command / elapsed:>8.0f} events/s   "
        f"p50 {statistics.median(latencies) * 1000:6.1f} ms   "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:6.1f} ms"
    )


def main() -> None:
    call_command("migrate", verbosity=0)
    Gadget.objects.all().delete()
    print(f"database: {django.db.connection.vendor}")
    run("1 event per command (ctx.set)", "MakeGadgets", lambda i: {"labels": [f"s{i}"]}, 300, 1)
    run(
        "100 events per command (ctx.set loop)",
        "MakeGadgets",
        lambda i: {"labels": [f"{i}-{j}" for j in range(100)]},
        10,
        100,
    )
    run(
        "100 events per command (ctx.set_many)",
        "SetGadgets",
        lambda i: {"items": [{"id": f"b{i}-{j}", "label": f"{j}"} for j in range(100)]},
        30,
        100,
    )


if __name__ == "__main__":
    main()
