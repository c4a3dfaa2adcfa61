"""Workload 3 of issue 5: time to the last byte of the sequence-0 response of `GetAllTargets`.

10,000 and 100,000 Targets, JSON and MessagePack, against a real daphne worker (16 MiB
message and frame limits, Redis doorbell) on real Postgres, read by a bare `websockets`
client. For each size and format:

- cold: a fresh daphne process whose Target store is not loaded; the clock runs from
  sending `ws:m:query` to having the whole response (the load reads the table and the
  log's high-water mark in one REPEATABLE READ transaction, then encodes and sends);
- warm: the store is loaded and nobody else watches the query (each repetition cancels
  the previous one), so the worker matches every item and encodes the result afresh;
- warm, shared: an identical subscription is live, so the encoded items are reused.

Each size has its own database (mykobench_snap, mykobench_snap_100k), filled through the
ORM (so the event log holds every Target) and kept between runs.

    .venv/bin/python bench/snapshot.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import support  # noqa: E402

WORKLOAD = "snapshot"
SIZES = {10_000: "mykobench_snap", 100_000: "mykobench_snap_100k"}
TARGET_WARM_MS = 200  # issue 5, 10,000 Targets
TARGET_COLD_MS = 500


async def _snapshot(conn: support.Conn, tx: str | None = None) -> tuple[float, int, str, int]:
    """Subscribe to GetAllTargets; (seconds to the whole response, bytes, tx, item count)."""
    started = time.perf_counter()
    tx = await conn.subscribe("GetAllTargets", "Target", tx=tx)
    frame = await conn.recv_raw()
    elapsed = time.perf_counter() - started
    message = conn.decode(frame)
    data = message["data"]
    if message["event"] != "ws:m:query-response" or data["sequence"] != 0 or data["tx"] != tx:
        raise RuntimeError(f"unexpected reply {str(message)[:200]}")
    return elapsed, len(frame), tx, len(data["upserts"])


async def _measure(url: str, n: int, fmt: str, repeats: int) -> dict[str, Any]:
    conn = await support.Conn.open(url, fmt)
    await conn.send("ws:m:ping", {"id": "p", "timestamp": 0})
    await conn.recv_raw()
    cold, size, tx, count = await _snapshot(conn)
    if count != n:
        raise RuntimeError(f"sequence 0 held {count} items, expected {n}")
    warm = []
    for _ in range(repeats):
        await conn.send("ws:m:query-cancel", {"tx": tx})
        elapsed, _, tx, _ = await _snapshot(conn)
        warm.append(elapsed)
    shared = []
    for _ in range(repeats):  # `tx` stays live: these share its encoded items
        elapsed, _, extra, _ = await _snapshot(conn)
        shared.append(elapsed)
        await conn.send("ws:m:query-cancel", {"tx": extra})
    await conn.close()
    return {"cold": cold, "warm": warm, "shared": shared, "bytes": size}


def _rows(n: int, fmt: str, m: dict[str, Any], cores: dict[str, float]) -> list[dict]:
    label = f"GetAllTargets, {n:,} Targets, {fmt}"
    small = n == 10_000
    cold_ms = round(m["cold"] * 1000, 1)
    warm_ms = round(statistics.median(m["warm"]) * 1000, 1)
    shared_ms = round(statistics.median(m["shared"]) * 1000, 1)
    cold_t = (
        {"target": f"<= {TARGET_COLD_MS} ms", "met": cold_ms <= TARGET_COLD_MS} if small else {}
    )
    warm_t = (
        {"target": f"<= {TARGET_WARM_MS} ms", "met": warm_ms <= TARGET_WARM_MS} if small else {}
    )
    return [
        support.row(WORKLOAD, f"{label}: cold", cold_ms, "ms", **cold_t, **cores),
        support.row(
            WORKLOAD,
            f"{label}: warm",
            warm_ms,
            "ms",
            **warm_t,
            max_ms=round(max(m["warm"]) * 1000, 1),
            runs=len(m["warm"]),
        ),
        support.row(
            WORKLOAD,
            f"{label}: warm, identical subscription live",
            shared_ms,
            "ms",
            max_ms=round(max(m["shared"]) * 1000, 1),
            runs=len(m["shared"]),
        ),
        support.row(WORKLOAD, f"{label}: bytes on the wire", m["bytes"], "bytes"),
    ]


def run(quick: bool = False) -> list[dict]:
    """Both sizes (10,000 only with `quick`), both formats, cold and warm."""
    sizes = [10_000] if quick else list(SIZES)
    repeats = 3 if quick else 5
    support.setup_django(SIZES[10_000])
    rows: list[dict] = []
    for n in sizes:
        db = SIZES[n]
        support.ensure_targets(db, n)
        for fmt in ("json", "msgpack"):
            worker = support.start_worker(extra_env={"DATABASE_URL": f"{support.PG}/{db}"})
            try:
                cpu = support.CpuMeter(server=worker.proc.pid, client=os.getpid())
                m = asyncio.run(_measure(worker.url, n, fmt, repeats))
                cores = {f"{k}_cores": v for k, v in cpu.cores().items()}
                cores["server_rss_mb"] = round(support.rss(worker.proc.pid) / 2**20, 1)
            finally:
                worker.stop()
            rows += _rows(n, fmt, m, cores)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 Targets only")
    args = parser.parse_args(argv)
    support.print_rows(run(quick=args.quick))


if __name__ == "__main__":
    main()
