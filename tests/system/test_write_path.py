"""Issue 14: writers commit concurrently and their events get positions after commit
(myko_django/log/append.py). Many writers stall at random inside their transactions and
between commit and positioning (some die there); readers tailing the log must still see
one gap-free order that never changes, and the log must replay to the tables."""

import os
import subprocess
import sys

import pytest
from django.db import connection

from myko_django.log import append
from myko_django.models import Event
from myko_django.testing import current_database_url
from tests.testapp.models import Gadget

pytestmark = [pytest.mark.django_db(transaction=True)]

WRITERS = 8
EACH = 30
DYING = 2  # writers whose last transaction commits and then the process exits


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.write_path_workers", *args],
        env={**os.environ, "DATABASE_URL": current_database_url()},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_writers_with_stalls_and_deaths_keep_one_gap_free_order():
    gadgets = [Gadget.objects.create(label=f"g{i}") for i in range(4)]
    ids = ",".join(str(g.pk) for g in gadgets)
    total = len(gadgets) + WRITERS * EACH + 1
    readers = [_run("read", "90", str(total)) for _ in range(3)]
    writers = [
        _run("write", str(seed), str(EACH), "1" if seed < DYING else "0", ids)
        for seed in range(WRITERS)
    ]
    for w, seed in zip(writers, range(WRITERS), strict=True):
        out = w.communicate(timeout=90)[0]
        assert w.returncode == 0
        if seed >= DYING:  # a dying writer prints nothing
            assert "problems=0" in out, out
    # The dying writers' last events were positioned by the others' runs. One more dies
    # alone: its event waits, committed, for the next run: the hub's poll runs this one.
    last = _run("write", "99", "1", "1", ids)
    last.communicate(timeout=30)
    assert last.returncode == 0
    assert append.position_stragglers() >= 1
    for r in readers:
        out = r.communicate(timeout=90)[0]
        assert "problems=0" in out and f"last={total}" in out, out
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM myko_pending_event")
        assert cursor.fetchone()[0] == 0
    assert list(Event.objects.values_list("position", flat=True)) == list(range(1, total + 1))
    # Per item, position order is commit order: the counts go 0, 1, 2, ... and end at the
    # table's value (the log replays to the table).
    for g in gadgets:
        counts = [e.item["count"] for e in Event.objects.filter(item_id=str(g.pk))]
        assert counts == list(range(len(counts)))
        g.refresh_from_db()
        assert g.count == counts[-1]
    assert sum(g.count for g in gadgets) == WRITERS * EACH + 1


def test_a_store_loaded_while_events_wait_for_positions_shows_the_log_at_its_position(
    monkeypatch,
):
    from myko_django.log.read import read_snapshot

    g = Gadget.objects.create(label="before")
    # A writer that dies between its commit and its positioning run: its row is committed,
    # its event waits in the pending table.
    monkeypatch.setattr(append, "_position_mine", lambda ids, using: 0)
    Gadget.objects.filter(pk=g.pk).update(label="after")
    monkeypatch.undo()
    snapshot = read_snapshot("Gadget")
    # The store starts where the log is: the pending change arrives as the next event.
    assert [i["label"] for i in snapshot.items] == ["before"]
    assert append.position_stragglers() == 1
    later = read_snapshot("Gadget")
    assert later.position == snapshot.position + 1
    assert [i["label"] for i in later.items] == ["after"]
    assert Event.objects.get(position=later.position).item["label"] == "after"
