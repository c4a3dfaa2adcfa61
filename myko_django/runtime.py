"""The per-process async shell around the hub: owns the engine on the event loop, runs
database work on a dedicated thread pool, and routes updates to connections.

DESIGN.md "Threads": commands, snapshot loads and gap repair must not queue behind each
other on Channels' single sync thread, so they get their own executor; committed events
come back to the loop with `call_soon_threadsafe`; the engine is touched only on the loop.
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

from . import conf, doorbell, eventlog, gcpause, publish
from .engine import Event, Update
from .hub import Hub, NeedsLog, read_missed, read_snapshot

logger = logging.getLogger(__name__)

DB_THREADS = 8
# How long a pool thread keeps its connection when CONN_MAX_AGE is 0 (Django's default).
POOL_CONN_MAX_AGE = 300.0


def _keep_connections() -> None:
    """CONN_MAX_AGE = 0 means "close at the end of each request"; the pool's threads serve
    jobs, not requests, and a new connection per command (a fresh Postgres backend with
    cold caches) cost more than the command itself (18 ms vs 4 ms for a one-event
    command). So a connection opened here lives POOL_CONN_MAX_AGE seconds instead."""
    for conn in connections.all(initialized_only=True):
        raw = conn.connection
        if raw is not None and conn.settings_dict.get("CONN_MAX_AGE") == 0:
            if getattr(conn, "_myko_kept", None) is not raw:
                conn._myko_kept = raw
                conn.close_at = time.monotonic() + POOL_CONN_MAX_AGE
                # Kept this long, it may have died (a database restart): check before use.
                conn.health_check_enabled = True


def _in_db_thread(func: Callable, *args: Any, **kwargs: Any) -> Any:
    close_old_connections()
    try:
        return func(*args, **kwargs)
    finally:
        # Keep the connection for the next job unless it is broken or too old.
        _keep_connections()
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()


def _high_water_once() -> int:
    try:
        return eventlog.high_water()
    finally:
        connections.close_all()  # a throwaway thread: leave no connection behind


_frozen = False


def _freeze_startup_objects() -> None:
    """Once per process, when the first runtime starts: collect, then move everything that
    exists (Django, the project's modules, settings: objects that live as long as the
    process) out of the cyclic GC's reach. A full collection walks every tracked object;
    with them it paused a worker serving 1,000 subscribers for 110-180 ms, without them
    for 20-80 ms."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def _read_log(after: int, upto: int) -> list[Event]:
    return list(eventlog.read(after, upto))


class Runtime:
    """One per process (and event loop): the hub, its engine, and the live connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hub: Hub) -> None:
        self.loop = loop
        self.hub = hub
        self.engine = hub.engine
        self.executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="myko-db")
        self.sinks: dict[Hashable, Callable[[Update], None]] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._repairing = False
        self._inbox: list[Event] = []  # arrived, not yet offered to the hub
        self._unrung: list[Event] = []  # committed here, not yet rung to the other workers
        self._flush_scheduled = False
        publish.add_listener(self._published)
        self._poller = loop.create_task(self._poll())
        self.doorbell = doorbell.Listener(self.receive)
        self.doorbell.start()

    @classmethod
    async def start(cls) -> Runtime:
        loop = asyncio.get_running_loop()
        position = await loop.run_in_executor(None, _high_water_once)
        _freeze_startup_objects()
        return cls(loop, Hub(position=position))

    def close(self) -> None:
        """Stop listening and close the pool's database connections (each is per thread)."""
        publish.remove_listener(self._published)
        self._poller.cancel()
        self.doorbell.stop()
        threads = len(self.executor._threads)
        if threads:
            barrier = threading.Barrier(threads, timeout=5)

            def close_connections() -> None:
                connections.close_all()
                try:
                    barrier.wait()  # hold this thread so every thread gets one job
                except threading.BrokenBarrierError:
                    pass

            for _ in range(threads):
                self.executor.submit(close_connections)
        self.executor.shutdown(wait=True, cancel_futures=False)

    async def db(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run blocking database work on the runtime's pool."""
        return await self.loop.run_in_executor(
            self.executor, lambda: _in_db_thread(func, *args, **kwargs)
        )

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

    def _published(self, events: list[Event]) -> None:
        """Called after commit on whatever thread committed: apply here, tell the others."""
        try:
            self.loop.call_soon_threadsafe(self._committed_here, events)
        except RuntimeError:  # loop closed: this process is shutting down
            pass

    def _committed_here(self, events: list[Event]) -> None:
        if self.doorbell.layer is not None:
            self._unrung.extend(events)
        self.receive(events)

    def receive(self, events: Iterable[Event]) -> None:
        """Take events (from this process's commits or the doorbell) and apply them in the
        next flush: everything that arrives while the loop is busy (sending the previous
        batch's frames) is applied together, so each subscription gets one message per
        flush however many commits it covers (DESIGN.md inv. 3), and an overloaded worker
        sends fewer, fuller messages instead of falling further behind."""
        self._inbox.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Ring the other workers once for what committed here, apply what arrived."""
        self._flush_scheduled = False
        if self._unrung:
            self.loop.create_task(doorbell.ring(self._unrung))
            self._unrung = []
        if self._inbox:
            events, self._inbox = self._inbox, []
            with gcpause.paused():
                self.deliver(self.hub.offer(events))
        if self.hub.gap() is not None and not self._repairing:
            self._repairing = True
            self.loop.create_task(self._repair())

    async def _repair(self) -> None:
        try:
            while (gap := self.hub.gap()) is not None:
                after, upto = gap
                events = await self.db(_read_log, after, upto)
                with gcpause.paused():
                    self.deliver(self.hub.offer(events))
        except Exception:
            logger.exception("myko: reading the event log to fill a gap failed")
        finally:
            self._repairing = False

    async def _poll(self) -> None:
        """Writes from other processes reach us even when no doorbell rings: look at the
        log's high-water mark every POLL_INTERVAL seconds and read what we lack."""
        interval = conf.get("POLL_INTERVAL")
        while True:
            await asyncio.sleep(interval)
            try:
                high = await self.db(eventlog.high_water)
                if high > self.hub.applied:
                    await self.catch_up(high)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("myko: polling the event log failed")

    async def catch_up(self, position: int) -> None:
        """Return once every position <= `position` is applied here (read-your-writes)."""
        if self.hub.applied < position:
            self.flush()  # it may be waiting in the inbox: no need to read the log
        while self.hub.applied < position:
            after = self.hub.applied
            events = await self.db(_read_log, after, position)
            with gcpause.paused():
                self.deliver(self.hub.offer(events))

    async def ensure_store(self, item_type: str) -> None:
        """Load a store once, off the loop; concurrent subscribers wait for the same load."""
        if self.engine.has_store(item_type):
            return
        future = self._loading.get(item_type)
        if future is None:
            future = self.loop.create_future()
            self._loading[item_type] = future
            try:
                snapshot = await self.db(read_snapshot, item_type)
                read: list[Event] = []
                read_upto = 0
                while True:
                    try:
                        self.deliver(self.hub.install(snapshot, read, read_upto))
                        break
                    except NeedsLog as need:  # more applied meanwhile than history keeps
                        read += await self.db(read_missed, item_type, need.after, need.upto)
                        read_upto = need.upto
                future.set_result(None)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved; the caller below re-raises it
                raise
            finally:
                del self._loading[item_type]
        else:
            await asyncio.shield(future)


_runtimes: dict[asyncio.AbstractEventLoop, Runtime] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}


async def get_runtime() -> Runtime:
    """The runtime of the running loop, started on first use (daphne has no lifespan)."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is not None:
        return runtime
    starting = _starting.get(loop)
    if starting is None:
        starting = _starting[loop] = loop.create_future()
        try:
            runtime = await Runtime.start()
            _runtimes[loop] = runtime
            starting.set_result(runtime)
        except BaseException as exc:
            starting.set_exception(exc)
            raise
        finally:
            del _starting[loop]
        return runtime
    return await asyncio.shield(starting)


def running() -> bool:
    """Whether this process has a runtime (which then rings the doorbell itself)."""
    return bool(_runtimes)


def reset() -> None:
    """Forget every runtime (tests start each one fresh against a fresh database)."""
    for runtime in _runtimes.values():
        runtime.close()
    _runtimes.clear()
