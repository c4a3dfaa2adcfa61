"""Issue 10, point 3: SQLite in Django's default transaction mode (DEFERRED, what
`startproject` writes) refuses concurrent writers with "database is locked"; with
`OPTIONS["transaction_mode"] = "IMMEDIATE"` (what check myko.W033 asks for) every write
goes through.

Each case runs in a process of its own on a fresh SQLite file with the settings under test:
THREADS threads, released together, each apply WRITES client event batches of one SET
through the write path (`writepath.apply_events`, what a client's `ws:m:event` runs), as
concurrent clients of one daphne process do. The database is the test's own, so this runs
the same in either round of bin/test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THREADS, WRITES = 6, 40

SETTINGS = """
from pathlib import Path
SECRET_KEY = "test"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "channels", "myko_django",
    "project.demo",
]
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(Path(__file__).parent / "db.sqlite3"),
    "OPTIONS": {options!r},
}}}}
CHANNEL_LAYERS = {{"default": {{"BACKEND": "channels.layers.InMemoryChannelLayer"}}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

WRITERS = """
import json, sys, threading

import django

django.setup()

from django.core.management import call_command
from django.db import OperationalError, connections

from myko_django.log.tables import Event
from myko_django.log.writepath import apply_events
from project.demo.models import Target

call_command("migrate", verbosity=0)
threads, writes = int(sys.argv[1]), int(sys.argv[2])
start = threading.Barrier(threads)
refused = []  # one message per event that did not commit


def writer(n):
    start.wait()
    for i in range(writes):
        item = {"id": f"t{n}-{i}", "name": "x"}
        event = {"changeType": "SET", "itemType": "Target", "item": item}
        try:
            _, rejected = apply_events([event])  # the system's own write: no permission checks
            refused.extend(message for _, _, message in rejected)
        except OperationalError as exc:  # the whole batch failed
            refused.append(str(exc))
    connections.close_all()


workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
positions = list(Event.objects.order_by("position").values_list("position", flat=True))
print(json.dumps({"refused": refused, "rows": Target.objects.count(), "positions": positions}))
"""


def run_writers(tmp_path: Path, options: dict) -> dict:
    (tmp_path / "sqlite_settings.py").write_text(SETTINGS.format(options=options))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "PYTHONPATH")
    }
    env.update(DJANGO_SETTINGS_MODULE="sqlite_settings", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    out = subprocess.run(
        [sys.executable, "-c", WRITERS, str(THREADS), str(WRITES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-5000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_transaction_mode_refuses_concurrent_writers(tmp_path):
    result = run_writers(tmp_path, {})
    assert result["refused"], "no write was refused: the failure this test proves is gone"
    # Refused after the write path's retries, each with the database's message.
    assert result["refused"] and all("database is locked" in m for m in result["refused"])
    # What was refused is lost (the client only gets an event-error), the rest is intact.
    assert result["rows"] == THREADS * WRITES - len(result["refused"])
    assert result["positions"] == list(range(1, result["rows"] + 1))


def test_immediate_transaction_mode_lets_every_writer_through(tmp_path):
    result = run_writers(tmp_path, {"transaction_mode": "IMMEDIATE", "timeout": 20})
    assert result["refused"] == []
    assert result["rows"] == THREADS * WRITES
    assert result["positions"] == list(range(1, THREADS * WRITES + 1))
