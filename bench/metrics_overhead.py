"""What the operations metrics (myko_django/server/metrics.py) cost on the hot paths.

In-process micro-benchmarks, no server: the per-frame count in `Outbox.put` (a frame and
its length added to two ints), against `put` without it and against the fan-out work of
one frame (`encode_query_response` for a 20-item update plus `put`); the per-flush cost in
the hub (two clock reads and a histogram observation); the per-command cost in the
backend; and one scrape (`render`) with 1,000 connections' worth of state.

    .venv/bin/python bench/metrics_overhead.py
"""

from __future__ import annotations

import asyncio
import inspect
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from myko_django.live.updates import QueryUpdate, SharedItems  # noqa: E402
from myko_django.server import endpoint, metrics  # noqa: E402
from myko_django.server.endpoint import Outbox  # noqa: E402
from myko_django.server.fanout import encode_query_response  # noqa: E402
from myko_django.wire import codecs  # noqa: E402

N = 200_000
ROUNDS = 7


async def daphne_like_send(message: dict) -> None:
    """daphne's send hands the frame to Twisted and returns without suspending."""
    return None


def _uncounted_put():
    """Outbox.put compiled from its own source without the three lines that count."""
    source = textwrap.dedent(inspect.getsource(Outbox.put))
    lines = [line for line in source.splitlines() if "counts" not in line]
    assert len(lines) == len(source.splitlines()) - 3, "Outbox.put changed: update the bench"
    namespace = vars(endpoint).copy()
    exec("\n".join(lines), namespace)  # noqa: S102 - our own source, minus three lines
    return namespace["put"]


class UncountedOutbox(Outbox):
    """Outbox as it was before the metrics."""

    __slots__ = ()
    put = _uncounted_put()


def best_ns(func, n: int = N) -> float:
    """Nanoseconds per call: the fastest of ROUNDS rounds of n calls (the machine is
    shared; the fastest round is the one least disturbed)."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter_ns()
        func(n)
        times.append((time.perf_counter_ns() - started) / n)
    return min(times)


def paired_ns(a, b, n: int = N, pairs: int = 15) -> tuple[float, float]:
    """(a, b) in ns per call, measured in alternating rounds so that both see the same
    machine; the fastest round of each."""
    times_a, times_b = [], []
    for _ in range(pairs):
        for func, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter_ns()
            func(n)
            times.append((time.perf_counter_ns() - started) / n)
    return min(times_a), min(times_b)


def update_of(items: int) -> QueryUpdate:
    rows = [
        {"id": f"t{i}", "name": f"target {i}", "category": "c", "count": i} for i in range(items)
    ]
    shared = SharedItems("Target", tuple(rows))
    return QueryUpdate(
        conn=None, tx="tx-1", sequence=7, upserts=shared, deletes=[], total_count=items
    )


async def main() -> None:
    frame = '{"event":"ws:m:query-response","data":{"tx":"q-1","sequence":1}}' + "x" * 180
    counted, uncounted = Outbox(daphne_like_send), UncountedOutbox(daphne_like_send)

    def put_counted(n: int) -> None:
        put = counted.put
        for _ in range(n):
            put(frame)

    def put_uncounted(n: int) -> None:
        put = uncounted.put
        for _ in range(n):
            put(frame)

    counts = metrics.COUNTS

    def adds_only(n: int) -> None:
        for _ in range(n):
            c = counts
            c.frames_out += 1
            c.bytes_out += len(frame)

    def empty_loop(n: int) -> None:
        for _ in range(n):
            pass

    update = update_of(20)
    encode_query_response(update, codecs.JSON)  # the items are encoded once per batch

    def fanout_frame(n: int) -> None:
        put = counted.put
        for _ in range(n):
            put(encode_query_response(update, codecs.JSON))

    histogram = metrics.Histogram(metrics.FANOUT_BUCKETS)

    def per_flush(n: int) -> None:
        at = time.time()
        for _ in range(n):
            applied = 1
            if at is not None and 2 > applied:
                histogram.observe(max(0.0, time.time() - at))

    def per_command(n: int) -> None:
        commands = counts.commands
        for _ in range(n):
            started, result = time.perf_counter(), "ok"
            commands[result].observe(time.perf_counter() - started)

    loop_ns = best_ns(empty_loop)
    with_ns, without_ns = paired_ns(put_counted, put_uncounted)
    adds_ns = best_ns(adds_only) - loop_ns
    fanout_ns = best_ns(fanout_frame, N // 4) - loop_ns
    flush_ns = best_ns(per_flush) - loop_ns
    command_ns = best_ns(per_command) - loop_ns

    class Hub:
        def __init__(self) -> None:
            self.sinks = {i: None for i in range(1000)}
            self.first_position = 0
            self._inbox: list = []

            class Sequencer:
                applied, log_reads = 5000, 10

                def gap(self):
                    return None

            class Engine:
                def stats(self):
                    return {"subscriptions": 1000, "live_results": 10}

            self.sequencer, self.engine = Sequencer(), Engine()

        def lag(self) -> int:
            return 0

    metrics.render([Hub()])
    scrape = []
    for _ in range(50):
        started = time.perf_counter_ns()
        metrics.render([Hub()])
        scrape.append(time.perf_counter_ns() - started)

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; ns per call, fastest round")
    print(f"  Outbox.put, counted        {with_ns:7.1f} ns")
    print(f"  Outbox.put, not counted    {without_ns:7.1f} ns")
    print(f"  difference per frame       {with_ns - without_ns:7.1f} ns")
    print(f"  the two adds alone         {adds_ns:7.1f} ns")
    print(
        f"  one fan-out frame (encode 20-item update + put) {fanout_ns:7.1f} ns: the count is "
        f"{100 * (with_ns - without_ns) / fanout_ns:.1f}% of it"
    )
    print(f"  per hub flush (clock + histogram)        {flush_ns:7.1f} ns")
    print(f"  per command (two clocks + histogram)     {command_ns:7.1f} ns")
    print(f"  one scrape (render, 1,000 connections)   {statistics.median(scrape) / 1e3:7.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
