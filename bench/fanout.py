"""Fan-out benchmark of issue 5: workloads 1 (fan-out latency), 5 (the DCRF peer),
6 (the bare in-process ceiling) and 7 (two myko workers through Redis).

S subscribers (one WebSocket each, spread over several client processes) hold a live
filter on Target's category: all the same ("identical": every change reaches all S) or
each its own ("distinct": each change reaches exactly one). A writer changes matching
Targets at W writes/s: it stamps `name = "<seq>:<time.time_ns()>"` just before sending
each write, and latency is the subscriber's receive time minus that stamp (one machine,
one clock). Every step ends with an exact account per subscriber and item: delivered,
coalesced (a later whole item arrived instead, which myko may do under load), lost,
duplicated, reordered; server CPU and RSS come from psutil on the daphne processes.

- myko: `GetTargetsByQuery {category}` on /myko; writes are the demo's ordinary command
  RenameTarget (a Target QuerySet.update in one myko command, as a user's command would
  be) sent to the worker over WebSocket.
- dcrf: djangochannelsrestframework's model_observer on Target grouped by category,
  channels-redis' RedisChannelLayer as the layer (bench/peer/dcrf.py); the same BenchStamp
  command on the same server process, whose post_save the observer sees.
- ceiling: a bare ASGI app that sends one pre-encoded frame per trigger to every socket of
  the process (bench/peer/ceiling.py); the writer's trigger carries the stamped item.
- myko x2: two daphne workers through Redis; subscribers alternate between them, the
  writer talks to the first.

    .venv/bin/python bench/fanout.py [--quick] [--json out.json] [--profile [cprofile]]

Counting, per step: `lost` for myko is a subscriber left without an item's last state
(it may skip intermediate states that a later whole item replaced: `coalesced`); the peer
and the ceiling send one message per change, so for them every missing message is lost.
`msgs/s` are WebSocket messages received per second, `upd/s` item changes received (a myko
message carries every change of its batch); a step is sustainable with 0 lost, no errors,
duplicates or reordering, p99 <= 1 s and the writer on schedule. The ramp raises W until a
step is not sustainable. Writes go through 32 writer connections (myko runs a connection's
commands one at a time), each item always through the same one.

Everything shares one 2-core machine: daphne, Postgres, Redis, the client processes and
the writer. The output says how many cores each side used (CPU seconds / wall seconds).
bench/visibility_fanout.py runs the same machinery with users, tokens and row visibility.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# MYKO_BENCH_FANOUT_DB: another database (and Redis prefix) for a second run at once.
DB_NAME = os.environ.get("MYKO_BENCH_FANOUT_DB", "mykobench_fanout")
PG = os.environ.get("MYKO_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DATABASE_URL = f"{PG}/{DB_NAME}"
BENCH_SECRET_KEY = "bench-only-" + "k" * 40  # DEBUG off has no fallback key
REDIS_URL = os.environ.get("MYKO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LOG_DIR = BENCH / "results" / "logs"
PROFILE_DIR = BENCH / "results" / "profiles"
MAX_MESSAGE = str(16 * 1024 * 1024)
SETTINGS = "bench.peer.settings"

HOT = 100  # Targets every identical subscription matches (category "hot")
# myko runs one connection's commands one at a time (docs/protocol.md, "Commands"), so
# W writes/s come from this many writer connections: with 8, at 80 writes/s the writer's
# own queues were the bottleneck (p99 1.8 s), not the fan-out. Each item always goes
# through one of them.
WRITER_SOCKETS = int(os.environ.get("BENCH_WRITER_SOCKETS", "32"))
P99_SUSTAINABLE_MS = 1000.0
TARGET_P99_MS = 250.0

WORKLOADS = {
    "myko": "1 fan-out",
    "dcrf": "5 peer (DCRF)",
    "ceiling": "6 ceiling",
    "myko x2": "7 fan-out, 2 workers",
}


# ---- set-up --------------------------------------------------------------------------------


def ensure_requirements() -> None:
    """Install bench/requirements.txt into this interpreter if something is missing."""
    try:
        import djangochannelsrestframework  # noqa: F401
        import psutil  # noqa: F401
        import rest_framework  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements.txt")],
            check=True,
        )


def setup_database(distinct: int, seed: Callable[[], Any] | None = None) -> Any:
    """A fresh database of our own, migrated, with HOT hot Targets and `distinct` Targets of
    categories c0..c{distinct-1}, or what `seed()` writes instead (its result is returned);
    this process becomes a Django process on it."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    os.environ.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        DJANGO_SETTINGS_MODULE=SETTINGS,
        DJANGO_DEBUG="0",  # production settings, on plain HTTP (project/settings.py)
        DJANGO_SECRET_KEY=BENCH_SECRET_KEY,
        DJANGO_SECURE_SSL_REDIRECT="0",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from project.demo.models import Target

    seeded = None
    if seed is not None:
        seeded = seed()
    else:
        rows = [Target(id=f"h{j}", name="0:0", category="hot") for j in range(HOT)]
        rows += [Target(id=f"d{i}", name="0:0", category=f"c{i}") for i in range(distinct)]
        Target.objects.bulk_create(rows, batch_size=1000)
    from django.db import connections

    connections.close_all()
    return seeded


def machine() -> dict[str, Any]:
    from bench.support import machine as describe

    return describe()


# ---- servers -------------------------------------------------------------------------------


def free_port() -> int:
    from myko_django.testing import free_port as pick

    return pick()


class Server:
    """One or more daphne processes serving one ASGI app of bench/peer on our database."""

    def __init__(self, name: str, app: str, workers: int, profile: str | None) -> None:
        self.name = name
        self.app = app
        self.profile = profile
        self.ports = [free_port() for _ in range(workers)]
        self.procs: list[subprocess.Popen] = []
        self.spies: list[subprocess.Popen] = []
        self.profiles: list[Path] = []

    def start(self) -> Server:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": BENCH_SECRET_KEY,
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "MYKO_BENCH_LAYER_PREFIX": DB_NAME,
        }
        for n, port in enumerate(self.ports):
            cmd = [sys.executable]
            if self.profile == "cprofile":
                out = PROFILE_DIR / f"fanout-{_slug(self.name)}-w{n}.prof"
                PROFILE_DIR.mkdir(parents=True, exist_ok=True)
                cmd += ["-m", "cProfile", "-o", str(out)]
                self.profiles.append(out)
            cmd += [
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--websocket-max-message-size",
                MAX_MESSAGE,
                "--websocket-max-frame-size",
                MAX_MESSAGE,
                self.app,
            ]
            with open(LOG_DIR / f"fanout-{_slug(self.name)}-{port}.log", "ab") as log:
                self.procs.append(
                    subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                )
        for port, proc in zip(self.ports, self.procs, strict=True):
            _wait_http(port, proc)
        if self.profile == "py-spy":
            self._spy()
        return self

    def _spy(self) -> None:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        for n, proc in enumerate(self.procs):
            out = PROFILE_DIR / f"fanout-{_slug(self.name)}-w{n}.txt"
            self.profiles.append(out)
            self.spies.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(proc.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def urls(self, path: str) -> list[str]:
        return [f"ws://127.0.0.1:{port}/{path}" for port in self.ports]

    def stop(self) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if self.profile == "cprofile" else signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in self.profiles:
            if out.exists():
                summary = summarize_profile(out)
                out.with_suffix(".summary.txt").write_text(summary)
                print(f"    profile: {out} (summary: {out.with_suffix('.summary.txt')})")


def _slug(name: str) -> str:
    return name.replace(" ", "")


def _wait_http(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2)
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"daphne on port {port} did not start (see {LOG_DIR})") from None
            time.sleep(0.1)


def summarize_profile(path: Path, top: int = 30) -> str:
    """The hottest functions of a py-spy raw (collapsed) or cProfile file, as text."""
    if path.suffix == ".prof":
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        return out.getvalue()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


# ---- client processes ------------------------------------------------------------------------


class Clients:
    """P forked client processes (bench/fanout_client.py), driven over pipes."""

    def __init__(self, processes: int) -> None:
        from fanout_client import client_main

        ctx = multiprocessing.get_context("fork")
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def call(self, command: str, per_child: list[dict] | None = None, **args: Any) -> list:
        """Send one command to every child (with its own args if given) and gather replies."""
        loop = asyncio.get_running_loop()
        for n, pipe in enumerate(self.pipes):
            pipe.send((command, per_child[n] if per_child else args))
        replies = await asyncio.gather(
            *(loop.run_in_executor(None, pipe.recv) for pipe in self.pipes)
        )
        errors = [r for status, r in replies if status != "ok"]
        if errors:
            raise RuntimeError(f"client process failed: {errors[0]}")
        return [r for _, r in replies]

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", {}))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


# ---- CPU and memory ------------------------------------------------------------------------


class Usage:
    """CPU seconds of groups of processes (and the whole machine) over an interval."""

    def __init__(self, **groups: list[int]) -> None:
        import psutil

        self.groups = {k: [psutil.Process(p) for p in pids] for k, pids in groups.items()}
        self.t0 = time.perf_counter()
        self.c0 = self._cpu()
        self.m0 = psutil.cpu_times()

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, procs in self.groups.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
                except Exception:  # noqa: BLE001 - a process that died counts nothing
                    pass
            out[name] = total
        return out

    def cores(self) -> dict[str, float]:
        """Cores used per group (CPU s / wall s) and `machine`: busy cores of the box."""
        import psutil

        wall = time.perf_counter() - self.t0
        now = self._cpu()
        out = {k: round((now[k] - self.c0[k]) / wall, 2) for k in now}
        m1 = psutil.cpu_times()
        busy = sum(getattr(m1, f) - getattr(self.m0, f) for f in ("user", "system", "nice"))
        busy += sum(getattr(m1, f, 0) - getattr(self.m0, f, 0) for f in ("irq", "softirq", "steal"))
        out["machine"] = round(busy / wall, 2)
        return out

    def rss_mb(self, group: str) -> float:
        total = 0
        for p in self.groups[group]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001
                pass
        return round(total / 2**20, 1)


# ---- one benchmark session: a server, its subscribers, the writer ------------------------------


@dataclass
class Plan:
    quick: bool
    sizes: list[int]
    rates: list[int]
    duration: float
    ramp_sizes: list[int]
    ramp_rates: list[int]
    ramp_duration: float
    processes: int
    fmt: str = "json"
    big: bool = False
    servers: list[str] = field(default_factory=lambda: list(WORKLOADS))
    modes: list[str] = field(default_factory=lambda: ["identical", "distinct"])
    ramp_modes: list[str] = field(default_factory=lambda: ["identical"])
    interleave: bool = False  # see _schedule
    rounds: int = 1  # with interleave: how many times every mode runs each W

    @classmethod
    def make(cls, quick: bool, big: bool = False) -> Plan:
        if quick:
            return cls(
                quick=True,
                sizes=[100],
                rates=[10, 100],
                duration=2.0,
                ramp_sizes=[100],
                ramp_rates=[50, 200, 800],
                ramp_duration=1.5,
                processes=2,
            )
        return cls(
            quick=False,
            sizes=[100, 1000] + ([5000] if big else []),
            rates=[10, 100],
            duration=10.0,
            ramp_sizes=[1000],
            ramp_rates=[1, 2, 5, 10, 20, 40, 80, 160, 320, 640],
            ramp_duration=6.0,
            processes=4,
            big=big,
        )


# A mode of another benchmark (bench/visibility_fanout.py): S -> the subscribers as
# fanout_client's do_open takes them, the items the writer changes, BenchStamp's other
# parameters.
CustomMode = Callable[[int], tuple[list[tuple], list[str], dict[str, Any]]]


class Session:
    """One server kind: its daphne process(es), P client processes and the writer."""

    seq = 0  # global write counter: every write of the whole run has its own seq

    def __init__(
        self,
        kind: str,
        plan: Plan,
        profile: str | None,
        workload: str | None = None,
        custom_modes: dict[str, CustomMode] | None = None,
    ) -> None:
        self.kind = kind  # "myko", "dcrf", "ceiling", "myko x2"
        self.workload = workload or WORKLOADS[kind]  # the rows' "workload"
        self.custom_modes = custom_modes or {}
        self.plan = plan
        app = (
            "bench.peer.asgi_dcrf:application" if kind == "dcrf" else "bench.peer.asgi:application"
        )
        self.server = Server(kind, app, 2 if kind == "myko x2" else 1, profile)
        self.clients: Clients | None = None
        self.writers: list[Any] = []
        self.subscribers = 0
        self.mode = ""
        self.items: list[str] = []
        self.write_params: dict[str, Any] = {}  # BenchStamp's other parameters
        self.snapshot_foreign = 0
        self.load_before = 0.0

    @property
    def protocol(self) -> str:
        return {"dcrf": "dcrf", "ceiling": "ceiling"}.get(self.kind, "myko")

    @property
    def coalesces(self) -> bool:
        """Only myko may deliver a later whole item in place of an earlier change."""
        return self.protocol == "myko"

    def start(self) -> None:
        """Server and client processes, before any event loop runs (the children fork)."""
        self.server.start()
        self.clients = Clients(self.plan.processes)

    def stop(self) -> None:
        if self.clients is not None:
            self.clients.stop()
        self.server.stop()

    async def open_writers(self) -> None:
        from fanout_client import CommandSocket, Socket

        if self.protocol == "ceiling":
            url = self.server.urls(f"ceiling?role=writer&fmt={self.plan.fmt}")[0]
            self.writers = [await Socket.open(url, lambda *a: None)]
        else:
            url = self.server.urls("myko")[0]
            self.writers = [await CommandSocket.open(url) for _ in range(WRITER_SOCKETS)]

    async def subscribe(self, s: int, mode: str) -> float:
        """Open S subscribers (closing any before), spread round-robin over the processes;
        returns seconds until every one had its subscription live."""
        assert self.clients is not None
        if self.protocol == "myko":
            path = "myko"
        elif self.protocol == "dcrf":
            path = "peer"
        else:
            path = f"ceiling?fmt={self.plan.fmt}"
        urls = self.server.urls(path)
        if mode in self.custom_modes:
            subs, items, self.write_params = self.custom_modes[mode](s)
        else:
            hot = [f"h{j}" for j in range(HOT)]
            subs = [
                (i, "hot", hot) if mode == "identical" else (i, f"c{i}", [f"d{i}"])
                for i in range(s)
            ]
            items = hot if mode == "identical" else [f"d{i}" for i in range(s)]
            self.write_params = {}
        per = [
            {"kind": self.protocol, "urls": urls, "subs": subs[n :: len(self.clients.pipes)]}
            for n in range(len(self.clients.pipes))
        ]
        for p in per:
            p["fmt"] = self.plan.fmt
        started = time.perf_counter()
        opened = await self.clients.call("open", per)
        self.subscribers, self.mode, self.items = s, mode, items
        self.snapshot_foreign = sum(r["foreign"] for r in opened)
        return time.perf_counter() - started

    async def step(self, rate: float, duration: float, label: str = "") -> dict[str, Any]:
        """W writes/s for `duration` s, then the exact account of what reached whom."""
        assert self.clients is not None
        await self.clients.call("step", start_seq=Session.seq + 1)
        self.load_before = round(os.getloadavg()[0], 2)
        usage = Usage(
            server=self.server.pids,
            clients=self.clients.pids,
            writer=[os.getpid()],
            postgres=_pids("postgres"),
            redis=_pids("redis-server"),
        )
        writes, first_ns, sent_s, errors, cmd_ms = await self._write(rate, duration)
        # Silence this long after the last write ends a step; what comes later counts as
        # lost here (and as late in the next step): long enough for a backlogged peer.
        quiet = 1.0 if self.plan.quick else 5.0
        results = await self.clients.call("finish", writes=writes, quiet=quiet, cap=120.0)
        cores = usage.cores()
        return self._row(rate, duration, label, results, first_ns, sent_s, errors, cmd_ms, cores)

    async def _write(self, rate: float, duration: float) -> tuple:
        loop = asyncio.get_running_loop()
        n = max(1, round(rate * duration))
        items = self.items
        writes: dict[str, list[int]] = defaultdict(list)
        ceiling = self.protocol == "ceiling"
        for w in self.writers if not ceiling else ():
            w.errors.clear()
            w.latencies_ns = array("q")
        t0 = loop.time() + 0.05
        first_ns = 0
        for k in range(n):
            delay = t0 + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            j = k % len(items)
            item = items[j]
            Session.seq += 1
            seq = Session.seq
            stamp = time.time_ns()
            first_ns = first_ns or stamp
            name = f"{seq}:{stamp}"
            if ceiling:
                category = "hot" if item[0] == "h" else f"c{item[1:]}"
                self.writers[0].send_text(
                    json.dumps({"id": item, "name": name, "category": category})
                )
            else:
                # One item always goes through the same socket: its writes commit in order.
                writer = self.writers[j % len(self.writers)]
                params = {"id": item, "name": name, **self.write_params}
                writer.command(self._write_command(), params, uuid.uuid4().hex)
            writes[item].append(seq)
        sent_s = loop.time() - t0
        errors: list[str] = []
        cmd_ms: list[float] = []
        if not ceiling:
            try:
                await asyncio.wait_for(asyncio.gather(*(w.idle.wait() for w in self.writers)), 120)
            except TimeoutError:
                errors.append("command responses still missing after 120 s")
            for w in self.writers:
                errors += w.errors
                cmd_ms += [x / 1e6 for x in w.latencies_ns]
        return dict(writes), first_ns, sent_s, errors, cmd_ms

    def _write_command(self) -> str:
        """myko's writer sends the demo's ordinary RenameTarget (a QuerySet.update, issue
        14); the peer's observer sees post_save only, and the visibility bench writes Notes,
        so those send BenchStamp (Model.save())."""
        if self.protocol == "myko" and not self.write_params:
            return "RenameTarget"
        return "BenchStamp"

    def _row(
        self,
        rate: float,
        duration: float,
        label: str,
        results: list[dict],
        first_ns: int,
        sent_s: float,
        errors: list[str],
        cmd_ms: list[float],
        cores: dict[str, float],
    ) -> dict[str, Any]:
        total: Counter[str] = Counter()
        latencies = array("q")
        last_ns = 0
        for r in results:
            latencies.frombytes(r.pop("latencies"))
            last_ns = max(last_ns, r.pop("last_ns"))
            r.pop("first_ns")
            total.update({k: v for k, v in r.items() if isinstance(v, int)})
        ordered = sorted(latencies)
        superseded, stale = total["superseded"], total["stale"]
        lost = stale if self.coalesces else stale + superseded
        coalesced = superseded if self.coalesces else 0
        window = max((last_ns - first_ns) / 1e9, sent_s, 1e-9)
        p = {q: _pct(ordered, q) for q in (50, 95, 99, 100)}
        writes = max(1, round(rate * duration))
        sustainable = (
            lost == 0
            and not errors
            and total["duplicated"] == 0
            and total["reordered"] == 0
            and total["foreign"] == 0
            and self.snapshot_foreign == 0
            and p[99] <= P99_SUSTAINABLE_MS
            and sent_s <= duration * 1.1 + 0.2
        )
        return {
            "workload": self.workload,
            "server": self.kind,
            "subscribers": self.subscribers,
            "rate": rate,
            "metric": f"{self.mode}{' ' + label if label else ''}: p99 latency",
            "value": p[99],
            "unit": "ms",
            "mode": self.mode,
            "p50_ms": p[50],
            "p95_ms": p[95],
            "p99_ms": p[99],
            "max_ms": p[100],
            "writes": writes,
            "write_seconds": round(sent_s, 2),
            "expected_updates": total["expected"],
            "delivered_updates": total["received"],
            "delivered_msgs_s": round(total["frames"] / window),
            "delivered_updates_s": round(total["updates"] / window),
            "frames": total["frames"],
            "lost": lost,
            "coalesced": coalesced,
            "skipped_then_newer": superseded,
            "stale_final": total["stale_final"],
            "duplicated": total["duplicated"],
            "reordered": total["reordered"],
            "foreign": total["foreign"],
            "foreign_in_snapshots": self.snapshot_foreign,
            "late_from_earlier_step": total["late"],
            "command_errors": len(errors),
            "command_error": errors[0] if errors else None,
            "command_p50_ms": _pct(sorted(cmd_ms), 50) if cmd_ms else None,
            "command_p99_ms": _pct(sorted(cmd_ms), 99) if cmd_ms else None,
            "server_cpu_pct": round(100 * cores["server"]),
            "server_rss_mb": None,  # filled by the caller (after the step, settled)
            "client_cpu_pct": round(100 * cores["clients"]),
            "writer_cpu_pct": round(100 * cores["writer"]),
            "postgres_cpu_pct": round(100 * cores["postgres"]),
            "redis_cpu_pct": round(100 * cores["redis"]),
            "machine_busy_cores": cores["machine"],
            # Anything else running on the box (another's tests, say; their Postgres backends
            # count as Postgres above), in cores.
            "other_cores": round(
                cores["machine"] - sum(v for k, v in cores.items() if k != "machine"), 2
            ),
            "load_avg_1m_before": self.load_before,
            "server_processes": len(self.server.procs),
            "client_processes": self.plan.processes,
            "format": self.plan.fmt,
            "sustainable": sustainable,
            "drain_s": round(max(r["drain_s"] for r in results), 2),
        }

    def rss_mb(self) -> float:
        return Usage(server=self.server.pids).rss_mb("server")


def _pids(name: str) -> list[int]:
    """Every process of that name (Postgres backends come and go; count those present)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


def _pct(ordered: Any, q: float) -> float | None:
    """Nearest-rank percentile of sorted latencies (ns or ms), in ms."""
    if not len(ordered):
        return None
    rank = max(1, -(-len(ordered) * q // 100))
    v = ordered[int(rank) - 1]
    return round(v / 1e6, 1) if isinstance(v, int) else round(v, 1)


# ---- the run -----------------------------------------------------------------------------------


def run_kind(kind: str, plan: Plan, profile: str | None, log: Any, **options: Any) -> list[dict]:
    """Every step of one server kind; `options`: Session's workload and custom_modes."""
    session = Session(kind, plan, profile, **options)
    try:
        session.start()
        return asyncio.run(_run_session(session, plan, log))
    finally:
        session.stop()


async def _run_session(session: Session, plan: Plan, log: Any) -> list[dict]:
    kind = session.kind
    rows: list[dict] = []
    await session.open_writers()
    for s in plan.sizes:
        for mode, rates, then_ramp in _schedule(plan, kind, s):
            opened = await session.subscribe(s, mode)
            log(f"  {kind}: {s} {mode} subscribers live in {opened:.1f}s")
            for rate in rates:
                row = await session.step(rate, plan.duration)
                row["server_rss_mb"] = session.rss_mb()
                row["open_s"] = round(opened, 1)
                rows.append(row)
                log("  " + short(row))
            if then_ramp:
                rows.extend(await ramp(session, plan, log))
    await session.clients.call("close")
    for w in session.writers:
        w.close()
    await asyncio.sleep(0.1)
    return rows


def _schedule(plan: Plan, kind: str, s: int) -> list[tuple[str, list[int], bool]]:
    """(mode, its fixed rates W, then its ramp?) in the order they run, each on a fresh set
    of S subscribers. With `plan.interleave` every mode runs one W after the other (the
    modes' steps at one W close in time on a machine whose load drifts), `plan.rounds`
    times over, the ramps last."""
    blocks = []
    for mode in plan.modes:
        if (kind == "ceiling" and mode != "identical") or (s > 1000 and mode == "distinct"):
            continue
        rates = plan.rates if s <= 1000 else plan.rates[:1]
        if plan.quick and mode == "distinct":
            rates = rates[-1:]
        then_ramp = mode in plan.ramp_modes and s in plan.ramp_sizes and bool(plan.ramp_rates)
        blocks.append((mode, rates, then_ramp))
    if not plan.interleave:
        return blocks
    fixed = [(m, [w], False) for w in plan.rates for m, rates, _ in blocks if w in rates]
    return fixed * plan.rounds + [(m, [], True) for m, _, then_ramp in blocks if then_ramp]


async def ramp(session: Session, plan: Plan, log: Any) -> list[dict]:
    """Raise W until a step is not sustainable (lost > 0 or p99 > 1 s); then try once
    half-way between the last good and the first bad rate. Returns every step plus a
    summary row with the highest sustainable delivered rate."""
    rows: list[dict] = []
    best: dict | None = None
    bad: float | None = None
    for rate in plan.ramp_rates:
        row = await session.step(rate, plan.ramp_duration, "ramp")
        row["server_rss_mb"] = session.rss_mb()
        row["ramp"] = True
        rows.append(row)
        log("  " + short(row))
        if row["sustainable"]:
            best = row
        else:
            bad = rate
            break
    if best is not None and bad is not None and bad / best["rate"] > 1.3 and not plan.quick:
        rate = round((best["rate"] + bad) / 2)
        row = await session.step(rate, plan.ramp_duration, "ramp")
        row["server_rss_mb"] = session.rss_mb()
        row["ramp"] = True
        rows.append(row)
        log("  " + short(row))
        if row["sustainable"]:
            best = row
    summary = {
        "workload": session.workload,
        "server": session.kind,
        "subscribers": session.subscribers,
        "rate": best["rate"] if best else None,
        "metric": "highest sustainable delivered updates/s",
        "value": best["delivered_updates_s"] if best else 0,
        "unit": "updates/s",
        "mode": session.mode,
        "delivered_msgs_s": best["delivered_msgs_s"] if best else 0,
        "p99_ms": best["p99_ms"] if best else None,
        "first_unsustainable_rate": bad,
        "ramp_limit_reached": bad is None,
    }
    rows.append(summary)
    log("  " + short(summary))
    return rows


def short(row: dict) -> str:
    if row["metric"].startswith("highest"):
        return (
            f"{row['server']:<8} S={row['subscribers']:<5} highest sustainable: "
            f"W={row['rate']} -> {row['value']:,} updates/s ({row['delivered_msgs_s']:,} msgs/s), "
            f"p99 {row['p99_ms']} ms; first failing W={row['first_unsustainable_rate']}"
        )
    return (
        f"{row['server']:<8} S={row['subscribers']:<5} {row['mode']:<9} W={row['rate']:<5} "
        f"p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} max {row['max_ms']} ms | "
        f"{row['delivered_msgs_s']:,} msgs/s {row['delivered_updates_s']:,} upd/s | "
        f"lost {row['lost']} coal {row['coalesced']} dup {row['duplicated']} "
        f"reord {row['reordered']} | srv {row['server_cpu_pct']}% {row['server_rss_mb']} MB "
        f"cli {row['client_cpu_pct']}% wr {row['writer_cpu_pct']}% pg {row['postgres_cpu_pct']}% "
        f"redis {row['redis_cpu_pct']}% box {row['machine_busy_cores']} "
        f"other {row['other_cores']} | "
        f"cmd p50 {row['command_p50_ms']} p99 {row['command_p99_ms']} ms | "
        f"{'ok' if row['sustainable'] else 'NOT sustainable'}"
        + (f" | cmd err {row['command_error']}" if row["command_errors"] else "")
    )


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 2 decimals (4 below 0.1); None without both figures."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2) if a / b >= 0.1 else round(a / b, 4)


def comparisons(rows: list[dict]) -> list[dict]:
    """Ratios ours/peer and ours/ceiling, and the issue's targets with met or not."""
    out: list[dict] = []
    steps = {
        (r["server"], r["subscribers"], r["mode"], r["rate"]): r
        for r in rows
        if "p99_ms" in r and not r["metric"].startswith("highest") and not r.get("ramp")
    }
    best = {r["server"]: r for r in rows if r["metric"].startswith("highest")}
    for (server, s, mode, rate), r in sorted(steps.items(), key=lambda kv: str(kv[0])):
        if server != "myko":
            continue
        for other in ("dcrf", "ceiling", "myko x2"):
            o = steps.get((other, s, mode, rate))
            if o is None:
                continue
            out.append(
                {
                    "workload": "ratio",
                    "server": f"myko/{other}",
                    "subscribers": s,
                    "rate": rate,
                    "metric": f"{mode}: delivered updates/s, myko/{other}",
                    "value": ratio(r["delivered_updates_s"], o["delivered_updates_s"]),
                    "unit": "x",
                    "p99_ratio": ratio(r["p99_ms"], o["p99_ms"]),
                    "lost": {"myko": r["lost"], other: o["lost"]},
                }
            )
    ours = best.get("myko")
    for other in ("dcrf", "ceiling", "myko x2"):
        if ours and other in best:
            o = best[other]
            out.append(
                {
                    "workload": "ratio",
                    "server": f"myko/{other}",
                    "subscribers": ours["subscribers"],
                    "rate": None,
                    "metric": f"sustainable updates/s at the ramp's best, myko/{other}",
                    "value": ratio(ours["value"], o["value"]),
                    "unit": "x",
                    "msgs_ratio": ratio(ours["delivered_msgs_s"], o["delivered_msgs_s"]),
                }
            )
    # The targets.
    base = steps.get(("myko", 1000, "identical", 10))
    if base:
        out.append(
            _target(
                "1,000 identical subscribers, 10 writes/s, one worker: 0 lost, p99 <= 250 ms",
                base["p99_ms"],
                "ms",
                base["lost"] == 0 and (base["p99_ms"] or 1e9) <= TARGET_P99_MS,
                lost=base["lost"],
            )
        )
    if ours and "ceiling" in best:
        for key, what in (
            ("value", "highest sustainable delivered updates/s >= 50% of the bare ceiling"),
            (
                "delivered_msgs_s",
                "the same, counted in WebSocket messages (a myko message carries its batch)",
            ),
        ):
            value = ratio(ours[key], best["ceiling"][key])
            out.append(_target(what, value, "x", value is not None and value >= 0.5))
    if ours and "dcrf" in best:
        # DCRF sustaining no rate at all (value 0) counts as met: any of ours is infinitely more.
        value = ratio(ours["value"], best["dcrf"]["value"]) if best["dcrf"]["value"] else None
        out.append(
            _target(
                "highest sustainable delivered updates/s >= 3x DCRF's",
                value if value is not None else "DCRF sustained none",
                "x",
                value is None or value >= 3,
            )
        )
    mine = [r for r in steps.values() if r["server"].startswith("myko")]
    if mine:
        lost = sum(r["lost"] for r in mine)
        out.append(
            _target(
                "0 lost in every myko step, overload included",
                lost,
                "updates",
                lost == 0,
                coalesced=sum(r["coalesced"] for r in mine),
            )
        )
    return out


def _target(what: str, value: Any, unit: str, met: bool, **extra: Any) -> dict:
    return {
        "workload": "target",
        "server": "myko",
        "subscribers": None,
        "rate": None,
        "metric": what,
        "value": value,
        "unit": unit,
        "target": what,
        "met": bool(met),
        **extra,
    }


def run(
    quick: bool = False,
    *,
    profile: str | None = None,
    big: bool = False,
    servers: list[str] | None = None,
    fmt: str = "json",
    log: Any = print,
    overrides: dict[str, Any] | None = None,
) -> list[dict]:
    """Every fan-out workload in one run; rows for run_all's table and JSON."""
    ensure_requirements()
    plan = Plan.make(quick, big)
    plan.fmt = fmt
    for key, value in (overrides or {}).items():
        setattr(plan, key, value)
    if overrides and "sizes" in overrides and "ramp_rates" in overrides:
        plan.ramp_sizes = plan.sizes
    if servers:
        plan.servers = servers
    setup_database(max(plan.sizes))
    info = machine()
    log(
        f"fan-out: {info['cores']} cores ({info['cpu_model']}) shared by daphne, Postgres, "
        f"Redis, {plan.processes} client processes and the writer; format {plan.fmt}"
    )
    rows: list[dict] = []
    for kind in plan.servers:
        rows += run_kind(kind, plan, profile, log)
    rows += comparisons(rows)
    for r in rows:
        r.setdefault("machine", f"{info['cores']} cores, {info['cpu_model']}")
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per step, then the ratios and the targets."""
    head = (
        f"{'workload':<22}{'server':<9}{'S':>6} {'mode':<10}{'W/s':>6} "
        f"{'p50':>7}{'p95':>8}{'p99':>8}{'max':>8} {'msgs/s':>8}{'upd/s':>8} "
        f"{'lost':>6}{'coal':>6}{'dup':>4} {'srvCPU':>7}{'RSS MB':>7}{'cliCPU':>7} ok"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["workload"] in ("ratio", "target") or r["metric"].startswith("highest"):
            continue
        print(
            f"{r['workload']:<22}{r['server']:<9}{r['subscribers']:>6} "
            f"{r['mode'][:5] + (' ramp' if r.get('ramp') else ''):<10}"
            f"{r['rate']:>6} {_ms(r['p50_ms']):>7}{_ms(r['p95_ms']):>8}{_ms(r['p99_ms']):>8}"
            f"{_ms(r['max_ms']):>8} {r['delivered_msgs_s']:>8,}{r['delivered_updates_s']:>8,} "
            f"{r['lost']:>6}{r['coalesced']:>6}{r['duplicated']:>4} {r['server_cpu_pct']:>6}%"
            f"{r['server_rss_mb']:>7}{r['client_cpu_pct']:>6}% "
            + ("yes" if r["sustainable"] else "NO")
        )
    print()
    for r in rows:
        if r["metric"].startswith("highest") and r["workload"] not in ("ratio", "target"):
            print(
                f"{r['workload']:<22}{r['server']:<9} S={r['subscribers']}: highest sustainable "
                f"W={r['rate']}: {r['value']:,} updates/s ({r['delivered_msgs_s']:,} msgs/s), "
                f"p99 {r['p99_ms']} ms (next rate tried: {r['first_unsustainable_rate']})"
            )
    print()
    for r in rows:
        if r["workload"] == "ratio":
            extra = f"  (p99 ratio {r['p99_ratio']})" if "p99_ratio" in r else ""
            where = f"S={r['subscribers']} W={r['rate']} " if r["rate"] else ""
            print(f"ratio  {where}{r['metric']}: {r['value']}{extra}")
    print()
    for r in rows:
        if r["workload"] == "target":
            print(
                f"target {'MET   ' if r['met'] else 'MISSED'} {r['metric']}: "
                f"{r['value']} {r['unit']}"
            )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S=100, 2 s steps (~1 minute)")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="py-spy",
        choices=["py-spy", "cprofile"],
        help="profile the daphne workers (bench/results/profiles/)",
    )
    parser.add_argument("--big", action="store_true", help="also 5,000 identical subscribers")
    parser.add_argument(
        "--gc-log", action="store_true", help="log the servers' GC pauses over 5 ms"
    )
    parser.add_argument(
        "--servers",
        help="comma-separated subset of: " + ", ".join(WORKLOADS),
        type=lambda s: [x.strip() for x in s.split(",")],
    )
    parser.add_argument("--format", default="json", choices=["json", "msgpack"])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--sizes", type=ints, help="override S (e.g. 1000)")
    parser.add_argument("--rates", type=ints, help="override the fixed rates W (e.g. 10,100)")
    parser.add_argument("--ramp", type=ints, help="override the ramp's rates ('' : no ramp)")
    parser.add_argument("--duration", type=float, help="override seconds per step")
    parser.add_argument("--modes", help="identical,distinct (default both)")
    parser.add_argument("--processes", type=int, help="client processes")
    args = parser.parse_args(argv)
    if args.gc_log:
        os.environ["MYKO_BENCH_GC_LOG"] = "1"
    overrides = {
        k: v
        for k, v in {
            "sizes": args.sizes,
            "rates": args.rates,
            "ramp_rates": args.ramp,
            "duration": args.duration,
            "processes": args.processes,
            "modes": args.modes.split(",") if args.modes else None,
        }.items()
        if v is not None
    }
    started = time.perf_counter()
    rows = run(
        args.quick,
        overrides=overrides,
        profile=args.profile,
        big=args.big,
        servers=args.servers,
        fmt=args.format,
    )
    report(rows, started, args.json)


def report(
    rows: list[dict], started: float, path: Path | None, table: Callable = print_table
) -> None:
    """A standalone run's end: the table, the time taken, the rows to `path` if given."""
    print()
    table(rows)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if path:
        path.write_text(json.dumps(rows, indent=1, default=str))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
