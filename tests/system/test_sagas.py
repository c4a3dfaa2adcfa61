"""`manage.py myko_sagas` as a real process on Postgres (and the Redis doorbell): each event's
effects happen exactly once across SIGKILLs, two runners, downtime and replays.

The demo's TargetStats saga counts each Target's SETs, so after any history its `sets`
must equal the Target's SET events in the log, and the log must hold exactly one write of
the saga (tx `saga:TargetStats:<position>`) per Target SET."""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from myko_django.log.append import position_committed
from myko_django.log.capture import write_transaction
from myko_django.log.read import high_water
from myko_django.log.writepath import apply_sets
from myko_django.models import Event, ParkedEvent, SagaState
from myko_django.testing import current_database_url
from project.demo.models import Target, TargetStats
from tests.testapp.models import Gadget, Owner

pytestmark = [pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


class SagaProcess:
    """One `manage.py myko_sagas` process on the test database."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        self.args = args
        self.log = log_dir / f"sagas-{id(self)}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": current_database_url(),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
        }
        self.env.pop("MYKO_TEST_CURE", None)
        self.proc: subprocess.Popen | None = None

    def start(self) -> SagaProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "myko_sagas", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def active(self) -> int:
        """How many times this process (all its starts) took a saga over."""
        return self.output().count("is active in this process")


@pytest.fixture
def sagas(tmp_path):
    """Start runner processes with `sagas(*args)`; all are killed after the test (before
    the test database is flushed)."""
    started: list[SagaProcess] = []

    def start(*args: str) -> SagaProcess:
        runner = SagaProcess(tmp_path, *args).start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.kill()
    for runner in started:
        print(runner.output()[-3000:])
    connection.close()


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> float:
    """Seconds it took for `predicate()` to hold; fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def checkpoint(name: str = "TargetStats") -> int:
    found = SagaState.objects.filter(name=name).values_list("position", flat=True).first()
    return -1 if found is None else found


def caught_up(name: str = "TargetStats", item_type: str = "Target"):
    """The saga's checkpoint is at or past the last event of the type it follows."""
    last = Event.objects.filter(item_type=item_type).order_by("-position").first()
    return lambda: checkpoint(name) >= (last.position if last else 0)


def handled_ranges(saga: str) -> list[tuple[int, int]]:
    """The (first, last) triggering positions of each batch a saga committed, from the tx
    of its writes (`saga:<name>:<first>-<last>`, or `:<position>` for one event)."""
    txs = set(Event.objects.filter(source_id=f"saga:{saga}").values_list("tx", flat=True))
    ranges = []
    for tx in txs:
        first, _, last = tx.rsplit(":", 1)[1].partition("-")
        ranges.append((int(first), int(last or first)))
    return sorted(ranges)


def assert_exactly_once() -> None:
    """TargetStats equals replaying the log, and the saga's batches cover every Target SET
    once: none skipped, none in two batches."""
    position_committed()  # the saga's last writes may be committed, not yet positioned
    sets = collections.Counter(
        Event.objects.filter(item_type="Target", change_type="SET").values_list(
            "item_id", flat=True
        )
    )
    assert dict(TargetStats.objects.values_list("id", "sets")) == dict(sets)
    ranges = handled_ranges("TargetStats")
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert first > last, f"batches overlap: {ranges}"
    triggers = Event.objects.filter(item_type="Target", change_type="SET").values_list(
        "position", flat=True
    )
    covering = collections.Counter(sum(1 for a, b in ranges if a <= p <= b) for p in triggers)
    assert set(covering) == {1}, f"positions handled 0 or 2+ times: {covering}"


def test_sigkill_at_random_points_of_a_500_event_burst(sagas):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    runner = sagas("TargetStats", "--start", "0")
    targets = [Target.objects.create(name=f"t{i}") for i in range(50)]
    wait_until(lambda: runner.active() >= 1, what="the runner")
    behind_at_kill: list[int] = []
    done = threading.Event()

    def killer() -> None:
        for _ in range(4):
            wait_until(lambda: runner.active() >= 1 + len(behind_at_kill), what="restart")
            time.sleep(rng.uniform(0.05, 0.4))
            runner.kill()
            behind_at_kill.append(high_water() - checkpoint())
            connection.close()
            runner.start()
        done.set()

    thread = threading.Thread(target=killer)
    thread.start()
    for n in range(450):  # 500 SETs with the 50 creations, one transaction each
        target = rng.choice(targets)
        target.name = f"{target.pk[:8]}-{n}"
        target.save()
        time.sleep(0.01)  # the burst spans the kills (each restart takes a Django start-up)
    thread.join(timeout=60)
    assert done.is_set()
    wait_until(caught_up(), timeout=30, what="catching up")
    print("positions behind at each SIGKILL:", behind_at_kill)
    assert any(b > 0 for b in behind_at_kill), "no kill landed while events were waiting"
    assert Event.objects.filter(item_type="Target").count() == 500
    assert_exactly_once()


def test_two_runners_one_active_and_failover_on_sigkill(sagas):
    first = sagas("TargetStats", "--start", "0")
    wait_until(lambda: first.active() == 1, what="the first runner")
    second = sagas("TargetStats", "--start", "0")
    for i in range(20):
        Target.objects.create(name=f"t{i}")
    wait_until(caught_up(), what="the active runner")
    time.sleep(1.0)  # the standby tried the lock meanwhile (every 0.5 s)
    assert (first.active(), second.active()) == (1, 0)

    first.kill()
    killed = time.monotonic()
    target = Target.objects.create(name="after the kill")
    wait_until(lambda: TargetStats.objects.filter(pk=target.pk).exists(), what="failover")
    failover = time.monotonic() - killed
    print(f"failover: {failover:.2f}s from SIGKILL to the standby's commit")
    assert second.active() == 1
    assert failover < 5
    assert_exactly_once()


def test_a_poison_event_parks_later_events_go_on_and_the_admin_retries_it(sagas, monkeypatch):
    runner = sagas("GadgetPoison", "--start", "0")
    Gadget.objects.create(id="p1", label="poison")
    for i in range(5):
        Gadget.objects.create(id=f"ok{i}", label=f"fine{i}")
    wait_until(lambda: Owner.objects.filter(pk="seen-ok4").exists(), what="later events")
    parked = ParkedEvent.objects.get()
    assert (parked.item_id, parked.status, parked.attempts) == ("p1", "parked", 3)
    assert "poison gadget p1" in parked.error
    assert runner.proc.poll() is None  # the saga went on

    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    monkeypatch.setenv("MYKO_TEST_CURE", "1")  # the fix is deployed where the admin runs
    url = reverse("admin:myko_django_parkedevent_changelist")
    response = client.post(
        url, {"action": "retry", "_selected_action": [str(parked.pk)]}, follow=True
    )
    assert b"handled" in response.content
    parked.refresh_from_db()
    assert parked.status == "retried"
    assert Owner.objects.get(pk="seen-p1").name == "poison"


def test_a_saga_triggered_by_another_sagas_write_and_replay_from_zero(sagas, tmp_path):
    runner = sagas("TargetStats", "StatsMirror", "--start", "0")
    targets = [Target.objects.create(name=f"t{i}") for i in range(10)]
    for i, target in enumerate(targets):
        for n in range(i):
            target.name = f"t{i}-{n}"
            target.save()
    mirrors = {f"stats-{t.pk}": str(i + 1) for i, t in enumerate(targets)}
    wait_until(
        lambda: dict(Owner.objects.filter(pk__in=mirrors).values_list("id", "name")) == mirrors,
        what="the chained saga",
    )
    assert_exactly_once()
    derived = dict(TargetStats.objects.values_list("id", "sets"))
    names = dict(TargetStats.objects.values_list("id", "last_name"))
    assert runner.stop() == 0  # SIGTERM: stops cleanly

    TargetStats.objects.all().delete()
    call_command("myko_sagas", "TargetStats", "--set-checkpoint", "0")
    assert checkpoint() == 0
    replay = SagaProcess(tmp_path, "TargetStats", "--once").start()
    assert replay.proc.wait(timeout=60) == 0, replay.output()
    assert dict(TargetStats.objects.values_list("id", "sets")) == derived
    assert dict(TargetStats.objects.values_list("id", "last_name")) == names


def test_catch_up_after_10000_events_written_while_down(sagas):
    for chunk in range(9):  # 9,000 new Targets, then 1,000 of them set again: 10,000 SETs
        with write_transaction():
            Target.objects.bulk_create(
                [Target(id=f"c{chunk}-{i:04d}", name="first") for i in range(1000)]
            )
    with write_transaction():
        again = [
            {"id": f"c0-{i:04d}", "name": "again", "category": None, "sceneId": None}
            for i in range(1000)
        ]
        apply_sets("Target", again)
    assert Event.objects.filter(item_type="Target").count() == 10_000
    started = time.monotonic()
    sagas("TargetStats", "--start", "0")
    wait_until(caught_up(), timeout=90, what="catch-up")
    total = time.monotonic() - started
    writes = Event.objects.filter(source_id="saga:TargetStats").order_by("position")
    span = (writes.last().created_at - writes.first().created_at).total_seconds()
    print(
        f"catch-up: 10,000 events handled in {span:.2f}s ({10_000 / span:.0f} events/s), "
        f"{total:.2f}s from the process's start"
    )
    assert_exactly_once()
    assert TargetStats.objects.count() == 9000
    assert set(
        TargetStats.objects.filter(pk__startswith="c0-").values_list("sets", "last_name")
    ) == {(2, "again")}
