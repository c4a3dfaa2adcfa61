"""Commit order = position order, across processes: a reader
tailing the log never sees position N+1 and later finds N committed."""

import os
import subprocess
import sys

import pytest

from myko_django.models import Event
from myko_django.testing import current_database_url

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_concurrent_writers_with_stalls_commit_in_position_order():
    env_url = current_database_url()

    def run(*args):
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.log_workers", *args],
            env={**os.environ, "DATABASE_URL": env_url},
            stdout=subprocess.PIPE,
            text=True,
        )

    # Readers tail the log until they have read all 240 positions (60 s at most: a loaded
    # machine writes slower, and reading to the end is what the test is about).
    readers = [run("read", "60", "240") for _ in range(2)]
    writers = [run("write", "60", str(seed)) for seed in range(4)]
    for w in writers:
        assert w.wait(timeout=60) == 0
    outputs = [r.communicate(timeout=60)[0] for r in readers]
    for out in outputs:
        assert "problems=0" in out, out
    positions = list(Event.objects.values_list("position", flat=True))
    assert positions == list(range(1, 241))
    assert all("last=240" in out for out in outputs), outputs
