"""The hub: one per worker process (and event loop), the async shell around the sequencer.

It is the process's only member of the channel layer (the doorbell), takes what commits
here, repairs gaps and polls from the log, feeds the engine on the event loop and routes
its updates to connections. Commands, store loads and log reads must
not queue behind each other on Channels' single sync thread, so they run on the hub's
own database threads; committed events come back with `call_soon_threadsafe`, and the
engine is touched only on the loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections, connections

from myko_django import conf
from myko_django.items.registry import registry
from myko_django.live.committed import CommittedEvent
from myko_django.live.engine import Engine
from myko_django.live.sequencer import Sequencer, Steps
from myko_django.live.updates import Update
from myko_django.log import append, publish
from myko_django.log.read import high_water, read_request, read_snapshot
from myko_django.server import doorbell, drain, gcpause, jobs, metrics

logger = logging.getLogger(__name__)

DB_THREADS = 8
REPAIR_BACKOFF = 0.02  # the first wait after a gap repair that found nothing (seconds)


def _in_db_thread(func: Callable, *args: Any, **kwargs: Any) -> Any:
    """A job on a database thread is handled like a request: connections past
    CONN_MAX_AGE or broken are closed before and after (with Django's connection pool,
    closing hands the connection back to the pool)."""
    close_old_connections()
    try:
        return func(*args, **kwargs)
    finally:
        close_old_connections()


def _high_water_once() -> int:
    try:
        return high_water()
    finally:
        connections.close_all()  # a throwaway thread: leave no connection behind


_frozen = False


def _freeze_startup_objects() -> None:
    """Once per process, when the first hub starts: collect, then move everything that
    exists (Django, the project's modules, settings: objects that live as long as the
    process) out of the cyclic GC's reach. A full collection walks every tracked object;
    with them it paused a worker serving 1,000 subscribers for 110-180 ms, without them
    for 20-80 ms."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


class Hub:
    """The sequencer and engine of this process, and the live connections they feed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, position: int) -> None:
        self.loop = loop
        self.engine = Engine({it.name: it.schema for it in registry})
        self.sequencer = Sequencer(self.engine, position)
        self.first_position = position  # applied since: sequencer.applied - first_position
        self.executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="myko-db")
        self.jobs = jobs.FairJobs(loop, self.executor, DB_THREADS)  # fair turns on them
        self.sinks: dict[Hashable, Callable[[Update], None]] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._repairing = False
        # After a repair that did not fill its gap (a position the log does not hold):
        # the next one waits this long (doubling up to POLL_INTERVAL), so a position far
        # beyond the log's head costs a few reads a second, not one per arriving event.
        self._repair_delay = 0.0
        self._repair_timer: asyncio.TimerHandle | None = None
        self._inbox: list[CommittedEvent] = []  # arrived, not yet offered to the sequencer
        self._unrung: list[CommittedEvent] = []  # committed here, not yet rung to the others
        self._unrung_at: float | None = None  # when the first of them committed (time.time)
        self._oldest_at: float | None = None  # commit time of the oldest event in the inbox
        self._flush_scheduled = False
        publish.add_listener(self._published)
        self._poller = loop.create_task(self._poll())
        self.doorbell = doorbell.Listener(self.receive)
        self.doorbell.start()
        doorbell.hub_rings(True)

    @classmethod
    async def start(cls) -> Hub:
        loop = asyncio.get_running_loop()
        position = await loop.run_in_executor(None, _high_water_once)
        _freeze_startup_objects()
        hub = cls(loop, position)
        drain.install(loop)  # under daphne: SIGTERM drains the sockets first (drain.py)
        return hub

    def close(self) -> None:
        """Stop listening and close the database threads' connections (one per thread)."""
        doorbell.hub_rings(False)
        publish.remove_listener(self._published)
        self._poller.cancel()
        if self._repair_timer is not None:
            self._repair_timer.cancel()
        self.doorbell.stop()
        # Every thread takes one job, held at the barrier until all threads have one.
        barrier = threading.Barrier(DB_THREADS, timeout=5)

        def close_connections() -> None:
            connections.close_all()
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass

        for _ in range(DB_THREADS):
            self.executor.submit(close_connections)
        self.executor.shutdown(wait=True, cancel_futures=False)

    async def db(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking database work of the hub itself on its threads, ahead of the
        connections' jobs (server/jobs.py)."""
        return await self.jobs.run(None, False, lambda: _in_db_thread(func, *args, **kwargs))

    async def db_for(
        self, owner: Hashable, heavy: bool, func: Callable, *args: Any, **kwargs: Any
    ) -> Any:
        """Run a connection's database work (`owner`: the connection's id) on the hub's
        threads when its turn comes; `heavy` jobs may hold only half of them."""
        return await self.jobs.run(owner, heavy, lambda: _in_db_thread(func, *args, **kwargs))

    # ---- connections ---------------------------------------------------------------

    def attach(self, conn: Hashable, sink: Callable[[Update], None]) -> None:
        self.sinks[conn] = sink

    def detach(self, conn: Hashable) -> None:
        self.sinks.pop(conn, None)
        self.engine.drop_connection(conn)

    def deliver(self, updates: Iterable[Update | None]) -> None:
        for update in updates:
            if update is None:
                continue
            sink = self.sinks.get(update.conn)
            if sink is not None:
                sink(update)

    # ---- events ----------------------------------------------------------------------

    def _published(self, events: list[CommittedEvent]) -> None:
        """Called after commit on whatever thread committed: apply here, tell the others."""
        try:
            self.loop.call_soon_threadsafe(self._committed_here, events, time.time())
        except RuntimeError:  # loop closed: this process is shutting down
            pass

    def _committed_here(self, events: list[CommittedEvent], at: float) -> None:
        if self.doorbell.layer is not None:
            if not self._unrung:
                self._unrung_at = at
            self._unrung.extend(events)
        self.receive(events, at)

    def receive(self, events: Iterable[CommittedEvent], at: float | None = None) -> None:
        """Take events (from this process's commits or the doorbell) and apply them in the
        next flush: everything that arrives while the loop is busy (sending the previous
        batch's frames) is applied together, so each subscription gets one message per
        flush however many commits it covers (with the latest state of each item), and an
        overloaded worker sends fewer, fuller messages instead of falling further behind.

        `at`: when they committed (time.time(), for the fan-out lag metric), if known."""
        if at is not None and (self._oldest_at is None or at < self._oldest_at):
            self._oldest_at = at
        self._inbox.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Ring the other workers once for what committed here, apply what arrived."""
        self._flush_scheduled = False
        if self._unrung:
            self.loop.create_task(doorbell.ring(self._unrung, at=self._unrung_at))
            self._unrung = []
        if self._inbox:
            events, self._inbox = self._inbox, []
            applied = self.sequencer.applied
            with gcpause.paused():
                self.deliver(self.sequencer.offer(events))
            at, self._oldest_at = self._oldest_at, None
            if at is not None and self.sequencer.applied > applied:  # once per flush
                metrics.COUNTS.fanout_seconds.observe(max(0.0, time.time() - at))
        if self.sequencer.gap() is not None:
            self._start_repair()

    def _start_repair(self) -> None:
        """Read the gap from the log, unless a repair runs or waits out its back-off."""
        if self._repairing or self._repair_timer is not None or self.sequencer.gap() is None:
            return
        self._repairing = True
        self.loop.create_task(self._repair())

    async def run(self, steps: Steps) -> None:
        """Run sequencer steps, reading the log on the database threads, and deliver."""
        try:
            with gcpause.paused():
                request = next(steps)
            while True:
                events = await self.db(read_request, request)
                with gcpause.paused():
                    request = steps.send(events)
        except StopIteration as done:
            with gcpause.paused():
                self.deliver(done.value)

    async def _repair(self) -> None:
        metrics.COUNTS.gap_repairs += 1
        try:
            await self.run(self.sequencer.fill_gaps())
        except Exception:
            logger.exception("myko: reading the event log to fill a gap failed")
        finally:
            self._repairing = False
        if self.sequencer.gap() is None:
            self._repair_delay = 0.0
            return
        # The log did not have it (yet): try again later, less often each time.
        delay = self._repair_delay = min(
            max(self._repair_delay * 2, REPAIR_BACKOFF), conf.get("POLL_INTERVAL")
        )
        self._repair_timer = self.loop.call_later(delay, self._backed_off)

    def _backed_off(self) -> None:
        self._repair_timer = None
        self._start_repair()

    async def _poll(self) -> None:
        """Writes from other processes reach us even when no doorbell rings: read what the
        log holds beyond what was applied every POLL_INTERVAL seconds (after positioning
        committed events left pending, log/append.py)."""
        interval = conf.get("POLL_INTERVAL")
        while True:
            await asyncio.sleep(interval)
            try:
                # Events whose writer died between its commit and positioning them.
                await self.db(append.position_stragglers)
                await self.run(self.sequencer.poll())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("myko: polling the event log failed")

    def lag(self) -> int:
        """Positions this hub has heard of (arrived, or buffered behind a gap) but not
        applied yet. What was committed but not heard of yet (no doorbell) shows up at the
        next poll, within POLL_INTERVAL."""
        applied = self.sequencer.applied
        gap = self.sequencer.gap()
        heard = max(applied, gap[1] if gap else applied, *(e.position for e in self._inbox))
        return heard - applied

    async def catch_up(self, position: int) -> None:
        """Return once every position <= `position` is applied here (read-your-writes)."""
        if self.sequencer.applied < position:
            self.flush()  # it may be waiting in the inbox: no need to read the log
        if self.sequencer.applied < position:
            await self.run(self.sequencer.catch_up(position))

    async def ensure_store(self, item_type: str) -> None:
        """Load a store once, off the loop; concurrent subscribers wait for the same load."""
        if self.engine.has_store(item_type):
            return
        future = self._loading.get(item_type)
        if future is not None:
            await asyncio.shield(future)
            return
        future = self._loading[item_type] = self.loop.create_future()
        try:
            snapshot = await self.db(read_snapshot, item_type)
            await self.run(self.sequencer.install(snapshot))
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved; the caller below re-raises it
            raise
        finally:
            del self._loading[item_type]


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}


async def get_hub() -> Hub:
    """The hub of the running loop, started on first use (daphne has no lifespan)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None:
        return hub
    starting = _starting.get(loop)
    if starting is not None:
        return await asyncio.shield(starting)
    starting = _starting[loop] = loop.create_future()
    try:
        hub = await Hub.start()
        _hubs[loop] = hub
        starting.set_result(hub)
    except BaseException as exc:
        starting.set_exception(exc)
        raise
    finally:
        del _starting[loop]
    return hub


def running_hub() -> Hub | None:
    """The hub of the running loop if it has started (never starts one)."""
    return _hubs.get(asyncio.get_running_loop())


def hubs() -> list[Hub]:
    """Every hub of this process (one per event loop; under daphne, one)."""
    return list(_hubs.values())


def reset() -> None:
    """Close every hub (tests start each one fresh against a fresh database)."""
    for hub in _hubs.values():
        hub.close()
    _hubs.clear()
