"""Workload 2 of issue 5: durable events/s through commands into Postgres, and command latency.

Each scenario runs twice: in-process (`run_command` straight on a database connection: the
write path alone) and over WebSocket to a real daphne worker (what a client sees: decoding,
the worker's DB thread pool, read-your-writes catch-up, the response). Writers: one writer
with 1 event per command, one writer with 100 events per command (a `ctx.set` loop and
`ctx.set_many`), and 8 concurrent writers. Commands are the test app's `MakeGadgets` (a
`ctx.set` per label) and `SetGadgets` (`ctx.set_many`). Every command inserts new rows; every
run starts on an empty database of its own (mykobench_write).

    .venv/bin/python bench/write_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import support  # noqa: E402

DB = "mykobench_write"
WORKLOAD = "write"
TARGET_EVENTS = 2000  # issue 5: >= 2,000 durable events/s, one writer, 100 events/command


@dataclass(frozen=True)
class Scenario:
    name: str
    command: str
    writers: int
    per_command: int
    commands: int  # per writer
    tag: str  # keeps ids unique across scenarios, modes and writers
    target: bool = False

    def params(self, prefix: str, i: int) -> dict:
        if self.command == "MakeGadgets":  # Gadget.label holds 10 characters; id "g-<label>"
            return {"labels": [f"{prefix}{i}.{j}" for j in range(self.per_command)]}
        return {
            "items": [{"id": f"{prefix}-{i}-{j}", "label": str(j)} for j in range(self.per_command)]
        }


def scenarios(quick: bool) -> list[Scenario]:
    q = 4 if quick else 1
    return [
        Scenario("1 writer, 1 event/command (ctx.set)", "MakeGadgets", 1, 1, 400 // q, "a"),
        Scenario(
            "1 writer, 100 events/command (ctx.set loop)", "MakeGadgets", 1, 100, 12 // q, "b"
        ),
        Scenario(
            "1 writer, 100 events/command (ctx.set_many)",
            "SetGadgets",
            1,
            100,
            60 // q,
            "c",
            target=True,
        ),
        Scenario("8 writers, 1 event/command (ctx.set)", "MakeGadgets", 8, 1, 100 // q, "d"),
        Scenario(
            "8 writers, 100 events/command (ctx.set_many)", "SetGadgets", 8, 100, 16 // q, "e"
        ),
    ]


def _result(s: Scenario, mode: str, elapsed: float, latencies: list[float], **extra: Any) -> dict:
    events = s.writers * s.commands * s.per_command
    rate = events / elapsed
    target: dict[str, Any] = {}
    if s.target:
        target = {"target": f">= {TARGET_EVENTS:,}", "met": rate >= TARGET_EVENTS}
    return support.row(
        WORKLOAD,
        f"{s.name} [{mode}]",
        round(rate),
        "events/s",
        **target,
        p50_ms=round(support.percentile(latencies, 50) * 1000, 1),
        p99_ms=round(support.percentile(latencies, 99) * 1000, 1),
        commands=len(latencies),
        events=events,
        **extra,
    )


# ---- in-process ----------------------------------------------------------------------------


def _in_process(s: Scenario) -> dict:
    from django.db import connections

    from myko_django.log.commands import run_command

    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(s.writers)

    def writer(w: int) -> None:
        prefix = f"{s.tag}p{w}"
        mine = []
        try:
            barrier.wait()
            for i in range(s.commands):
                t = time.perf_counter()
                run_command(s.command, s.params(prefix, i), tx=uuid.uuid4().hex)
                mine.append(time.perf_counter() - t)
        finally:
            connections.close_all()
        with lock:
            latencies.extend(mine)

    cpu = support.CpuMeter(client=os.getpid())
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(s.writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return _result(s, "in-process", elapsed, latencies, process_cores=cpu.cores()["client"])


# ---- over WebSocket ------------------------------------------------------------------------


async def _over_websocket(s: Scenario, url: str, server_pid: int) -> dict:
    conns = await support.open_many(url, s.writers)
    latencies: list[float] = []

    async def writer(w: int, conn: support.Conn) -> None:
        prefix = f"{s.tag}s{w}"
        for i in range(s.commands):
            _, elapsed = await conn.command(s.command, s.params(prefix, i))
            latencies.append(elapsed)

    cpu = support.CpuMeter(server=server_pid, client=os.getpid())
    started = time.perf_counter()
    await asyncio.gather(*(writer(w, c) for w, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    cores = cpu.cores()
    for c in conns:
        await c.close()
    return _result(
        s,
        "WebSocket",
        elapsed,
        latencies,
        server_cores=cores["server"],
        client_cores=cores["client"],
    )


async def _websocket_all(items: list[Scenario], url: str, pid: int) -> list[dict]:
    warm = await support.Conn.open(url)
    for i in range(5):  # first commands import and connect things
        await warm.command("MakeGadgets", {"labels": [f"zs{i}"]})
    await warm.close()
    return [await _over_websocket(s, url, pid) for s in items]


def run(quick: bool = False) -> list[dict]:
    """All scenarios in-process, then over WebSocket to one daphne worker (with Redis)."""
    support.setup_django(DB, fresh=True)
    from myko_django.log.commands import run_command

    durability = support.postgres_settings()
    for i in range(5):
        run_command("MakeGadgets", {"labels": [f"zp{i}"]}, tx=uuid.uuid4().hex)
    items = scenarios(quick)
    rows = [_in_process(s) for s in items]
    worker = support.start_worker()
    try:
        rows += asyncio.run(_websocket_all(items, worker.url, worker.proc.pid))
    finally:
        worker.stop()
    for r in rows:
        r["postgres"] = (
            f"fsync={durability['fsync']} synchronous_commit=" + durability["synchronous_commit"]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer commands (smoke run)")
    args = parser.parse_args(argv)
    support.print_rows(run(quick=args.quick))


if __name__ == "__main__":
    main()
