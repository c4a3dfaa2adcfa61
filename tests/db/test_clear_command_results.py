"""manage.py myko_clear_command_results: stored command responses past COMMAND_RESULT_TTL are
deleted in batches, off the request path, as Django's clearsessions does."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.connection import ConnectionDoesNotExist

from myko_django.log.commands import run_command
from myko_django.models import CommandResult

pytestmark = pytest.mark.django_db

TTL = 3600


@pytest.fixture(autouse=True)
def ttl(settings):
    settings.MYKO = {"COMMAND_RESULT_TTL": TTL}


def stored(age_seconds: float, n: int = 1, prefix: str = "") -> None:
    created_at = timezone.now() - dt.timedelta(seconds=age_seconds)
    CommandResult.objects.bulk_create(
        CommandResult(
            command_id="Cmd",
            tx=f"{prefix}{age_seconds}-{i}",
            user_key="",
            response={"i": i},
            created_at=created_at,
        )
        for i in range(n)
    )


def clear(*args: str) -> str:
    out = io.StringIO()
    call_command("myko_clear_command_results", *args, stdout=out)
    return out.getvalue()


def test_deletes_only_results_older_than_the_ttl():
    stored(TTL + 60, n=3)
    stored(TTL - 60, n=2)
    assert clear() == f"Deleted 3 command result(s) older than {TTL} s.\n"
    assert CommandResult.objects.count() == 2
    assert clear() == f"Deleted 0 command result(s) older than {TTL} s.\n"


def test_dry_run_only_counts():
    stored(2 * TTL, n=4)
    stored(10)
    assert clear("--dry-run") == f"Would delete 4 command result(s) older than {TTL} s.\n"
    assert CommandResult.objects.count() == 5


def test_deletes_in_batches():
    stored(2 * TTL, n=5)
    stored(0, n=1)
    with CaptureQueriesContext(connection) as queries:
        out = clear("--batch-size", "2")
    assert out == f"Deleted 5 command result(s) older than {TTL} s.\n"
    deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1 rows, one statement (and transaction) each
    assert CommandResult.objects.count() == 1


def test_the_ttl_setting_decides(settings):
    stored(120, n=2)
    settings.MYKO = {"COMMAND_RESULT_TTL": 60}
    assert clear() == "Deleted 2 command result(s) older than 60 s.\n"


def test_database_option_is_used():
    stored(2 * TTL)
    assert clear("--database", "default").startswith("Deleted 1 ")
    with pytest.raises(ConnectionDoesNotExist):
        clear("--database", "elsewhere")


def test_a_bad_batch_size_is_refused():
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        clear("--batch-size", "0")


@pytest.mark.django_db(transaction=True)
def test_a_cleared_result_lets_the_same_tx_run_again():
    first = run_command("MakeGadgets", {"labels": ["a"]}, tx="t1")
    assert run_command("MakeGadgets", {"labels": ["a"]}, tx="t1").replayed
    CommandResult.objects.update(created_at=timezone.now() - dt.timedelta(seconds=2 * TTL))
    assert clear().startswith("Deleted 1 ")
    again = run_command("MakeGadgets", {"labels": ["a"]}, tx="t1")
    assert (first.replayed, again.replayed, again.response) == (False, False, {"made": 1})
