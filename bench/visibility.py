"""Row visibility in the live engine (issue 9): what it costs that 1,000 subscribers spread
over 100 users see only the rows their user may see.

Measures the engine alone (`myko_django.live.engine.Engine`, in this process): no daphne,
no sockets, no encoding, no database. A store of 10,000 Targets (engine-level schema: id,
name, category of 100, ownerId of 100 users; each (category, owner) pair holds one Target)
and 1,000 query subscribers, subscriber k belonging to user k mod 100, so each user has 10
identical subscriptions. Cases (the query; the user's row filter):

- own rows: everyone `GetTargetsByQuery {category: "c0"}`; user u sees `{ownerId: "u<u>"}`
  (an equality the engine indexes by): 100 live results instead of 1;
- team rows: the same query; user u sees the rows of the 10 users of their team
  (`{ownerId: {kind: "in", value: [...]}}`, no index hint), so the 10 users of a team see
  the same rows and share: 10 live results;
- all rows, own key: the same query; each user's filter admits every row but has a key of
  its own (`{ownerId: in [every user, "x<u>"]}`): the worst case, 100 live results and
  every event reaching all 1,000 subscribers, as without visibility;
- per user: user u's subscribers `{category: "c<u>"}` (each user their own category), own
  rows: 100 live results either way.

Each case runs twice on the same events in one process: without visibility (the query's
filter alone), and with the user's row filter combined with it by `filters.both`, as the
server does per request; rows give the figure with visibility, the one without and the
ratio. Events are single-event batches on the watched Targets: 70% renames (the item stays
where it is), 20% a new owner (with visibility: a delete for the old owner's subscribers
and an upsert for the new owner's), 10% a move out of the category (the next event on it
moves it back). Per event: `apply` time (the median over rounds, both engines alternating
rounds so machine noise hits both), updates produced (one per subscription message), item
lists to encode (distinct SharedItems with items: what the fan-out encodes once per
format) and predicate evaluations. Memory per subscription is tracemalloc's growth over
subscribing all 1,000 (the store and its index already built): live results (their ids and
kept filters), index slots and subscriptions, not sockets or connections. Subscribe time
includes compiling the query's and the user's filters, as each request does.

Not measured here: WebSocket sends, encoding, the hub, authentication (the per-connection
resolution of the user's filter happens once per request, outside the engine). What the
fan-out table's delivered-message figures would be follows from "updates per event".

    .venv/bin/python bench/visibility.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import support  # noqa: E402
from myko_django.live.committed import CommittedEvent  # noqa: E402
from myko_django.live.engine import Engine  # noqa: E402
from myko_django.live.filters import ItemSchema, both, compile_filter  # noqa: E402
from myko_django.live.updates import QueryUpdate  # noqa: E402

WORKLOAD = "visibility"
T = "Target"
SCHEMA = ItemSchema(T, {"id": "id", "name": "str", "category": "str", "ownerId": "fk"})
ITEMS = 10_000
CATEGORIES = 100
USERS = 100
SUBSCRIBERS = 1_000
OP = "GetTargetsByQuery"


def target(i: int) -> dict[str, Any]:
    """Target i: category c<i mod 100>, owner u<(i // 100) mod 100>."""
    return {
        "id": f"t{i:06d}",
        "name": f"target {i}",
        "category": f"c{i % CATEGORIES}",
        "ownerId": f"u{(i // CATEGORIES) % USERS}",
    }


TEAM = 10  # users per team in "team rows"


def _team(u: int) -> dict[str, Any]:
    first = u - u % TEAM
    return {"ownerId": {"kind": "in", "value": [f"u{v}" for v in range(first, first + TEAM)]}}


def _all_rows(u: int) -> dict[str, Any]:
    return {"ownerId": {"kind": "in", "value": [f"u{v}" for v in range(USERS)] + [f"x{u}"]}}


CASES: dict[str, tuple[Callable[[int], str], Callable[[int], dict[str, Any]]]] = {
    # name: (category of user u's query, user u's row filter)
    "own rows": (lambda u: "c0", lambda u: {"ownerId": f"u{u}"}),
    "team rows": (lambda u: "c0", _team),
    "all rows, own key": (lambda u: "c0", _all_rows),
    "per user": (lambda u: f"c{u}", lambda u: {"ownerId": f"u{u}"}),
}


def _events(case: str, n: int, seed: int) -> list[CommittedEvent]:
    """n single-item SET events on the Targets the case's queries watch."""
    rng = random.Random(seed)
    watched = sorted({CASES[case][0](u) for u in range(USERS)})
    state = {t["id"]: t for t in map(target, range(ITEMS)) if t["category"] in watched}
    home = {i: t["category"] for i, t in state.items()}
    ids = sorted(state)
    out = []
    for pos in range(1, n + 1):
        i = rng.choice(ids)
        item = dict(state[i])
        r = rng.random()
        if item["category"] != home[i]:
            item["category"] = home[i]  # moved out earlier: back in
        elif r < 0.7:
            item["name"] = f"target {i} #{pos}"
        elif r < 0.9:
            item["ownerId"] = f"u{rng.randrange(USERS)}"
        else:
            item["category"] = "elsewhere"
        state[i] = item
        out.append(CommittedEvent(pos, T, i, "SET", item))
    return out


def _engine(store: list[dict]) -> Engine:
    e = Engine({T: SCHEMA})
    e.load_store(T, store, 0)
    # The store index on `category` is built by the first query of that shape: build it
    # now, so memory per subscription does not count it.
    e.subscribe_query("warm", "t", T, compile_filter(SCHEMA, {"category": "x"}, op_name=OP), None)
    e.cancel("warm", "t")
    return e


def _subscribe(e: Engine, case: str, visible: bool) -> None:
    """SUBSCRIBERS query subscriptions, each compiling its filters as a request would."""
    category, row_filter = CASES[case]
    for k in range(SUBSCRIBERS):
        u = k % USERS
        flt = compile_filter(SCHEMA, {"category": category(u)}, op_name=OP)
        if visible:
            flt = both(flt, compile_filter(SCHEMA, row_filter(u), op_name="Target visibility"))
        e.subscribe_query(f"s{k}", "t", T, flt, None)


def _measure_case(case: str, events: int, rounds: int) -> dict[str, dict[str, float]]:
    store = [target(i) for i in range(ITEMS)]
    engines: dict[str, Engine] = {}
    out: dict[str, dict[str, float]] = {}
    for mode in ("plain", "visible"):
        e = engines[mode] = _engine(store)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            started = time.perf_counter()
            _subscribe(e, case, mode == "visible")
            subscribe_s = time.perf_counter() - started
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        out[mode] = {
            "bytes_per_sub": grown / SUBSCRIBERS,
            "live_results": e.stats()["live_results"],
            "subscribe_us": subscribe_s / SUBSCRIBERS * 1e6,
        }
    stream = _events(case, events, seed=9)
    chunk = max(1, len(stream) // rounds)
    per_round: dict[str, list[float]] = {m: [] for m in engines}
    counts = {m: {"updates": 0, "encodings": 0, "evals": 0} for m in engines}
    gc.disable()
    try:
        for start in range(0, chunk * rounds, chunk):
            batch = stream[start : start + chunk]
            for mode, e in engines.items():
                evals = e.predicate_evaluations
                c = counts[mode]
                elapsed = 0
                for ev in batch:
                    t0 = time.perf_counter_ns()
                    updates = e.apply([ev])
                    elapsed += time.perf_counter_ns() - t0
                    c["updates"] += len(updates)
                    c["encodings"] += len(
                        {id(u.upserts) for u in updates if isinstance(u, QueryUpdate) and u.upserts}
                    )
                c["evals"] += e.predicate_evaluations - evals
                per_round[mode].append(elapsed / len(batch) / 1000)
    finally:
        gc.enable()
    n = chunk * rounds
    for mode in engines:
        out[mode]["apply_us"] = statistics.median(per_round[mode])
        out[mode]["apply_us_rounds"] = per_round[mode]
        out[mode]["updates"] = counts[mode]["updates"] / n
        out[mode]["encodings"] = counts[mode]["encodings"] / n
        out[mode]["evals"] = counts[mode]["evals"] / n
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _rows(case: str, m: dict[str, dict[str, Any]], events: int) -> list[dict]:
    """One case's rows: the figure with visibility, without, and their ratio."""
    vis, plain = m["visible"], m["plain"]
    who = f"{case}, {SUBSCRIBERS:,} subs / {USERS} users"

    def row(metric: str, key: str, unit: str, digits: int, **extra: Any) -> dict:
        return support.row(
            WORKLOAD,
            f"{who}: {metric}",
            round(vis[key], digits),
            unit,
            without_visibility=round(plain[key], digits),
            ratio=_ratio(vis[key], plain[key]),
            **extra,
        )

    return [
        row(
            "apply per event",
            "apply_us",
            "µs",
            1,
            events=events,
            rounds_us=[round(x, 1) for x in vis["apply_us_rounds"]],
            rounds_us_without=[round(x, 1) for x in plain["apply_us_rounds"]],
        ),
        row(
            "updates per event",
            "updates",
            "updates",
            2,
            item_lists_to_encode=round(vis["encodings"], 2),
            item_lists_without=round(plain["encodings"], 2),
            predicate_evals=round(vis["evals"], 2),
            predicate_evals_without=round(plain["evals"], 2),
        ),
        row("live results", "live_results", "results", 0),
        row("memory per subscription", "bytes_per_sub", "bytes", 0),
        row("subscribe", "subscribe_us", "µs", 1),
    ]


def run(quick: bool = False) -> list[dict]:
    """Both cases, each without and with visibility on the same events."""
    events, rounds = (2_000, 5) if quick else (20_000, 10)
    rows = []
    for case in CASES:
        rows += _rows(case, _measure_case(case, events, rounds), events)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events instead of 20,000")
    args = parser.parse_args(argv)
    support.print_rows(run(quick=args.quick))


if __name__ == "__main__":
    main()
