"""Shared plumbing of the write, snapshot and memory benchmarks: a private database, real
daphne workers, a bare WebSocket client, result rows, CPU and RSS accounting.

Every benchmark process is its own Django process on `tests.settings` (which has the demo's
`Target` and the test app's `Gadget` with its write commands) against a database of its
own, so benchmarks never touch the test suite's data or each other's.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import psutil

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "bench" / "results" / "logs"
PG = os.environ.get("MYKO_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("MYKO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MAX_MESSAGE = 16 * 1024 * 1024

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- Django and the database ------------------------------------------------------------


# The project's production settings (DEBUG off), as far as a benchmark on loopback can have
# them: a key of its own (DEBUG off has no fallback key) and plain HTTP (no HTTPS redirect).
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "bench-only-" + "k" * 40,
    "DJANGO_SECURE_SSL_REDIRECT": "0",
}


def setup_django(db_name: str, *, fresh: bool = False) -> str:
    """Point this process at its own Postgres database (created if missing; dropped first if
    `fresh`), then start Django on tests.settings without DEBUG (which would keep every
    query's SQL), and migrate."""
    url = f"{PG}/{db_name}"
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ.update(PRODUCTION_ENV)
    os.environ.pop("REDIS_URL", None)  # in-process writers publish nowhere but this process
    _create_database(db_name, fresh=fresh)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return url


def _create_database(name: str, *, fresh: bool) -> None:
    """Dropping the whole database is the honest reset: the log and the item tables go
    together (truncating one alone would break the log being the truth)."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def postgres_settings() -> dict[str, str]:
    """The settings that decide what "durable" means here."""
    from django.db import connection

    out = {}
    with connection.cursor() as cursor:
        for name in ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"):
            cursor.execute(f"SHOW {name}")
            out[name] = cursor.fetchone()[0]
    return out


# ---- Targets ----------------------------------------------------------------------------

SCENES = 20


def target(i: int, categories: int) -> dict[str, Any]:
    """Target number i: id t000042, category c<i mod categories>, one of SCENES scenes."""
    return {
        "id": f"t{i:06d}",
        "name": f"target {i}",
        "category": f"c{i % categories}",
        "scene_id": f"s{i % SCENES:02d}",
    }


def populate(db: str, n: int, categories: int) -> None:
    """Make `db` hold exactly Targets 0..n-1 (and their events), reusing a database that
    already does; otherwise start it afresh and insert through the ORM (so the log has them)."""
    setup_django(db)
    from django.db import connections, transaction

    from myko_django.models import Event
    from project.demo.models import Scene, Target

    last = target(n - 1, categories)
    if (
        Target.objects.count() == n
        and Target.objects.filter(pk=last["id"], category=last["category"]).exists()
        and Event.objects.filter(item_type="Target").count() == n
    ):
        return
    connections.close_all()
    setup_django(db, fresh=True)
    started = time.perf_counter()
    with transaction.atomic():
        Scene.objects.bulk_create([Scene(id=f"s{i:02d}", name=f"scene {i}") for i in range(SCENES)])
    chunk = 5000
    for start in range(0, n, chunk):
        with transaction.atomic():
            Target.objects.bulk_create(
                [Target(**target(i, categories)) for i in range(start, min(n, start + chunk))]
            )
    print(f"filled {db} with {n:,} Targets in {time.perf_counter() - started:.1f}s", flush=True)


def ensure_targets(db: str, n: int, categories: int = 100) -> None:
    """`populate` in a child process: a Django process has one DATABASE_URL for life."""
    import subprocess

    subprocess.run(
        [sys.executable, __file__, "--populate", db, str(n), str(categories)],
        check=True,
        cwd=ROOT,
    )


# ---- daphne -----------------------------------------------------------------------------


def start_worker(*, redis: bool = True, extra_env: dict[str, str] | None = None):
    """A fresh daphne process (myko_django.testing.DaphneServer: 16 MiB message and frame
    limits) serving tests.settings on this process's database, joined to Redis like a
    production worker."""
    from myko_django.testing import DaphneServer

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = {**PRODUCTION_ENV, **(extra_env or {})}
    return DaphneServer(
        LOG_DIR,
        settings="tests.settings",
        redis_url=REDIS_URL if redis else None,
        extra_env=env,
    ).start(timeout=60)


# ---- a bare client ----------------------------------------------------------------------


class Conn:
    """One WebSocket speaking the myko protocol with nothing in between, so timings are the
    server's plus the socket's (the full Python client keeps state per message)."""

    def __init__(self, ws: Any, fmt: str) -> None:
        self.ws = ws
        self.fmt = fmt

    @classmethod
    async def open(cls, url: str, fmt: str = "msgpack") -> Conn:
        from websockets.asyncio.client import connect

        ws = await connect(
            url, max_size=MAX_MESSAGE, compression=None, open_timeout=60, ping_interval=None
        )
        conn = cls(ws, fmt)
        if fmt == "msgpack":
            await ws.send("myko:switch-to-msgpack")
            await ws.recv()  # the protocol-switch reply
        return conn

    def encode(self, message: dict) -> str | bytes:
        if self.fmt == "msgpack":
            return msgpack.packb(message, use_bin_type=True)
        import json

        return json.dumps(message, separators=(",", ":"))

    def decode(self, frame: str | bytes) -> dict:
        if isinstance(frame, bytes) and self.fmt == "msgpack":
            return msgpack.unpackb(frame, raw=False)
        import json

        return json.loads(frame)

    async def send(self, event: str, data: Any) -> None:
        await self.ws.send(self.encode({"event": event, "data": data}))

    async def recv_raw(self) -> bytes | str:
        """The next whole message; text frames stay undecoded bytes (time to last byte)."""
        return await self.ws.recv(decode=False)

    async def command(self, command_id: str, params: dict) -> tuple[dict, float]:
        """Run a command; returns (response message, seconds until it came back)."""
        tx = uuid.uuid4().hex
        started = time.perf_counter()
        await self.send("ws:m:command", {"command": {**params, "tx": tx}, "commandId": command_id})
        while True:
            message = self.decode(await self.ws.recv())
            data = message.get("data") or {}
            if data.get("tx") == tx:
                elapsed = time.perf_counter() - started
                if message["event"] != "ws:m:command-response":
                    raise RuntimeError(f"{command_id} failed: {data}")
                return message, elapsed

    async def subscribe(
        self, query_id: str, item_type: str, params: dict | None = None, tx: str | None = None
    ) -> str:
        tx = tx or uuid.uuid4().hex
        query = {**(params or {}), "tx": tx}
        await self.send(
            "ws:m:query", {"query": query, "queryId": query_id, "queryItemType": item_type}
        )
        return tx

    async def close(self) -> None:
        await self.ws.close()


async def open_many(url: str, n: int, fmt: str = "msgpack", parallel: int = 50) -> list[Conn]:
    """Open `n` connections, `parallel` handshakes at a time."""
    sem = asyncio.Semaphore(parallel)

    async def one() -> Conn:
        async with sem:
            return await Conn.open(url, fmt)

    return list(await asyncio.gather(*(one() for _ in range(n))))


# ---- numbers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def row(
    workload: str,
    metric: str,
    value: float,
    unit: str,
    *,
    target: str | None = None,
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result row as run_all.py prints and stores it; `target` is the issue's wording
    (e.g. "<= 200 ms"), `met` whether the figure meets it."""
    out: dict[str, Any] = {"workload": workload, "metric": metric, "value": value, "unit": unit}
    if target is not None:
        out["target"] = target
        out["met"] = met
    out.update(extra)
    return out


CORE_KEYS = ("workload", "metric", "value", "unit", "target", "met")


def notes(r: dict[str, Any]) -> str:
    """The extra figures of a row (latencies, cores, bytes) as one short text."""
    return ", ".join(f"{k}={v}" for k, v in r.items() if k not in CORE_KEYS)


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_rows(rows: Iterable[dict[str, Any]]) -> None:
    """A plain table for standalone runs (run_all.py prints the combined one)."""
    for r in rows:
        target = ""
        if r.get("target"):
            target = f"  [target {r['target']}: {'met' if r['met'] else 'MISSED'}]"
        print(
            f"{r['workload']:<9} {r['metric']:<56} {fmt_value(r['value']):>12} {r['unit']:<9}"
            f"{target}  {notes(r)}"
        )


class CpuMeter:
    """CPU seconds used by some processes over an interval, as "cores used" (CPU s / wall s)."""

    def __init__(self, **procs: psutil.Process | int) -> None:
        self.procs = {
            name: p if isinstance(p, psutil.Process) else psutil.Process(p)
            for name, p in procs.items()
        }
        self.start()

    def _times(self) -> dict[str, float]:
        out = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = 0.0
        return out

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = self._times()

    def cores(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        now = self._times()
        return {name: round((now[name] - self.c0[name]) / wall, 2) for name in now}


def rss(pid: int) -> int:
    """Resident set size in bytes."""
    return psutil.Process(pid).memory_info().rss


async def settled_rss(pid: int, *, wait: float = 1.0, samples: int = 5) -> int:
    """RSS once the process has gone quiet: wait, then the median of a few samples."""
    await asyncio.sleep(wait)
    values = []
    for _ in range(samples):
        values.append(rss(pid))
        await asyncio.sleep(0.1)
    return sorted(values)[len(values) // 2]


def machine() -> dict[str, Any]:
    """Cores, CPU model and RAM of this machine."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--populate"]:
        populate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
