"""Sagas: latency from a triggering commit to the saga's commit, failover, catch-up.

`manage.py myko_sagas` runs as a process of its own on a database of its own
(mykobench_sagas), with the demo's TargetStats saga (batched) and the test app's
GadgetPoison saga (one event per handler call):

- latency: single Target SETs, 20 ms apart, from this process (which rings the doorbell
  through Redis); latency = the saga's write's `created_at` minus the trigger's, both
  taken at their appends, just before each commits. With the doorbell, and again with
  polling alone (no Redis: the runner looks every POLL_INTERVAL, 1 s), the peer;
- failover: two runners; SIGKILL the active one, write one Target at once, time until the
  saga's write for it is in the log (the standby tries the lock every 0.5 s);
- catch-up: 10,000 Target SETs written while no runner ran, then the runner's rate (from
  its first to its last write), batched; and 2,000 Gadget SETs through the unbatched saga.

    .venv/bin/python bench/saga_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import support  # noqa: E402

DB = "mykobench_sagas"
WORKLOAD = "sagas"
ROOT = Path(__file__).resolve().parent.parent


def setup() -> str:
    """Like support.setup_django, but this process rings the doorbell through Redis (the
    runner hears writes as workers do)."""
    url = f"{support.PG}/{DB}"
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ.update(support.PRODUCTION_ENV)
    os.environ["REDIS_URL"] = support.REDIS_URL
    support._create_database(DB, fresh=True)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return url


class Runner:
    def __init__(self, *args: str, redis: bool = True) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        if not redis:
            env.pop("REDIS_URL", None)
        support.LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = support.LOG_DIR / f"sagas-{os.getpid()}-{id(self)}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "myko_sagas", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def active(self) -> bool:
        return "is active in this process" in self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def _wait(predicate, timeout: float = 60.0, step: float = 0.005) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("the saga did not keep up")
        time.sleep(step)
    return time.monotonic() - started


def _reset() -> None:
    """An empty log and saga state for the next scenario (the whole database: the log and
    the tables go together)."""
    from django.core.management import call_command

    call_command("flush", interactive=False, verbosity=0)


def _caught_up(saga: str, item_type: str):
    from myko_django.models import Event, SagaState

    def check() -> bool:
        last = Event.objects.filter(item_type=item_type).order_by("-position").first()
        state = SagaState.objects.filter(name=saga).first()
        return state is not None and last is not None and state.position >= last.position

    return check


def _latencies(saga: str, item_type: str = "Target") -> list[float]:
    """Per triggering event, in log order: the created_at of the saga's write that handled it
    (the tx names the triggering position, or the first and last of a batch) minus its own."""
    from myko_django.models import Event

    triggers = dict(Event.objects.filter(item_type=item_type).values_list("position", "created_at"))
    handled: dict[int, float] = {}
    writes = Event.objects.filter(source_id=f"saga:{saga}").order_by("position")
    for tx, at in writes.values_list("tx", "created_at"):
        first, _, last = tx.rsplit(":", 1)[1].partition("-")
        for p in range(int(first), int(last or first) + 1):
            if p in triggers and p not in handled:
                handled[p] = (at - triggers[p]).total_seconds()
    return [handled[p] for p in sorted(handled)]


def latency(n: int, *, redis: bool) -> dict:
    from project.demo.models import Target

    _reset()
    runner = Runner("TargetStats", "--start", "0", redis=redis)
    try:
        _wait(runner.active, 60)
        targets = [Target.objects.create(name=f"t{i}") for i in range(10)]
        _wait(_caught_up("TargetStats", "Target"))
        before = len(_latencies("TargetStats"))  # the catch-up of the 10 creations
        for i in range(n):
            t = targets[i % len(targets)]
            t.name = f"n{i}"
            t.save()
            time.sleep(0.02)
        _wait(_caught_up("TargetStats", "Target"), 30)
    finally:
        runner.stop()
    values = _latencies("TargetStats")[before:]
    how = "doorbell (Redis)" if redis else "polling only (POLL_INTERVAL 1 s)"
    p50, p99 = support.percentile(values, 50), support.percentile(values, 99)
    return {"how": how, "events": len(values), "p50": p50, "p99": p99}


def failover(rounds: int) -> list[float]:
    from myko_django.models import Event
    from project.demo.models import Target

    _reset()
    times = []
    active = Runner("TargetStats", "--start", "0")
    _wait(active.active, 60)
    standby = Runner("TargetStats", "--start", "0")
    time.sleep(3)  # its Django start-up; it then tries the lock every 0.5 s
    try:
        for _ in range(rounds):
            Target.objects.create(name="warm")
            _wait(_caught_up("TargetStats", "Target"))
            active.kill()
            killed = time.monotonic()
            t = Target.objects.create(name="after")
            position = Event.objects.filter(item_id=t.pk).get().position
            _wait(
                lambda position=position: (
                    Event.objects.filter(
                        source_id="saga:TargetStats", tx__endswith=f"-{position}"
                    ).exists()
                    or Event.objects.filter(tx=f"saga:TargetStats:{position}").exists()
                ),
                30,
            )
            times.append(time.monotonic() - killed)
            active, standby = standby, Runner("TargetStats", "--start", "0")
            time.sleep(3)
    finally:
        active.kill()
        standby.kill()
    return times


def catch_up(n: int, *, batched: bool) -> dict:
    """n events written while no runner ran; the runner's rate from its first write to its
    last, and the rate they were written at (the writer's, for comparison)."""
    from myko_django.log.capture import write_transaction
    from myko_django.models import Event
    from project.demo.models import Target
    from tests.testapp.models import Gadget

    _reset()
    model, saga, item_type = (
        (Target, "TargetStats", "Target") if batched else (Gadget, "GadgetPoison", "Gadget")
    )
    started = time.monotonic()
    for chunk in range(0, n, 1000):
        with write_transaction():
            if batched:
                rows = [Target(id=f"c{chunk + i}", name="x") for i in range(min(1000, n - chunk))]
            else:
                rows = [Gadget(id=f"g{chunk + i}", label="x") for i in range(min(1000, n - chunk))]
            model.objects.bulk_create(rows)
    written = time.monotonic() - started
    runner = Runner(saga, "--start", "0")
    try:
        _wait(_caught_up(saga, item_type), 300, 0.05)
    finally:
        runner.stop()
    writes = Event.objects.filter(source_id=f"saga:{saga}").order_by("position")
    span = (writes.last().created_at - writes.first().created_at).total_seconds()
    return {"events": n, "seconds": span, "rate": n / span, "write_rate": n / written}


def run(quick: bool = False) -> list[dict]:
    setup()
    rows = []
    for redis in (True, False):
        r = latency(50 if quick else 300, redis=redis)
        for p in ("p50", "p99"):
            rows.append(
                support.row(
                    WORKLOAD,
                    f"trigger commit -> saga commit {p}, {r['how']}",
                    round(r[p] * 1000, 1),
                    "ms",
                    events=r["events"],
                )
            )
    times = failover(1 if quick else 3)
    rows.append(
        support.row(
            WORKLOAD,
            "failover: SIGKILL of the active runner -> standby's commit",
            round(max(times), 2),
            "s (worst)",
            each=",".join(f"{t:.2f}" for t in times),
            standby_retry="0.5 s",
        )
    )
    for batched, n in ((True, 2000 if quick else 10_000), (False, 500 if quick else 2000)):
        r = catch_up(n, batched=batched)
        rows.append(
            support.row(
                WORKLOAD,
                "catch-up after downtime, "
                + (
                    "batched (TargetStats, 500)" if batched else "one event per call (GadgetPoison)"
                ),
                round(r["rate"]),
                "events/s",
                events=r["events"],
                seconds=round(r["seconds"], 2),
                written_at=f"{r['write_rate']:.0f}/s",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (smoke run)")
    args = parser.parse_args(argv)
    support.print_rows(run(quick=args.quick))


if __name__ == "__main__":
    main()
