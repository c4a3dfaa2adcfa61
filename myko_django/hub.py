"""Feeds one process's engine every committed event exactly once, in position order.

Events arrive from `publish` (after commit, from any thread, possibly out of order) and,
later, from other workers through the channel layer. Whatever the doorbell, the log is the
truth: a gap below an arrived position is read from the log, because positions are handed
out in commit order (eventlog.py), so everything below a committed position is committed.
The Hub does no locking of its own: callers serialize `receive`, `install` and `catch_up`
(the async server runs them on its event loop; `testing.LiveSession` is single-threaded).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import connections, transaction

from . import eventlog
from .engine import Engine, Event, Update
from .registry import registry

# How many applied events to keep for stores loaded a little behind the hub.
HISTORY = 10_000


@dataclass(frozen=True)
class Snapshot:
    """An item table as committed at log position `position`."""

    item_type: str
    items: list[dict]
    position: int


def read_snapshot(item_type: str, using: str = "default") -> Snapshot:
    """Read a table and the log's high-water mark in one consistent read (blocking I/O)."""
    it = registry.get(item_type)
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        position = eventlog.high_water(using)
        rows = it.model._base_manager.using(using).values_list(*it.attnames)
        items = list(it.encode_values(rows.iterator(chunk_size=2000)))
    return Snapshot(it.name, items, position)


class NeedsLog(Exception):
    """A store install must first read the log's events in (after, upto] of its type."""

    def __init__(self, after: int, upto: int) -> None:
        super().__init__(after, upto)
        self.after, self.upto = after, upto


def read_missed(item_type: str, after: int, upto: int, using: str = "default") -> list[Event]:
    """The events of one type in (after, upto], for an install (blocking I/O)."""
    return list(eventlog.read(after, upto, item_type=item_type, using=using))


class Hub:
    """Orders events by position, repairs gaps from the log, and feeds the engine."""

    def __init__(
        self, engine: Engine | None = None, *, position: int | None = None, using: str = "default"
    ) -> None:
        self.engine = engine or Engine({it.name: it.schema for it in registry})
        self.using = using
        self.applied = eventlog.high_water(using) if position is None else position
        self._early: dict[int, Event] = {}
        self._history: collections.deque[Event] = collections.deque(maxlen=HISTORY)
        self.repairs = 0  # times a gap was read from the log (for tests and stats)

    def offer(self, events: Iterable[Event]) -> list[Update]:
        """Take events from any doorbell and apply what is now contiguous (no I/O)."""
        for event in events:
            if event.position > self.applied:
                self._early.setdefault(event.position, event)
        return self._drain()

    def gap(self) -> tuple[int, int] | None:
        """(after, upto): positions to read from the log before buffered events can apply."""
        if self._early and self.applied + 1 not in self._early:
            return self.applied, max(self._early)
        return None

    def receive(self, events: Iterable[Event]) -> list[Update]:
        """`offer`, then read any gap from the log (blocking I/O)."""
        updates = self.offer(events)
        gap = self.gap()
        if gap is not None:
            self._read_log(upto=gap[1])
            updates += self._drain()
        return updates

    def catch_up(self, position: int) -> list[Update]:
        """Make sure every position <= `position` is applied (read-your-writes)."""
        if position <= self.applied:
            return []
        if not all(p in self._early for p in range(self.applied + 1, position + 1)):
            self._read_log(upto=position)
        return self._drain()

    def poll(self) -> list[Update]:
        """Apply whatever the log has beyond what we applied (for a silent doorbell)."""
        self._read_log(upto=None)
        return self._drain()

    def install(
        self, snapshot: Snapshot, read: Sequence[Event] = (), read_upto: int = 0
    ) -> list[Update]:
        """Load a store read by `read_snapshot`, replaying what the hub applied since.

        The replay comes from the hub's recent history; where that does not reach back far
        enough it raises NeedsLog, and the caller reads those events (off the event loop)
        and calls again with them as `read`, read up to `read_upto` (no I/O here).
        """
        if self.engine.has_store(snapshot.item_type):
            return []
        start = max(snapshot.position, read_upto)
        if start < self.applied and not (self._history and self._history[0].position <= start + 1):
            raise NeedsLog(start, self.applied)
        missed = [e for e in read if e.position > snapshot.position]
        missed += [
            e
            for e in self._history
            if start < e.position <= self.applied and e.item_type == snapshot.item_type
        ]
        self.engine.load_store(snapshot.item_type, snapshot.items, snapshot.position)
        return self.engine.apply(missed)

    def ensure_store(self, item_type: str) -> list[Update]:
        """Synchronous load (tests, management commands); the server loads off-loop."""
        if self.engine.has_store(item_type):
            return []
        snapshot = read_snapshot(item_type, self.using)
        read: list[Event] = []
        read_upto = 0
        while True:
            try:
                return self.install(snapshot, read, read_upto)
            except NeedsLog as need:
                read += read_missed(item_type, need.after, need.upto, self.using)
                read_upto = need.upto

    def _read_log(self, upto: int | None) -> None:
        for event in eventlog.read(self.applied, upto, using=self.using):
            self._early.setdefault(event.position, event)
        self.repairs += 1

    def _drain(self) -> list[Update]:
        batch: list[Event] = []
        while self.applied + 1 in self._early:
            event = self._early.pop(self.applied + 1)
            batch.append(event)
            self.applied = event.position
        if not batch:
            return []
        self._history.extend(batch)
        return self.engine.apply(batch)
