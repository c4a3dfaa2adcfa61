"""Row visibility at the socket (issue 9): 1,000 subscribers spread over 100 users, each
user seeing only their own rows, against the same 1,000 subscribers without row filters.

bench/fanout.py's machinery (one real daphne worker on Postgres and Redis, subscribers in
separate processes, 32 writer connections, the writer's wall-clock stamp in each item, an
exact account of what reached whom); what differs is who subscribes to what. 100 users,
each with one Note (`project/demo/models.py`: a user sees their own notes only) and one
Target of category u<user>; subscriber k belongs to user k mod 100 (10 connections per
user), each connection authenticated by its user's bearer token (`issue_token`) in the
handshake's `Authorization` header. Modes, one after the other on the same server:

- own rows: every subscriber on `GetAllNotes`; the user's row filter (`ownerId`) leaves
  one Note, so a write reaches its owner's 10 connections (100 live results);
- same rows by query: `GetTargetsByQuery {category: u<user>}`, no row filter: the same
  deliveries (one item per user, 10 subscribers per write) through a query filter;
- all rows: `GetAllTargets`, every subscriber sees all 100 Targets: no filter at all,
  every write reaches all 1,000 subscribers (the fan-out table's "identical" case).

The writer changes the 100 items of the mode (Notes or Targets) round-robin, so each
write goes to the next user, at W writes/s (quick: W = 10 and 100; full: also the ramp of
bench/fanout.py, to the highest sustainable W). Ratios compare own rows with the two
baselines at the same W. `foreign` counts items a subscriber received that its user may
not see (in a snapshot or an update): it must stay 0.

    .venv/bin/python bench/visibility_fanout.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# A database (and Redis prefix) of its own: this can run while bench/fanout.py runs.
os.environ.setdefault("MYKO_BENCH_FANOUT_DB", "mykobench_visibility")

from bench import fanout  # noqa: E402

WORKLOAD = "visibility fan-out"
USERS = 100
SUBSCRIBERS = 1000
OWN = "own rows"
BY_QUERY = "same rows by query"
ALL = "all rows"
MODES = [OWN, BY_QUERY, ALL]
# The figures of a step that the ratio rows show side by side (medians over the rounds).
MEDIANS = ("p99_ms", "delivered_updates_s", "server_cpu_pct", "load_avg_1m_before", "other_cores")


def _seed() -> list[str]:
    """USERS users, each with Note n<u> and Target t<u> (category u<u>); their tokens."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from myko_django.auth import issue_token
    from project.demo.models import Note, Target

    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [user_model(username=f"bench{u}", password=make_password(None)) for u in range(USERS)]
    )
    Note.objects.bulk_create(
        [Note(id=f"n{u}", owner=user, text="0:0") for u, user in enumerate(users)]
    )
    Target.objects.bulk_create(
        [Target(id=f"t{u}", name="0:0", category=f"u{u}") for u in range(USERS)]
    )
    return [issue_token(user) for user in users]


def _modes(tokens: list[str]) -> dict[str, fanout.CustomMode]:
    """The three modes as fanout.Session's custom modes: subscriber k is user k mod USERS."""
    notes = [f"n{u}" for u in range(USERS)]
    targets = [f"t{u}" for u in range(USERS)]

    def subs(s: int, query_id: str, item_type: str, query, items, field: str = "name"):
        return [
            (
                k,
                "",
                items(k % USERS),
                {
                    "token": tokens[k % USERS],
                    "queryId": query_id,
                    "queryItemType": item_type,
                    "query": query(k % USERS),
                    "field": field,
                },
            )
            for k in range(s)
        ]

    return {
        OWN: lambda s: (
            subs(s, "GetAllNotes", "Note", lambda u: {}, lambda u: [notes[u]], "text"),
            notes,
            {"note": True},
        ),
        BY_QUERY: lambda s: (
            subs(
                s,
                "GetTargetsByQuery",
                "Target",
                lambda u: {"category": f"u{u}"},
                lambda u: [targets[u]],
            ),
            targets,
            {},
        ),
        ALL: lambda s: (
            subs(s, "GetAllTargets", "Target", lambda u: {}, lambda u: targets),
            targets,
            {},
        ),
    }


def plan(quick: bool) -> fanout.Plan:
    return fanout.Plan(
        quick=quick,
        sizes=[SUBSCRIBERS],
        rates=[10, 100],
        duration=2.0 if quick else 10.0,
        ramp_sizes=[] if quick else [SUBSCRIBERS],
        ramp_rates=[] if quick else [20, 40, 80, 160, 320, 640],
        ramp_duration=6.0,
        processes=4,
        servers=["myko"],
        modes=list(MODES),
        ramp_modes=list(MODES),
        interleave=True,
        rounds=1 if quick else 3,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2) if a / b >= 0.1 else round(a / b, 4)


def comparisons(rows: list[dict]) -> list[dict]:
    """Own rows / each baseline at the same W (p99, delivered, server CPU: medians over the
    rounds), and of the highest sustainable rates; one check that nothing was lost or seen
    by the wrong user."""
    steps: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        if "p99_ms" in r and not r["metric"].startswith("highest") and not r.get("ramp"):
            steps[r["mode"], r["rate"]].append(r)
    best = {r["mode"]: r for r in rows if r["metric"].startswith("highest")}
    ratio = fanout.ratio
    out: list[dict] = []

    def add(metric: str, value: Any, unit: str = "x", rate: int | None = None, **extra):
        row = {"workload": WORKLOAD, "server": "myko", "subscribers": SUBSCRIBERS}
        out.append({**row, "rate": rate, "metric": metric, "value": value, "unit": unit, **extra})

    def median(mode: str, rate: int, key: str) -> float:
        return round(statistics.median(r[key] for r in steps[mode, rate]), 2)

    for rate in sorted({rate for mode, rate in steps if mode == OWN}):
        for base in (BY_QUERY, ALL):
            if (base, rate) not in steps:
                continue
            figures = {key: {m: median(m, rate, key) for m in (OWN, base)} for key in MEDIANS}
            p99, delivered, cpu = (
                figures[k] for k in ("p99_ms", "delivered_updates_s", "server_cpu_pct")
            )
            add(
                f"W={rate}: p99 latency, {OWN} / {base}",
                ratio(p99[OWN], p99[base]),
                rate=rate,
                delivered_updates_s_ratio=ratio(delivered[OWN], delivered[base]),
                server_cpu_ratio=ratio(cpu[OWN], cpu[base]),
                rounds=len(steps[OWN, rate]),
                **figures,
                p99_ms_rounds={m: [r["p99_ms"] for r in steps[m, rate]] for m in (OWN, base)},
                lost={m: sum(r["lost"] for r in steps[m, rate]) for m in (OWN, base)},
            )
    for base in (BY_QUERY, ALL):
        if OWN in best and base in best:
            r, o = best[OWN], best[base]
            add(
                f"highest sustainable W, {OWN} / {base}",
                ratio(r["rate"], o["rate"]),
                rates={OWN: r["rate"], base: o["rate"]},
                updates_s={OWN: r["value"], base: o["value"]},
            )
    measured = [r for rs in steps.values() for r in rs] + [r for r in rows if r.get("ramp")]
    if measured:
        lost = sum(r["lost"] for r in measured)
        foreign = sum(r["foreign"] + r["foreign_in_snapshots"] for r in measured)
        what = "every step: 0 lost, no subscriber got a row its user may not see"
        met = lost == 0 and foreign == 0
        add(what, lost + foreign, "items", target=what, met=met, lost=lost, foreign=foreign)
    return out


def run(quick: bool = False, log: Any = print) -> list[dict]:
    """The three modes on one server, then the ratios; rows for run_all's table and JSON."""
    fanout.ensure_requirements()
    tokens = fanout.setup_database(0, seed=_seed)
    info = fanout.machine()
    the_plan = plan(quick)
    log(
        f"visibility fan-out: {info['cores']} cores ({info['cpu_model']}); {SUBSCRIBERS} "
        f"subscribers, {USERS} users, {the_plan.processes} client processes; "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rows = fanout.run_kind(
        "myko", the_plan, None, log, workload=WORKLOAD, custom_modes=_modes(tokens)
    )
    for r in rows:
        if r["metric"].startswith("highest"):
            r["metric"] += f", {r['mode']}"
    rows += comparisons(rows)
    for r in rows:
        r.setdefault("machine", f"{info['cores']} cores, {info['cpu_model']}")
    return rows


def print_table(rows: list[dict]) -> None:
    for r in rows:
        if "p99_ms" in r and "mode" in r and not r["metric"].startswith("highest"):
            print(f"load {r['load_avg_1m_before']:<5} " + fanout.short(r))
    print()
    for r in rows:
        if r["metric"].startswith("highest") and "mode" in r:
            print(f"{r['mode']}: " + fanout.short(r))
        elif "mode" not in r:
            status = "" if "met" not in r else ("MET    " if r["met"] else "MISSED ")
            extra = {k: v for k, v in r.items() if isinstance(v, dict) or k.endswith("ratio")}
            print(f"{status}{r['metric']}: {r['value']} {r['unit']}  {extra}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="W = 10 and 100, 2 s steps")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    fanout.report(run(args.quick), started, args.json, print_table)


if __name__ == "__main__":
    main()
