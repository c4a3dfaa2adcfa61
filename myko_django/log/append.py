"""Appending to the event log.

Positions are handed out by one counter row that the appending transaction updates and
so keeps locked until it commits (or rolls back, which hands nothing out). A second
writer waits on that row lock, so positions are gap-free and in commit order: once P is
committed, every position below P is committed too. A Postgres sequence would number rows
at insert time instead, and a reader could see P+1 before P commits. Writers are only
serialized from their append to their commit, so callers append last, just before commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from myko_django.live.committed import CommittedEvent
from myko_django.log import django_internals, publish
from myko_django.log.tables import Event

_NEXT_POSITIONS_SQL = """
INSERT INTO myko_position (id, last)
VALUES (1, (SELECT COALESCE(MAX(position), 0) FROM myko_event) + %s)
ON CONFLICT (id) DO UPDATE SET last = myko_position.last + %s
RETURNING last
"""


@dataclass(frozen=True)
class Pending:
    """A change about to be appended: no position yet."""

    change_type: str
    item_type: str
    item_id: str
    item: dict[str, Any] | None


def append(
    pending: Sequence[Pending], *, tx: str | None, source_id: str | None, using: str = "default"
) -> int:
    """Append events inside the caller's transaction; publish them once it commits.

    Returns the last position handed out.
    """
    if not pending:
        return 0
    last, committed = _insert(pending, tx, source_id, using)
    _publish_on_commit(committed, using)
    return last


class _Publish:
    """An on_commit callback publishing events; later appends join it (see below)."""

    __slots__ = ("events",)

    def __init__(self, events: list[CommittedEvent]) -> None:
        self.events = events

    def __call__(self) -> None:
        publish.committed(self.events)


def _publish_on_commit(committed: list[CommittedEvent], using: str) -> None:
    """Publish after commit, joining the previous append's publication when it was made
    under the same savepoints (so a rollback drops both or neither): an admin action or a
    loop of saves in one transaction then reaches subscribers as one update."""
    callback = django_internals.last_on_commit_here(using)
    if isinstance(callback, _Publish):
        callback.events.extend(committed)
        return
    transaction.on_commit(_Publish(committed), using=using)


class _Deferred:
    """Events captured in a transaction that appends them just before it commits.

    Registered with `on_commit` from the start: Django drops the registration when the
    savepoint it was made in rolls back, so `append_deferred` finds only what survived.
    After commit the first surviving one publishes the transaction's events, positions
    filled in by then (one publication, so one update per subscription).
    """

    __slots__ = ("pending", "committed")

    def __init__(self, pending: Sequence[Pending]) -> None:
        self.pending = pending
        self.committed: list[CommittedEvent] | None = None

    def __call__(self) -> None:
        if self.committed:
            publish.committed(self.committed)


def defer(pending: Sequence[Pending], using: str = "default") -> None:
    """Keep events for `append_deferred` at the end of the current transaction."""
    if not connections[using].in_atomic_block:
        raise RuntimeError("myko: events must be appended inside a transaction")
    transaction.on_commit(_Deferred(pending), using=using)


def append_deferred(*, tx: str | None, source_id: str | None, using: str = "default") -> int:
    """Append, in capture order, every deferred event of this transaction not rolled back;
    the last step before commit, so the position lock is held only from here to commit."""
    batches = [
        callback
        for callback in django_internals.on_commit_callbacks(using)
        if isinstance(callback, _Deferred) and callback.committed is None
    ]
    pending = [p for batch in batches for p in batch.pending]
    if not pending:
        return 0
    last, committed = _insert(pending, tx, source_id, using)
    # One publication for the transaction: the first callback carries every event.
    batches[0].committed = committed
    for batch in batches[1:]:
        batch.committed = []
    return last


def _insert(
    pending: Sequence[Pending], tx: str | None, source_id: str | None, using: str
) -> tuple[int, list[CommittedEvent]]:
    """Take the next positions (locking the counter until commit) and insert the rows."""
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("myko: events must be appended inside a transaction")
    n = len(pending)
    with connection.cursor() as cursor:
        cursor.execute(_NEXT_POSITIONS_SQL, [n, n])
        last = cursor.fetchone()[0]
    first = last - n + 1
    tx = tx or uuid.uuid4().hex
    now = timezone.now()
    Event.objects.using(using).bulk_create(
        [
            Event(
                position=first + i,
                tx=tx,
                item_type=p.item_type,
                item_id=p.item_id,
                change_type=p.change_type,
                item=p.item,
                created_at=now,
                source_id=source_id,
            )
            for i, p in enumerate(pending)
        ]
    )
    committed = [
        CommittedEvent(
            position=first + i,
            item_type=p.item_type,
            item_id=p.item_id,
            change_type=p.change_type,
            item=p.item,
        )
        for i, p in enumerate(pending)
    ]
    return last, committed
