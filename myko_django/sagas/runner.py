"""The loop of `manage.py myko_sagas`: follow the log from each saga's checkpoint.

Waking: the runner joins the workers' doorbell (server/doorbell.py) on a thread of its
own and also hears what this process commits itself, so a write reaches the saga within
milliseconds; without a channel layer, or when a ring is lost, it polls the log's head
every `MYKO["POLL_INTERVAL"]` seconds, as the workers do. No database trigger: NOTIFY
would take a lock at every writer's commit.

One active runner per saga: on Postgres a session-level advisory lock per saga, held on a
connection of its own (so Django closing or pooling its connections never drops it);
when the active process dies, Postgres ends its session and a standby, which tries every
`STANDBY_RETRY` seconds, takes over. Exactly-once does not rest on the lock: each
transaction checks the checkpoint it advances (runtime.py). Elsewhere (SQLite) there is
no lock, and a second runner only finds the checkpoint moved.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections

from myko_django import conf
from myko_django.items.sagas import Saga
from myko_django.live.filters import Filter
from myko_django.log import append, publish
from myko_django.log.read import high_water, read_logged
from myko_django.sagas import runtime
from myko_django.server import doorbell

logger = logging.getLogger(__name__)

PAGE = 1000  # events read from the log at once
STANDBY_RETRY = 0.5  # seconds between a standby's attempts to take a saga over
LOCK_CHECK = 1.0  # seconds between checks that the lock's connection is alive
# A transaction handles events until it has run this long (or MAX_GROUP events): one
# commit for many events when catching up, without holding its row locks (on SQLite, the
# database's write lock) long.
GROUP_SECONDS = 0.05
MAX_GROUP = 500
DRAIN_SECONDS = 0.5  # time given to one saga before the next one's turn
LOCK_CLASS = 0x73616761  # "saga": the first key of the advisory locks (two-int form)


def lock_key(name: str) -> tuple[int, int]:
    """The advisory lock of a saga: ("saga", a signed 32-bit hash of its name)."""
    return LOCK_CLASS, zlib.crc32(name.encode()) - 2**31


class Leadership:
    """Which sagas this process may run: Postgres advisory locks on a dedicated
    connection; without Postgres, every saga (the checkpoint check keeps it exactly-once)."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self.exclusive = connections[using].vendor == "postgresql"
        self.conn: Any = None
        self.held: set[str] = set()
        self.checked = 0.0

    def holds(self, name: str) -> bool:
        return not self.exclusive or name in self.held

    def try_take(self, name: str) -> bool:
        if not self.exclusive:
            return True
        if name in self.held:
            return True
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock_key(name)).fetchone()
        except Exception as exc:  # the database is away: stay standby, try again later
            logger.warning("myko: sagas: could not try the lock of %s: %s", name, exc)
            self._drop()
            return False
        if row[0]:
            self.held.add(name)
        return bool(row[0])

    def check(self) -> None:
        """Every LOCK_CHECK seconds: is the lock's session alive? If not, every lock is
        gone (Postgres released them), and this process is standby again."""
        if not self.exclusive or not self.held or time.monotonic() - self.checked < LOCK_CHECK:
            return
        self.checked = time.monotonic()
        try:
            self.conn.execute("SELECT 1").fetchone()
        except Exception as exc:
            logger.warning("myko: sagas: lost the locks' connection (%s); standing by", exc)
            self._drop()

    def release_all(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()  # ends the session: Postgres releases its locks
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self._drop()

    def _connection(self) -> Any:
        if self.conn is None:
            import psycopg  # noqa: PLC0415 - only on Postgres (the `postgres` extra)

            wrapper = connections[self.using]
            params = wrapper.get_connection_params()
            self.conn = psycopg.connect(autocommit=True, **params)
        return self.conn

    def _drop(self) -> None:
        self.held.clear()
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.conn = None


@dataclass
class _Follower:
    """One saga as this process follows it."""

    saga: Saga
    flt: Filter | None
    position: int | None = None  # the checkpoint, once this process holds the saga
    next_try: float = 0.0
    page: list = field(default_factory=list)  # events read, wanted, not handled yet
    page_end: int = 0  # the position the page was read up to


class Runner:
    """Runs `sagas` until `stop` is set (or, with `once`, until all are caught up)."""

    def __init__(
        self,
        sagas: Sequence[Saga],
        *,
        start: str | int | None = None,
        using: str = "default",
        poll_interval: float | None = None,
        listen: bool = True,
    ) -> None:
        self.followers = [_Follower(s, s.compiled_filter()) for s in sagas]
        self.start = start
        self.using = using
        self.poll_interval = poll_interval or conf.get("POLL_INTERVAL")
        self.leadership = Leadership(using)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.listen = listen
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ringing = False
        self._to_ring: list = []
        self._ring_at: float | None = None
        self._ring_task: asyncio.Task | None = None
        self._stragglers_at = 0.0

    # ---- waking, and ringing the workers ---------------------------------------------

    def _published(self, events: Any) -> None:
        """This process committed (a saga's writes): look again, and ring the workers from
        the loop thread, so the saga's thread never waits on Redis."""
        self.wake.set()
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._queue_ring, list(events), time.time())

    def _queue_ring(self, events: list, at: float) -> None:
        self._to_ring.extend(events)
        self._ring_at = self._ring_at or at
        if self._ring_task is None or self._ring_task.done():
            self._ring_task = asyncio.get_running_loop().create_task(self._ring())

    async def _ring(self) -> None:
        while self._to_ring:  # what commits while a ring is sent goes in the next one
            events, at = self._to_ring, self._ring_at
            self._to_ring, self._ring_at = [], None
            await doorbell.ring(events, self.using, at=at)

    def _start_loop(self) -> None:
        publish.add_listener(self._published)
        if doorbell.layer() is None:
            return  # one process (or none to reach): polling covers other writers
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            listener = None
            if self.listen:
                listener = doorbell.Listener(lambda events, at: self.wake.set(), self.using)
                listener.start()
            ready.set()
            while not self.stop.is_set():
                await asyncio.sleep(0.1)
            if listener is not None:
                listener.stop()
            if self._ring_task is not None:
                await self._ring_task

        def thread() -> None:
            try:
                asyncio.run(main())
            except Exception:  # the log is the truth: polling goes on
                logger.exception("myko: sagas: the doorbell thread stopped")
            finally:
                self._loop = None
                ready.set()

        self._thread = threading.Thread(target=thread, name="myko-sagas-doorbell", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._loop is not None:
            doorbell.hub_rings(True)  # this process rings from its loop, not per commit
            self._ringing = True

    def _stop_loop(self) -> None:
        publish.remove_listener(self._published)
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._ringing:
            doorbell.hub_rings(False)
            self._ringing = False

    # ---- the loop ---------------------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        """Follow the log until `stop` is set; with `once`, return when every saga this
        process holds has handled the log up to its head."""
        self._start_loop()
        try:
            while not self.stop.is_set():
                self.wake.clear()
                try:
                    busy = self.round()
                except DatabaseError as exc:
                    logger.warning("myko: sagas: database error (%s); retrying in 1s", exc)
                    connections[self.using].close()
                    self.stop.wait(1.0)
                    continue
                if once and not busy:
                    return
                if not busy:
                    standby = any(f.position is None for f in self.followers)
                    wait = min(self.poll_interval, STANDBY_RETRY) if standby else self.poll_interval
                    self.wake.wait(wait)
        finally:
            self._stop_loop()
            self.leadership.release_all()
            if not connections[self.using].in_atomic_block:  # (a test's transaction)
                connections[self.using].close()

    def round(self) -> bool:
        """One turn for every saga; whether any handled something (more may be waiting)."""
        self.leadership.check()
        if time.monotonic() - self._stragglers_at > self.poll_interval:
            # Events a writer committed but died before positioning (log/append.py), as
            # the workers' hubs do on their poll: a saga may be all that is running.
            self._stragglers_at = time.monotonic()
            try:
                append.position_stragglers(self.using)
            except DatabaseError as exc:  # the sagas go on; the next poll tries again
                logger.warning("myko: sagas: positioning stragglers failed: %s", exc)
                connections[self.using].close()
        busy = False
        head = high_water(self.using)
        for f in self.followers:
            if self.stop.is_set():
                break
            if not self.leadership.holds(f.saga.name):
                f.position, f.page = None, []
                if time.monotonic() < f.next_try:
                    continue
                f.next_try = time.monotonic() + STANDBY_RETRY
                if not self.leadership.try_take(f.saga.name):
                    continue
                logger.info("myko: sagas: %s is active in this process", f.saga.name)
            if f.position is None:
                f.position = runtime.load_checkpoint(f.saga, self.start, self.using)
            busy |= self.drain(f, head)
        return busy

    def drain(self, f: _Follower, head: int) -> bool:
        """Handle what is waiting for one saga, for at most DRAIN_SECONDS."""
        deadline = time.monotonic() + DRAIN_SECONDS
        worked = False
        while f.position < head and not self.stop.is_set():
            try:
                self.step(f, head)
            except runtime.CheckpointMoved as exc:
                logger.warning("myko: sagas: %s; reloading", exc)
                f.position = runtime.load_checkpoint(f.saga, self.start, self.using)
                f.page = []
                continue
            worked = True
            if time.monotonic() > deadline:
                return True
        return worked

    def step(self, f: _Follower, head: int) -> None:
        """Handle the next events after the checkpoint, as many as one transaction should
        hold (GROUP_SECONDS); a failing event is retried, then parked. Events are read a
        page at a time and kept until handled."""
        saga = f.saga
        if not f.page:
            events = read_logged(
                f.position, head, item_type=saga.item_type, limit=PAGE, using=self.using
            )
            f.page_end = events[-1].position if len(events) == PAGE else head
            f.page = [e for e in events if runtime.wants(saga, f.flt, e)]
            if not f.page:  # nothing for this saga up to there: move the checkpoint
                f.position = runtime.commit(saga, f.position, [], f.page_end, self.using)
                return
        group = f.page[: saga.batch or MAX_GROUP]
        upto = f.page_end if len(group) == len(f.page) else group[-1].position
        budget = None if saga.batch else GROUP_SECONDS
        try:
            f.position = runtime.commit(saga, f.position, group, upto, self.using, budget=budget)
        except runtime.HandlerFailed as failure:
            if saga.batch is None and failure.index > 0:
                # Commit what ran before the failing event; it comes first next time.
                before = group[failure.index - 1].position
                try:
                    f.position = runtime.commit(
                        saga, f.position, group[: failure.index], before, self.using
                    )
                except runtime.HandlerFailed:
                    # A flaky handler failed earlier this time: nothing committed, and the
                    # next step starts again at the checkpoint (retrying, then parking).
                    pass
            else:
                self._retry(f, group, failure)
        f.page = [e for e in f.page if e.position > f.position]

    def _retry(self, f: _Follower, group: list, failure: runtime.HandlerFailed) -> None:
        """The first event of `group` (or, batched, the group) failed once: retry it alone
        with back-off, then park it. A failing batch is split into single events first."""
        saga = f.saga
        if saga.batch and len(group) > 1:
            for event in group:  # one at a time, so only the poison events park
                if self.stop.is_set():
                    return
                self._retry_one(f, event, None)
            return
        self._retry_one(f, group[0], failure)

    def _retry_one(self, f: _Follower, event: Any, failure: runtime.HandlerFailed | None) -> None:
        saga = f.saga
        attempts = 0
        if failure is not None:
            attempts = 1
        while True:
            if failure is not None:
                if attempts > saga.retries:
                    break
                delay = saga.backoff * 2 ** (attempts - 1)
                logger.warning(
                    "myko: saga %s failed on event %d (attempt %d): %s; retrying in %.2fs",
                    saga.name,
                    event.position,
                    attempts,
                    failure.message,
                    delay,
                )
                if self.stop.wait(delay):
                    return  # stopping: the event is handled by whoever runs next
            try:
                runtime.commit(saga, f.position, [event], event.position, self.using)
            except runtime.HandlerFailed as again:
                failure = again
                attempts += 1
                continue
            f.position = event.position
            return
        runtime.park(saga, f.position, event, failure, attempts, self.using)
        f.position = event.position
