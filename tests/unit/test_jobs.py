"""Fair turns on the hub's database threads (server/jobs.py; issue 13 item 6: eight large
event batches held every thread of a worker and every other write waited a minute). Real
threads; the jobs block on events the test sets, so "still running" is exact."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from myko_django.server import metrics
from myko_django.server.jobs import FairJobs

THREADS = 8
BOUND = 2.0  # seconds a light job may take while the floods hold their threads


@pytest.fixture
def pool():
    executor = ThreadPoolExecutor(THREADS)
    release = threading.Event()
    yield executor, release
    release.set()
    executor.shutdown(wait=True)


def blocked(release: threading.Event, started: list) -> Callable[[], str]:
    def job() -> str:
        started.append(threading.current_thread().name)
        assert release.wait(30)
        return "heavy"

    return job


async def test_floods_of_heavy_batches_leave_threads_for_a_single_command(pool):
    executor, release = pool
    jobs = FairJobs(asyncio.get_running_loop(), executor, THREADS)
    started: list[str] = []
    # Eight connections each send a large batch, and then eight more queue behind them.
    floods = [
        asyncio.ensure_future(jobs.run(f"flood-{i % 8}", True, blocked(release, started)))
        for i in range(16)
    ]
    await asyncio.sleep(0.2)
    assert len(started) == THREADS // 2  # heavy jobs hold half the threads at most

    began = time.monotonic()
    answer = await asyncio.wait_for(jobs.run("other", False, lambda: "light"), BOUND)
    assert answer == "light" and time.monotonic() - began < BOUND
    assert not any(f.done() for f in floods)  # the floods still hold their threads

    release.set()
    assert await asyncio.gather(*floods) == ["heavy"] * 16
    assert metrics.COUNTS.db_waiting == 0


async def test_connections_take_turns_and_the_hub_goes_first(pool):
    executor, _ = pool
    jobs = FairJobs(asyncio.get_running_loop(), executor, 1)
    gate = threading.Event()
    order: list[str] = []

    def job(name: str):
        def run() -> None:
            if name == "first":
                assert gate.wait(10)
            order.append(name)

        return run

    first = asyncio.ensure_future(jobs.run("a", False, job("first")))
    await asyncio.sleep(0.05)  # it holds the one thread
    queued = [asyncio.ensure_future(jobs.run("a", False, job(f"a{i}"))) for i in range(3)]
    queued.append(asyncio.ensure_future(jobs.run("b", False, job("b0"))))
    queued.append(asyncio.ensure_future(jobs.run(None, False, job("hub"))))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *queued)
    # The hub's job first, then a and b in turns, not all of a's before b's.
    assert order == ["first", "hub", "a0", "b0", "a1", "a2"]


async def test_a_job_whose_caller_went_away_never_runs(pool):
    executor, release = pool
    jobs = FairJobs(asyncio.get_running_loop(), executor, 1)
    ran: list[str] = []
    holder = asyncio.ensure_future(jobs.run("a", False, blocked(release, ran)))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(jobs.run("b", False, lambda: ran.append("gone")))
    await asyncio.sleep(0.05)
    gone.cancel()
    await asyncio.sleep(0.05)
    release.set()
    await holder
    assert await jobs.run("c", False, lambda: "after") == "after"
    assert len(ran) == 1 and "gone" not in ran
    assert metrics.COUNTS.db_waiting == 0 and not jobs.waiting and not jobs.turns
