"""Soak: an hour-scale mix at a fixed rate against one real daphne worker, printing the
worker's RSS, open asyncio tasks and file descriptors every minute (they must stay flat).

    bench/soak.py                  # 60 minutes
    bench/soak.py --minutes 2      # a smoke run
    bench/soak.py --minutes 10 --rate 40

Each tick (RATE a second) does one step of a fixed cycle: a connection opened, subscribed
(a query and a report), cancelled and closed (churn); a command; a single event; a small
event batch; a ping; a subscribe and cancel on a long-lived connection. A pool of
long-lived connections keeps live subscriptions all along, so every write fans out. Its own
database (bench_soak), Gadgets of the test app, the worker's figures from /metrics
(MYKO["METRICS"] on): process_resident_memory_bytes, myko_asyncio_tasks,
process_open_fds, and the connections and bytes waiting as a check.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support  # noqa: E402

DB = "bench_soak"
POOL = 20  # long-lived connections, each with a live query


def scrape(port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


class Mix:
    """The cycle of steps; counts what it did and what failed."""

    def __init__(self, url: str, pool: list[support.Conn]) -> None:
        self.url = url
        self.pool = pool
        self.done = dict.fromkeys(("churn", "command", "event", "batch", "ping", "resub"), 0)
        self.errors = 0
        self.ids = itertools.count()
        self.steps = itertools.cycle(
            (self.churn, self.command, self.event, self.batch, self.ping, self.resub)
        )
        self.running: set[asyncio.Task] = set()

    def tick(self) -> None:
        step = next(self.steps)
        task = asyncio.ensure_future(self._guarded(step))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _guarded(self, step) -> None:
        try:
            await asyncio.wait_for(step(), 30)
            self.done[step.__name__] += 1
        except Exception as exc:  # counted and shown, the soak goes on
            self.errors += 1
            if self.errors <= 5:
                print(f"  {step.__name__} failed: {exc!r:.200}", flush=True)

    def _conn(self) -> support.Conn:
        return self.pool[next(self.ids) % len(self.pool)]

    async def churn(self) -> None:
        conn = await support.Conn.open(self.url, "json")
        try:
            tx = await conn.subscribe("GetAllGadgets", "Gadget")
            await conn.send(
                "ws:m:report",
                {"report": {"tx": "r" + tx}, "reportId": "CountAllGadgets"},
            )
            got: set[str] = set()
            while got != {"ws:m:query-response", "ws:m:report-response"}:
                got.add(conn.decode(await conn.ws.recv())["event"])
            await conn.send("ws:m:query-cancel", {"tx": tx})
        finally:
            await conn.close()

    async def command(self) -> None:
        conn = await support.Conn.open(self.url, "json")
        try:
            i = next(self.ids) % 200
            await conn.command("SetGadgets", {"items": [{"id": f"c{i}", "label": f"c{i % 9}"}]})
        finally:
            await conn.close()

    async def event(self) -> None:
        i = next(self.ids) % 200
        item = {"id": f"e{i}", "label": f"e{i % 9}", "note": uuid.uuid4().hex}
        await self._conn().send(
            "ws:m:event", {"item": item, "changeType": "SET", "itemType": "Gadget"}
        )

    async def batch(self) -> None:
        base = next(self.ids) % 50
        events = [
            {
                "item": {"id": f"b{base}-{k}", "label": "b", "note": uuid.uuid4().hex},
                "changeType": "SET",
                "itemType": "Gadget",
            }
            for k in range(20)
        ]
        await self._conn().send("ws:m:event-batch", events)

    async def ping(self) -> None:
        await self._conn().send("ws:m:ping", {"id": "soak", "timestamp": time.time() * 1000})

    async def resub(self) -> None:
        conn = self._conn()
        tx = await conn.subscribe("GetGadgetsByQuery", "Gadget", {"label": "b"})
        await asyncio.sleep(0.5)
        await conn.send("ws:m:query-cancel", {"tx": tx})


async def drain(conn: support.Conn) -> None:
    """A long-lived connection reads everything it is sent (a healthy client)."""
    try:
        while True:
            await conn.ws.recv()
    except Exception:
        return


async def soak(minutes: float, rate: float) -> int:
    worker = support.start_worker(
        redis=False,
        extra_env={"DATABASE_URL": f"{support.PG}/{DB}", "MYKO_METRICS": "1"},
    )
    try:
        pool = [await support.Conn.open(worker.url, "json") for _ in range(POOL)]
        readers = [asyncio.ensure_future(drain(c)) for c in pool]
        for conn in pool:
            await conn.subscribe("GetAllGadgets", "Gadget")
        mix = Mix(worker.url, pool)
        rows = []
        started = time.monotonic()
        next_report = started
        interval = 1 / rate
        tick = started
        print(
            f"soak: {minutes:g} min at {rate:g} steps/s against {worker.url} "
            f"(pid {worker.proc.pid}), {POOL} long-lived subscribers",
            flush=True,
        )
        print(" min    RSS MB  tasks  fds  conns  queued B  steps  errors", flush=True)
        while True:
            now = time.monotonic()
            if now >= next_report:
                m = await asyncio.to_thread(scrape, worker.port)
                row = (
                    (now - started) / 60,
                    m["process_resident_memory_bytes"] / 2**20,
                    int(m["myko_asyncio_tasks"]),
                    int(m["process_open_fds"]),
                    int(m["myko_connections"]),
                    int(m["myko_outgoing_queued_bytes"]),
                    sum(mix.done.values()),
                    mix.errors,
                )
                rows.append(row)
                print("{:4.0f}  {:8.1f}  {:5d}  {:3d}  {:5d}  {:8d}  {:5d}  {:6d}".format(*row))
                sys.stdout.flush()
                if now - started >= minutes * 60:
                    break
                next_report += 60
            mix.tick()
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await asyncio.gather(*mix.running, return_exceptions=True)
        for conn in pool:
            await conn.close()
        for reader in readers:
            reader.cancel()
        first, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]
        print(
            f"after minute {first[0]:.0f} -> {last[0]:.0f}: RSS {first[1]:.1f} -> {last[1]:.1f} MB "
            f"({last[1] / first[1]:.3f}x), tasks {first[2]} -> {last[2]}, fds {first[3]} -> "
            f"{last[3]}; {sum(mix.done.values())} steps ({mix.done}), {mix.errors} errors"
        )
        return 0 if mix.errors == 0 else 1
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="duration (default 60)")
    parser.add_argument("--rate", type=float, default=20.0, help="steps a second (default 20)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    support.setup_django(DB)
    return asyncio.run(soak(args.minutes, args.rate))


if __name__ == "__main__":
    sys.exit(main())
