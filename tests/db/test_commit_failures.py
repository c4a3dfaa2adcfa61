"""Transactions the database refuses late: at COMMIT (a deferred foreign key) or for their
timing (a deadlock). A deadlock runs again (log/retry.py); whatever still fails, every
event of the batch is told so, none is lost (issue 13, item 4)."""

import threading

import pytest
from django.db import OperationalError, connection, connections

from myko_django.log import commands, retry, writepath
from myko_django.log.commands import run_command
from myko_django.log.writepath import apply_events
from myko_django.models import CommandResult, Event
from tests.testapp.models import Gadget, Owner

pytestmark = [pytest.mark.django_db(transaction=True)]

POSTGRES = connection.vendor == "postgresql"


def gadget(id_: str, label: str, **fields) -> dict:
    return {
        "changeType": "SET",
        "itemType": "Gadget",
        "item": {"id": id_, "label": label, **fields},
    }


@pytest.fixture
def owner_vanishes_on_insert():
    """A trigger that deletes a new gadget's owner behind Django's back: the foreign key,
    DEFERRABLE INITIALLY DEFERRED as Django creates it, then fails at COMMIT only."""
    with connection.cursor() as cursor:
        if POSTGRES:
            cursor.execute(
                "CREATE FUNCTION myko_test_drop_owner() RETURNS trigger AS $$ BEGIN "
                "DELETE FROM testapp_owner WHERE id = NEW.owner_id; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER myko_test_drop_owner AFTER INSERT ON testapp_gadget "
                "FOR EACH ROW EXECUTE FUNCTION myko_test_drop_owner()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER myko_test_drop_owner AFTER INSERT ON testapp_gadget BEGIN "
                "DELETE FROM testapp_owner WHERE id = NEW.owner_id; END"
            )
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER myko_test_drop_owner ON testapp_gadget"
            if POSTGRES
            else "DROP TRIGGER myko_test_drop_owner"
        )
        if POSTGRES:
            cursor.execute("DROP FUNCTION myko_test_drop_owner()")


def test_a_batch_refused_at_commit_rejects_every_event(owner_vanishes_on_insert, published):
    owner = Owner.objects.create(name="o")
    Gadget.objects.create(id="g-old", label="old")
    events_before, published_before = Event.objects.count(), len(published)
    batch = [
        gadget("g-old", "changed", tx="t1"),
        gadget("g-new", "new", ownerId=str(owner.pk), tx="t2"),
        gadget("g-bad", 5, tx="t3"),  # rejected on its own first
    ]
    position, rejected = apply_events(batch, user=None)
    assert position == 0
    assert [index for index, _, _ in rejected] == [0, 1, 2]
    assert [event for _, event, _ in rejected] == batch
    assert "Gadget.label must be a string" in rejected[2][2]
    for _, _, message in rejected[:2]:
        assert message.startswith("the database refused the batch: ")
        assert "foreign key" in message.lower()
        assert "\n" not in message
    # Nothing of it committed.
    assert Gadget.objects.get(id="g-old").label == "old"
    assert not Gadget.objects.filter(id="g-new").exists()
    assert Owner.objects.filter(pk=owner.pk).exists()
    assert Event.objects.count() == events_before
    assert len(published) == published_before


def test_a_command_refused_at_commit_is_a_command_error(owner_vanishes_on_insert):
    owner = Owner.objects.create(name="o")
    with pytest.raises(commands.CommandError, match="the database refused the change"):
        run_command(
            "SetGadgets", {"items": [{"id": "g1", "label": "a", "ownerId": str(owner.pk)}]}, tx="c1"
        )
    assert not Gadget.objects.exists()
    assert not CommandResult.objects.exists()


class _OppositeOrder:
    """Wraps `apply` so two threads each lock their first row, meet, then reach for the
    other's: a deadlock the database breaks by failing one of them."""

    def __init__(self, real):
        self.real = real
        self.barrier = threading.Barrier(2, timeout=10)
        self.local = threading.local()
        self.calls = 0

    def __call__(self, *args, **kwargs):
        result = self.real(*args, **kwargs)
        self.calls += 1
        if not getattr(self.local, "met", False):
            self.local.met = True
            self.barrier.wait()
        return result


def _in_threads(*jobs):
    results: list = [None] * len(jobs)

    def run(index, job):
        try:
            results[index] = job()
        except BaseException as exc:  # reported by the assertion below
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.skipif(not POSTGRES, reason="row locks (SELECT FOR UPDATE): Postgres")
def test_deadlocked_event_batches_both_commit_after_a_retry(monkeypatch):
    Gadget.objects.create(id="a", label="a0")
    Gadget.objects.create(id="b", label="b0")
    wrapper = _OppositeOrder(writepath.apply)
    monkeypatch.setattr(writepath, "apply", wrapper)
    results = _in_threads(
        lambda: apply_events([gadget("a", "a1"), gadget("b", "b1")], user=None, tx="x"),
        lambda: apply_events([gadget("b", "b2"), gadget("a", "a2")], user=None, tx="y"),
    )
    for result in results:
        assert not isinstance(result, BaseException), result
        position, rejected = result
        assert rejected == [] and position > 0
    assert wrapper.calls > 4  # one batch ran again
    labels = {g.id: g.label for g in Gadget.objects.all()}
    assert labels in ({"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"})
    assert sorted(Event.objects.filter(tx__in=["x", "y"]).values_list("tx", flat=True)) == [
        "x",
        "x",
        "y",
        "y",
    ]


@pytest.mark.skipif(not POSTGRES, reason="row locks (SELECT FOR UPDATE): Postgres")
def test_deadlocked_commands_both_commit_after_a_retry(monkeypatch):
    Gadget.objects.create(id="a", label="a0")
    Gadget.objects.create(id="b", label="b0")
    wrapper = _OppositeOrder(commands.apply)
    monkeypatch.setattr(commands, "apply", wrapper)
    results = _in_threads(
        lambda: run_command("MakeGadgets", {"labels": ["a", "b"]}, tx="x").response,
        lambda: run_command("MakeGadgets", {"labels": ["b", "a"]}, tx="y").response,
    )
    assert results == [{"made": 2}, {"made": 2}]
    assert wrapper.calls > 4
    assert CommandResult.objects.count() == 2


def test_a_deadlock_that_outlasts_the_retries_rejects_every_event(monkeypatch):
    Gadget.objects.create(id="a", label="a0")
    attempts = []

    def deadlocked(*args, **kwargs):
        attempts.append(1)
        raise _deadlock()

    monkeypatch.setattr(writepath, "apply", deadlocked)
    monkeypatch.setattr(retry.time, "sleep", lambda s: None)
    batch = [gadget("a", "a1", tx="t1"), gadget("b", "b1", tx="t2")]
    position, rejected = apply_events(batch, user=None)
    assert len(attempts) == retry.ATTEMPTS
    assert position == 0
    assert [(i, e) for i, e, _ in rejected] == [(0, batch[0]), (1, batch[1])]
    assert {m for _, _, m in rejected} == {"the database refused the batch: deadlock detected"}
    assert Gadget.objects.get(id="a").label == "a0"


def _deadlock() -> OperationalError:
    """A deadlock as Django raises it: psycopg's error as the cause (SQLSTATE 40P01)."""
    cause = Exception("deadlock detected\nDETAIL: Process 1 waits for ShareLock")
    cause.sqlstate = "40P01"
    exc = OperationalError("deadlock detected\nDETAIL: Process 1 waits for ShareLock")
    exc.__cause__ = cause
    return exc


def test_retryable_reads_the_sqlstate_through_the_cause():
    assert retry.retryable(_deadlock())
    serialization = Exception("could not serialize access")
    serialization.sqlstate = "40001"
    assert not retry.retryable(RuntimeError("wrapped"))
    wrapped = OperationalError("x")
    wrapped.__cause__ = serialization
    assert retry.retryable(wrapped)
    assert retry.retryable(OperationalError("database is locked"))
    unique = Exception("duplicate key")
    unique.sqlstate = "23505"
    assert not retry.retryable(unique)


def test_retry_runs_once_inside_a_callers_transaction(monkeypatch):
    from django.db import transaction

    calls = []

    def fails():
        calls.append(1)
        raise _deadlock()

    with transaction.atomic(), pytest.raises(OperationalError):
        retry.run(fails)
    assert calls == [1]
