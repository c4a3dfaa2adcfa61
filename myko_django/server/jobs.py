"""Fair turns on the hub's database threads (docs/architecture.md, "Database threads").

Every command and client event batch runs on one of the hub's few threads. Handed to the
thread pool in arrival order, a handful of connections sending large event batches held
every thread for a minute (issue 13: eight 0.3 MB batches, 61-77 s), and every other
write of the worker waited behind them. Here:

- the hub's own jobs (store loads, log reads, user checks) go first: they are short and
  everything else waits for them;
- connections take turns, round robin: the next free thread goes to the connection that
  has waited longest, whatever one connection has queued (each connection runs its
  commands and events one at a time anyway, in its arrival order);
- heavy jobs (an event batch of more than HEAVY_EVENTS events) may hold at most half the
  threads, so the others always serve the single commands and events of everyone else.

A job cancelled before a thread took it never runs (as with `run_in_executor`); one that
runs finishes on its thread.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
from typing import Any

from myko_django.server import metrics

# An event batch of more events than this is a heavy job.
HEAVY_EVENTS = 100

_HUB = None  # the owner of the hub's own jobs


class _Job:
    __slots__ = ("call", "heavy", "future")

    def __init__(self, call: Callable[[], Any], heavy: bool, future: asyncio.Future) -> None:
        self.call, self.heavy, self.future = call, heavy, future


class FairJobs:
    """The hub's database jobs, given threads in fair turns (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: Executor, threads: int):
        self.loop = loop
        self.executor = executor
        self.free = threads
        self.heavy_most = max(1, threads // 2)
        self.heavy_running = 0
        self.waiting: dict[Hashable, collections.deque[_Job]] = {}
        self.turns: collections.deque[Hashable] = collections.deque()  # owners with jobs

    async def run(self, owner: Hashable, heavy: bool, call: Callable[[], Any]) -> Any:
        """Run `call` on a thread when `owner`'s turn comes (owner None: the hub's own job,
        first); cancelling the caller before then drops the job."""
        job = _Job(call, heavy, self.loop.create_future())
        queue = self.waiting.get(owner)
        if queue is None:
            queue = self.waiting[owner] = collections.deque()
            if owner is not _HUB:
                self.turns.append(owner)
        queue.append(job)
        metrics.COUNTS.db_waiting += 1
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(owner, job)
            raise

    def _drop(self, owner: Hashable, job: _Job) -> None:
        """A job whose caller went away: forgotten if it still waits."""
        queue = self.waiting.get(owner)
        if queue is None or job not in queue:
            return
        queue.remove(job)
        metrics.COUNTS.db_waiting -= 1
        if not queue:
            self._forget(owner)

    def _forget(self, owner: Hashable) -> None:
        del self.waiting[owner]
        if owner is not _HUB:
            self.turns.remove(owner)

    def _next(self) -> _Job | None:
        """The hub's next job, else the first job of the first owner in turn that may run
        now; that owner goes to the back of the turns."""
        queue = self.waiting.get(_HUB)
        if queue:
            job = queue.popleft()
            if not queue:
                self._forget(_HUB)
            return job
        for _ in range(len(self.turns)):
            owner = self.turns[0]
            self.turns.rotate(-1)
            queue = self.waiting[owner]
            if queue[0].heavy and self.heavy_running >= self.heavy_most:
                continue
            job = queue.popleft()
            if not queue:
                self._forget(owner)
            return job
        return None

    def _dispatch(self) -> None:
        while self.free > 0:
            job = self._next()
            if job is None:
                return
            metrics.COUNTS.db_waiting -= 1
            if job.future.done():  # cancelled, not yet dropped
                continue
            self.free -= 1
            if job.heavy:
                self.heavy_running += 1
            running = self.executor.submit(job.call)
            running.add_done_callback(lambda done, job=job: self._threadsafe_done(job, done))

    def _threadsafe_done(self, job: _Job, done: ThreadFuture) -> None:
        try:
            self.loop.call_soon_threadsafe(self._done, job, done)
        except RuntimeError:  # the loop is closed: the process is ending
            pass

    def _done(self, job: _Job, done: ThreadFuture) -> None:
        self.free += 1
        if job.heavy:
            self.heavy_running -= 1
        if not job.future.done():
            exc = done.exception()
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(done.result())
        self._dispatch()
