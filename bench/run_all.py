"""Run every benchmark workload of issue 5 that is present, print one table, write JSON.

Workload modules (bench/<name>.py) each expose `run(quick: bool = False) -> list[dict]`,
returning rows `{"workload", "metric", "value", "unit"}` plus, where the issue names a
target, `"target"` (its wording, e.g. "<= 200 ms") and `"met"` (bool); any other keys are
shown as notes. Each module runs in a process of its own (a Django process has one
database and one settings module for life), while this process watches which processes
used how much CPU and on which cores.

    bench/run [--quick] [--json PATH] [--only snapshot,memory]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench import support  # noqa: E402

# In the order they run; a module that is not there (yet) is skipped.
MODULES = [
    "write_throughput",
    "write_ceiling",
    "snapshot",
    "memory",
    "visibility",
    "fanout",
    "visibility_fanout",
    "saga_latency",
    "js_client",
]

NOTES_WIDTH = 120

_CHILD = """
import json, sys
from bench import {name} as module
rows = module.run(quick={quick})
with open({out!r}, "w") as f:
    json.dump(rows, f)
"""


class CpuWatch:
    """Samples every process twice a second while a module runs: CPU seconds and the cores
    each group ran on. Groups: the module's own processes (its daphne workers apart), the
    Postgres backends of benchmark databases, Redis (shared with anything else running)."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self.cores: dict[str, set[int]] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._seen_before = {p.pid: self._cpu(p) for p in psutil.process_iter()}
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def _classify(self, p: psutil.Process, ours: set[int]) -> str | None:
        try:
            cmd = " ".join(p.cmdline())
            name = p.name()
        except psutil.Error:
            return None
        if p.pid in ours:
            return "daphne" if "daphne" in cmd else "benchmark clients"
        if name.startswith("postgres") or cmd.startswith("postgres"):
            return "postgres (mykobench* backends)" if "mykobench" in cmd else None
        if "redis-server" in name or "redis-server" in cmd:
            return "redis (shared)"
        return None

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            ours = {self.root_pid} | {c.pid for c in root.children(recursive=True)}
        except psutil.Error:
            ours = set()
        for p in psutil.process_iter():
            group = self.group.get(p.pid) or self._classify(p, ours)
            if group is None:
                continue
            self.group[p.pid] = group
            cpu = self._cpu(p)
            if p.pid not in self.first:  # a process seen before we started counts from then
                self.first[p.pid] = self._seen_before.get(p.pid, 0.0)
            self.last[p.pid] = max(cpu, self.last.get(p.pid, 0.0))
            try:
                core = p.cpu_num()
                if cpu > self.first[p.pid]:
                    self.cores.setdefault(group, set()).add(core)
            except psutil.Error:
                pass

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> dict[str, dict[str, Any]]:
        self._sample()
        self._stop.set()
        self.thread.join()
        wall = time.monotonic() - self.started
        out: dict[str, dict[str, Any]] = {}
        for pid, group in self.group.items():
            used = self.last.get(pid, 0.0) - self.first.get(pid, 0.0)
            g = out.setdefault(group, {"cpu_seconds": 0.0, "processes": 0})
            g["cpu_seconds"] += max(0.0, used)
            g["processes"] += 1
        for group, g in out.items():
            g["cpu_seconds"] = round(g["cpu_seconds"], 1)
            g["mean_cores"] = round(g["cpu_seconds"] / wall, 2) if wall else 0.0
            g["ran_on_cores"] = sorted(self.cores.get(group, ()))
        return out


def run_module(name: str, quick: bool) -> dict[str, Any]:
    """One module in a child process; returns its rows, seconds, CPU use, or the error."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    code = _CHILD.format(name=name, quick=quick, out=out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    watch = CpuWatch(proc.pid)
    code = proc.wait()
    cpu = watch.stop()
    result: dict[str, Any] = {"seconds": round(time.monotonic() - started, 1), "cpu": cpu}
    try:
        if code != 0:
            raise RuntimeError(f"exited with status {code}")
        with open(out) as f:
            result["rows"] = json.load(f)
    except Exception as exc:  # one broken workload must not hide the others' figures
        result["error"] = str(exc)
        result["rows"] = []
    finally:
        os.unlink(out)
    return result


def table(rows: list[dict[str, Any]]) -> str:
    """One text table: workload, metric, value, target, met, notes."""
    head = ("workload", "metric", "value", "target", "met", "notes")
    lines = []
    for r in rows:
        value = f"{support.fmt_value(r['value'])} {r['unit']}"
        met = "" if r.get("met") is None else ("yes" if r["met"] else "NO")
        notes = support.notes(r)
        if len(notes) > NOTES_WIDTH:  # the JSON keeps every figure
            notes = notes[: NOTES_WIDTH - 3] + "..."
        lines.append((r["workload"], r["metric"], value, r.get("target") or "", met, notes))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(5)]
    out = []
    for i, line in enumerate([head, *lines]):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1]), line[2].rjust(widths[2])]
        cells += [line[3].ljust(widths[3]), line[4].ljust(widths[4]), line[5]]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("-" * min(160, len(out[0]) + 20))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (about a minute)")
    parser.add_argument(
        "--json", default=str(BENCH / "results.json"), help="where to write the results"
    )
    parser.add_argument("--only", help="comma-separated module names, e.g. snapshot,memory")
    args = parser.parse_args(argv)
    names = [n for n in MODULES if (BENCH / f"{n}.py").exists()]
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(names)
        if unknown:
            parser.error(f"no such workload module: {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    machine = support.machine()
    print(
        f"machine: {machine['cores']} cores ({machine['physical_cores']} physical), "
        f"{machine['cpu_model']}, {machine['ram_gb']} GB RAM, Python {machine['python']}; "
        f"no CPU pinning: every process may run on cores 0-{machine['cores'] - 1}",
        flush=True,
    )
    results: dict[str, Any] = {}
    command = " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])])
    for name in names:
        print(f"== {name}{' (quick)' if args.quick else ''} ==", flush=True)
        results[name] = run_module(name, args.quick)
        if "error" in results[name]:
            print(f"!! {name} failed: {results[name]['error']}", flush=True)
        print(table(results[name]["rows"]), flush=True)
        _write(args.json, command, args.quick, machine, results)  # kept if a later one hangs
    rows = [r for res in results.values() for r in res["rows"]]
    print()
    print(table(rows))
    print()
    print("CPU used while each workload ran (CPU seconds / wall seconds = mean cores):")
    for name, res in results.items():
        parts = [
            f"{group} {g['mean_cores']:.2f} cores on cpu {','.join(map(str, g['ran_on_cores']))}"
            for group, g in sorted(res["cpu"].items())
        ]
        print(f"  {name} ({res['seconds']} s): " + "; ".join(parts))
    missed = [r for r in rows if r.get("met") is False]
    failed = [n for n, res in results.items() if "error" in res]
    summary = f"{sum(1 for r in rows if r.get('met'))} targets met, {len(missed)} missed"
    print(summary + (f"; failed workloads: {', '.join(failed)}" if failed else ""))
    _write(args.json, command, args.quick, machine, results)
    print(f"results: {args.json}")
    return 1 if failed else 0


def _write(path: str, command: str, quick: bool, machine: dict, results: dict) -> None:
    document = {
        "command": command,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "workloads": {
            n: {k: v for k, v in res.items() if k != "rows"} for n, res in results.items()
        },
        "rows": [r for res in results.values() for r in res["rows"]],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
