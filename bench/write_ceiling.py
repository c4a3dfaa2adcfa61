"""Issue 14: the deployment's write ceiling. Write transactions/s of myko's write path from
32 concurrent writers next to pgbench on the same Postgres, in one run.

pgbench (a C client, so Postgres alone) runs three shapes, with 1 and 32 clients:
  - insert: a one-row INSERT per transaction (what Postgres commits with group commit);
  - counter: the same INSERT plus a row UPDATE and a one-row counter UPDATE held to commit
    (the position scheme before issue 14: every write transaction in the deployment waits
    for the previous one's WAL flush);
  - myko SQL: the statements myko's write path sends per single-event write (log/append.py):
    the row UPDATE and the pending-event INSERT, commit; then a positioning run (one call
    of myko_position_pending()) or a wait for the run in progress.
Then myko itself, in-process, WRITERS writers (PROCESSES processes x threads) for SECONDS:
  - append: a row UPDATE and `append.append` of its SET in one transaction (the log layer's
    write path, without the ORM);
  - RenameTarget: `run_command` of the demo's ordinary command (claim row, ORM update,
    capture, append, stored response).
Last, RenameTarget over WebSocket (JSON) to one daphne worker from 1 and 32 connections.
Python's CPU is the limit of the in-process lines on a 2-core machine shared with Postgres;
the pgbench "myko SQL" line shows what the scheme allows when the client is not.

    .venv/bin/python bench/write_ceiling.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import support  # noqa: E402

DB = "mykobench_ceiling"
WORKLOAD = "write_ceiling"
WRITERS = 32
PROCESSES = 4
TARGETS = 3200  # rows the writers update: writer w owns rows w*100 .. w*100+99
GOAL = 5  # x pgbench's counter line with 32 clients (issue 14)
WS_GOAL = 1000  # commands/s through one worker, 32 connections (issue 14)

PGBENCH_SETUP = """
DROP TABLE IF EXISTS bench_row, bench_counter, bench_item;
CREATE TABLE bench_row (id bigserial PRIMARY KEY, v integer NOT NULL);
CREATE TABLE bench_counter (id integer PRIMARY KEY, last bigint NOT NULL);
INSERT INTO bench_counter VALUES (1, 0);
CREATE TABLE bench_item (id integer PRIMARY KEY, v integer NOT NULL);
INSERT INTO bench_item SELECT g, 0 FROM generate_series(0, 9999) g;
"""

SCRIPTS = {
    "insert": "INSERT INTO bench_row (v) VALUES (1);\n",
    "counter": (
        "\\set i random(0, 9999)\n"
        "BEGIN;\n"
        "UPDATE bench_item SET v = v + 1 WHERE id = :i;\n"
        "INSERT INTO bench_row (v) VALUES (1);\n"
        "UPDATE bench_counter SET last = last + 1 WHERE id = 1;\n"
        "COMMIT;\n"
    ),
}


def _pgbench(url: str, script: str, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-f",
                f.name,
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(seconds),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"tps = ([\d.]+)", out)
    if not found:
        raise RuntimeError(f"pgbench printed no tps:\n{out}")
    return float(found.group(1))


def _myko_sql_script() -> str | None:
    """The statements of one single-event write in myko's scheme, for pgbench (None when
    log/append.py has no pending table: the scheme before issue 14): the row UPDATE and
    the pending INSERT, commit; then the positioning run, one statement in autocommit
    (`append._position_mine`)."""
    from myko_django.log import append

    if getattr(append, "POSITION_SQL", None) is None:
        return None
    return (
        "\\set i random(0, 9999)\n"
        "BEGIN;\n"
        "UPDATE bench_item SET v = v + 1 WHERE id = :i;\n"
        "INSERT INTO myko_pending_event (tx, item_type, item_id, change_type, item, created_at)"
        " VALUES ('bench', 'Bench', :i, 'SET', '{\"id\": 1}', now()) RETURNING id AS mine"
        " \\gset\n"
        "COMMIT;\n"
        f"SELECT COUNT(*) FROM myko_position_pending({append.MOVE_LIMIT},"
        " ARRAY[:mine]::bigint[]);\n"
    )


# ---- myko writers, one process each ----------------------------------------------------


def _writer_process(mode: str, first: int, threads: int, seconds: float) -> None:
    """Run in a child: `threads` writers; print READY, wait for GO, print the counts."""
    support.setup_django(DB)
    from django.db import connection, connections, transaction

    from myko_django.log import append
    from myko_django.log.commands import run_command

    counts = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    go = threading.Event()
    deadline = [0.0]

    def one(w: int) -> None:
        n = 0
        base = (first + w) * 100
        try:
            go.wait()
            while time.perf_counter() < deadline[0]:
                pk = f"t{base + n % 100:06d}"
                name = f"n{n}"
                t = time.perf_counter()
                if mode == "append":
                    with transaction.atomic():
                        with connection.cursor() as cursor:
                            cursor.execute(
                                "UPDATE demo_target SET name = %s WHERE id = %s", [name, pk]
                            )
                        item = {"id": pk, "name": name}
                        append.append(
                            [append.Pending("SET", "Target", pk, item)],
                            tx=uuid.uuid4().hex,
                            source_id=None,
                        )
                else:
                    run_command("RenameTarget", {"id": pk, "name": name}, tx=uuid.uuid4().hex)
                latencies[w].append(time.perf_counter() - t)
                n += 1
        finally:
            connections.close_all()
        counts[w] = n

    workers = [threading.Thread(target=one, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    print("READY", flush=True)
    sys.stdin.readline()
    deadline[0] = time.perf_counter() + seconds
    go.set()
    for t in workers:
        t.join()
    print(json.dumps({"count": sum(counts), "latencies": [x for mine in latencies for x in mine]}))


def _myko(mode: str, writers: int, seconds: float) -> dict[str, Any]:
    processes = min(PROCESSES, writers)
    per = writers // processes
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--writer", mode, str(i * per), str(per), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=support.ROOT,
        )
        for i in range(processes)
    ]
    for c in children:
        line = c.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"writer process failed to start: {line!r}")
    for c in children:
        c.stdin.write("GO\n")
        c.stdin.flush()
    results = [json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in children]
    count = sum(r["count"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "tps": count / seconds,
        "p50_ms": round(support.percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(support.percentile(latencies, 99) * 1000, 1),
    }


async def _websocket(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """RenameTarget over WebSocket (JSON) to one daphne worker, `connections` clients each
    sending its next command when the last one is answered."""
    conns = await support.open_many(url, connections, fmt="json")
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(w: int, conn: support.Conn) -> None:
        n = 0
        while time.perf_counter() < deadline:
            pk = f"t{w * 100 + n % 100:06d}"
            _, elapsed = await conn.command("RenameTarget", {"id": pk, "name": f"w{n}"})
            latencies.append(elapsed)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(w, c) for w, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    return {
        "tps": len(latencies) / elapsed,
        "p50_ms": round(support.percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(support.percentile(latencies, 99) * 1000, 1),
    }


def _websocket_rows(seconds: float, counter32: float) -> list[dict]:
    worker = support.start_worker()
    try:
        rows = []
        for connections in (1, WRITERS):
            r = asyncio.run(_websocket(worker.url, connections, seconds))
            extra: dict[str, Any] = {}
            if connections == WRITERS:
                extra = {
                    "target": f">= {WS_GOAL:,} commands/s, p99 <= 50 ms",
                    "met": r["tps"] >= WS_GOAL and r["p99_ms"] <= 50,
                }
            rows.append(
                support.row(
                    WORKLOAD,
                    f"myko RenameTarget over WebSocket, {connections} connections, 1 worker",
                    round(r["tps"]),
                    "commands/s",
                    **extra,
                    vs_counter32=f"{r['tps'] / counter32:.2f}x",
                    p50_ms=r["p50_ms"],
                    p99_ms=r["p99_ms"],
                )
            )
        return rows
    finally:
        worker.stop()


def _check_log() -> str:
    """The log after the run: gap-free and nothing left unpositioned."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*), COALESCE(MIN(position), 0), COALESCE(MAX(position), 0) "
            "FROM myko_event"
        )
        n, lo, hi = cursor.fetchone()
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'myko_pending_event'"
        )
        pending = 0
        if cursor.fetchone()[0]:
            cursor.execute("SELECT COUNT(*) FROM myko_pending_event")
            pending = cursor.fetchone()[0]
    gap_free = n == hi - lo + 1
    return f"{n} events, positions {lo}..{hi}, gap-free={gap_free}, unpositioned={pending}"


def _fill() -> None:
    """The rows the writers rename, inserted through the ORM (so the log has them)."""
    from django.db import transaction

    from project.demo.models import Scene, Target

    with transaction.atomic():
        Scene.objects.bulk_create([Scene(id="s00", name="scene")])
        Target.objects.bulk_create(
            [Target(**{**support.target(i, 100), "scene_id": "s00"}) for i in range(TARGETS)]
        )


def run(quick: bool = False) -> list[dict]:
    """pgbench's lines, then myko's, against one database; rows with ratios to pgbench."""
    seconds = 3 if quick else 8
    url = support.setup_django(DB, fresh=True)
    _fill()
    durability = support.postgres_settings()
    subprocess.run(["psql", "-q", url, "-c", PGBENCH_SETUP], check=True, capture_output=True)
    rows: list[dict] = []
    peer: dict[tuple[str, int], float] = {}
    scripts = dict(SCRIPTS)
    mine = _myko_sql_script()
    if mine is not None:
        scripts["myko SQL"] = mine
    for name, script in scripts.items():
        for clients in (1, WRITERS):
            tps = _pgbench(url, script, clients, seconds)
            peer[(name, clients)] = tps
            rows.append(
                support.row(WORKLOAD, f"pgbench {name}, {clients} clients", round(tps), "tx/s")
            )
    counter32 = peer[("counter", WRITERS)]
    insert32 = peer[("insert", WRITERS)]
    for mode in ("append", "RenameTarget"):
        for writers in (1, WRITERS):
            r = _myko(mode, writers, seconds)
            extra: dict[str, Any] = {}
            if writers == WRITERS:
                extra = {
                    "target": f">= {GOAL}x pgbench counter (32)",
                    "met": r["tps"] >= GOAL * counter32,
                }
            rows.append(
                support.row(
                    WORKLOAD,
                    f"myko {mode}, {writers} writers in-process",
                    round(r["tps"]),
                    "tx/s",
                    **extra,
                    vs_counter32=f"{r['tps'] / counter32:.2f}x",
                    vs_insert32=f"{r['tps'] / insert32:.2f}x",
                    p50_ms=r["p50_ms"],
                    p99_ms=r["p99_ms"],
                )
            )
    rows += _websocket_rows(seconds, counter32)
    if mine is not None:
        sql32 = peer[("myko SQL", WRITERS)]
        rows[-1]["myko_sql_vs_counter32"] = f"{sql32 / counter32:.2f}x"
    for r in rows:
        r["postgres"] = (
            f"fsync={durability['fsync']} synchronous_commit=" + durability["synchronous_commit"]
        )
    rows[-1]["log"] = _check_log()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per line (smoke run)")
    parser.add_argument("--writer", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        mode, first, threads, seconds = args.writer
        _writer_process(mode, int(first), int(threads), float(seconds))
        return
    support.print_rows(run(quick=args.quick))


if __name__ == "__main__":
    main()
