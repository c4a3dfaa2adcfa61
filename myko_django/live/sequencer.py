"""Feeds one engine every committed event exactly once, in position order.

Events arrive from this process's commits and from other workers' doorbell: out of order,
twice, or not at all. Whatever the doorbell, the log is the truth: positions are handed
out in commit order, so everything below a committed position is committed and a gap can
be read from the log.

The sequencer does no I/O. The work that may need the log (filling gaps, catching up to
a position, polling, installing a store) is written once, as a generator of `Steps`: it
yields a `LogRead` and is sent back the events read. A driver runs it with blocking reads
(`run_sync`, for `myko_django.testing`) or awaited ones (the server's hub). Callers
serialize the calls (the hub runs them on its event loop).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

from myko_django.live.committed import CommittedEvent
from myko_django.live.engine import Engine
from myko_django.live.updates import Update

# How many applied events to keep for stores loaded a little behind the sequencer.
HISTORY = 10_000


@dataclass(frozen=True)
class LogRead:
    """A request for the committed events in (after, upto], of one type or all."""

    after: int
    upto: int | None  # None: up to the end of the log
    item_type: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """An item table as committed at log position `position`."""

    item_type: str
    items: list[dict]
    position: int


Steps = Generator[LogRead, list[CommittedEvent], list[Update]]


class Sequencer:
    """Orders events by position, asks the log for gaps, and feeds the engine."""

    def __init__(self, engine: Engine, position: int) -> None:
        self.engine = engine
        self.applied = position
        self._early: dict[int, CommittedEvent] = {}
        self._history: collections.deque[CommittedEvent] = collections.deque(maxlen=HISTORY)
        self.log_reads = 0  # times the log was read (for tests and stats)
        # The highest position a read of the whole log returned. Once a position is visible
        # every lower one is too, so a position below it that the read did not return was
        # removed by compaction (log/compaction.py): superseded by a later event of its
        # item, which the read did return. Such holes are stepped over, never waited for.
        self._read_upto = 0
        self.holes_skipped = 0

    def offer(self, events: Iterable[CommittedEvent]) -> list[Update]:
        """Take events from any source and apply what is now contiguous."""
        for event in events:
            if event.position > self.applied:
                self._early.setdefault(event.position, event)
        return self._drain()

    def gap(self) -> tuple[int, int] | None:
        """(after, upto): positions to read from the log before buffered events can apply."""
        if self._early and self.applied + 1 not in self._early:
            return self.applied, max(self._early)
        return None

    def fill_gaps(self) -> Steps:
        """Read every gap below the buffered events from the log."""
        updates: list[Update] = []
        while (gap := self.gap()) is not None:
            before = self.applied
            updates += self._offer_read((yield LogRead(*gap)))
            if self.applied == before:
                break  # the log does not have it (yet): the next poll tries again
        return updates

    def catch_up(self, position: int) -> Steps:
        """Apply every position <= `position` (read-your-writes after a commit)."""
        updates: list[Update] = []
        while self.applied < position:
            before = self.applied
            updates += self._offer_read((yield LogRead(before, position)))
            if self.applied == before:
                break
        return updates

    def poll(self) -> Steps:
        """Apply whatever the log holds beyond what was applied (for a silent doorbell)."""
        return self._offer_read((yield LogRead(self.applied, None)))

    def install(self, snapshot: Snapshot) -> Steps:
        """Load a store read at `snapshot.position`, replaying what was applied since.

        The replay comes from the recent history; where that does not reach back far
        enough (more was applied meanwhile than it keeps), the events are read."""
        read: list[CommittedEvent] = []
        read_upto = 0
        while not self.engine.has_store(snapshot.item_type):
            start = max(snapshot.position, read_upto)
            history = self._history
            if start < self.applied and not (history and history[0].position <= start + 1):
                upto = self.applied
                read += yield LogRead(start, upto, snapshot.item_type)
                read_upto = upto
                continue
            missed = [e for e in read if e.position > snapshot.position]
            missed += [
                e
                for e in history
                if start < e.position <= self.applied and e.item_type == snapshot.item_type
            ]
            self.engine.load_store(snapshot.item_type, snapshot.items, snapshot.position)
            return self.engine.apply(missed)
        return []

    def _offer_read(self, events: list[CommittedEvent]) -> list[Update]:
        """Events read from the whole log (not one type's)."""
        self.log_reads += 1
        if events:
            self._read_upto = max(self._read_upto, max(e.position for e in events))
        return self.offer(events)

    def _drain(self) -> list[Update]:
        batch: list[CommittedEvent] = []
        while True:
            event = self._early.pop(self.applied + 1, None)
            if event is not None:
                batch.append(event)
                self.applied = event.position
            elif self.applied + 1 < self._read_upto and self._early:
                # A hole left by compaction: go on at the next event there is.
                following = min(self._early)
                if following > self._read_upto:
                    break
                self.holes_skipped += following - 1 - self.applied
                self.applied = following - 1
            else:
                break
        if not batch:
            return []
        self._history.extend(batch)
        return self.engine.apply(batch)


def run_sync(steps: Steps, read: Callable[[LogRead], list[CommittedEvent]]) -> list[Update]:
    """Run sequencer steps with a blocking `read` of the log."""
    try:
        request = next(steps)
        while True:
            request = steps.send(read(request))
    except StopIteration as done:
        return done.value
