"""Appending to the event log.

Readers (docs/architecture.md) need positions that are gap-free and in commit order: once
position P is visible, every position below P is visible too, and never changes. Taking
the next position inside the writing transaction and holding it to commit gives that, but
it serializes every write transaction of the deployment across its commit's WAL flush
(about 1,100 transactions/s on the 2-core test machine, a fourteenth of what Postgres
commits concurrently). So on Postgres a transaction that owns its commit does not take a
position at all:

1. The writer inserts its events into `myko_pending_event` (a bigserial `id`, no
   position) as the last step of its transaction, and commits: writers commit
   concurrently, and Postgres shares one WAL flush among them (group commit).
2. Right after the commit (`on_commit`) it runs a positioning run: one call of the
   database function `myko_position_pending` (migration 0005), in autocommit, so one
   round trip and one transaction: take the positioning lock (a transaction-scoped
   advisory lock), move every committed pending event into `myko_event` with the next
   positions, whole transactions in the order of their first `id`, each transaction's
   events together in `id` order (one DELETE ... RETURNING feeding one INSERT), commit, publish
   what moved. Runs are serialized, but each takes everything committed before it, so its
   WAL flush is shared by the batch. Readers see positions only once a run commits, and
   the next run starts only after that (it waits for the lock): positions appear in order
   and without gaps.
3. A writer does not queue for the lock: most would find that a run took their events
   while they waited. It takes the lock if it is free; else it checks (inside the
   same call, after 0.5 ms, then doubling up to 4 ms) whether a run took its events, and
   is through as soon as one did, without writing, so without a WAL flush of its own. It learns the
   log's head then, at or past its own positions: enough for read-your-writes.

Why `id` order is a correct order. Two transactions that write the same item both hold
that item's row lock (UPDATE, DELETE, SELECT ... FOR UPDATE, or the unique index of an
INSERT) until they commit, and each inserts its pending events after its row writes. So
the second one draws its `id`s after the first committed: for one item, `id` order is
commit order. And a run that sees a pending row sees every row committed before it was
inserted, so it never gives a later change of an item a lower position than an earlier
one (the same holds for any change made after reading another's committed one): all the
later transaction's `id`s, its first included, come after all the earlier one's. Events
of one transaction keep their order (`id`s drawn in capture order) and stay contiguous:
concurrent writers draw `id`s row by row from one sequence, so one transaction's may
interleave with another's, and a run groups them by the writing transaction (a `txid`
column of the pending table, migration 0005).

One command is still one transaction: its item rows and its events commit together; the
positioning only orders them. If positioning fails (the connection dies after commit),
the events stay committed in the pending table, and the next run moves them: any later
writer's, or the hub's poll (server/hub.py), which positions stragglers.

Where a transaction is wrapped by one the write does not own (the admin's
`changeform_view`, `ATOMIC_REQUESTS`, a test's transaction), an append takes positions at
once, as before issue 14: on Postgres it takes the positioning lock, moves what is pending,
and appends after it, holding the lock until that outermost transaction commits. SQLite
has one writer at a time anyway: there an append always takes the next positions from the
counter row (`myko_position`), whose write lock lasts until commit.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from myko_django.live.committed import CommittedEvent
from myko_django.log import django_internals, publish
from myko_django.log.read import _restore_floats
from myko_django.log.tables import Event, PendingEvent

logger = logging.getLogger(__name__)

# The positioning lock: pg_advisory_xact_lock(LOCK_KEY) ("myko" in ASCII; migration 0005).
LOCK_KEY = 0x6D796B6F
# Pending events moved per statement: bounds one statement's memory after a long outage.
MOVE_LIMIT = 5000

_NEXT_POSITIONS_SQL = """
INSERT INTO myko_position (id, last)
VALUES (1, COALESCE((SELECT MAX(position) FROM myko_event), 0) + %s)
ON CONFLICT (id) DO UPDATE SET last = myko_position.last + %s
RETURNING last
"""

# One positioning run (migration 0005 defines it): take the lock, move up to MOVE_LIMIT
# committed pending events, lowest ids first, into the log after its head (no counter row:
# updating one row per run left thousands of dead row versions to step over); given the
# ids of a writer's events, move nothing if a run took them already. Returns the head
# before the move, then one row per event moved.
POSITION_SQL = "SELECT * FROM myko_position_pending(%s, %s)"

_PENDING_COLUMNS = "(tx, item_type, item_id, change_type, item, created_at, source_id)"

Positioned = Callable[[int], None]  # told the log's head once the events have positions


@dataclass(frozen=True)
class Pending:
    """A change about to be appended: no position yet."""

    change_type: str
    item_type: str
    item_id: str
    item: dict[str, Any] | None


def append(
    pending: Sequence[Pending],
    *,
    tx: str | None,
    source_id: str | None,
    using: str = "default",
    positioned: Positioned | None = None,
) -> int:
    """Append events inside the caller's transaction; publish them once they have positions.

    Returns the last position handed out, or 0 when the events get their positions after
    commit (then `positioned(head)` is called after commit, head >= their positions).
    """
    if not pending:
        return 0
    if _after_commit(using):
        ids = _insert_pending(pending, tx, source_id, using)
        _position_on_commit(ids, using, positioned)
        return 0
    last, committed = _insert(pending, tx, source_id, using)
    _publish_on_commit(committed, using)
    if positioned is not None:
        positioned(last)
    return last


def _after_commit(using: str) -> bool:
    """Whether this transaction's events get their positions after it commits: on Postgres,
    when the current atomic block is the outermost one (it owns the commit)."""
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("myko: events must be appended inside a transaction")
    return connection.vendor == "postgresql" and not connection.savepoint_ids


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
    if not committed:
        return
    callback = django_internals.last_on_commit_here(using)
    if isinstance(callback, _Publish):
        callback.events.extend(committed)
        return
    transaction.on_commit(_Publish(committed), using=using)


class _Position:
    """The on_commit callback of a transaction that committed pending events: see that
    they get positions, then tell each writer the head (see the module docstring)."""

    __slots__ = ("using", "ids", "then")

    def __init__(self, using: str) -> None:
        self.using = using
        self.ids: list[int] = []
        self.then: list[Positioned] = []

    def __call__(self) -> None:
        head = 0
        try:
            head = _position_mine(self.ids, self.using)
        except Exception:
            logger.warning("myko: positioning committed events failed; trying once more")
            try:
                # Waits for the lock instead of polling; a fresh statement, maybe a fresh
                # connection (Django reconnects after a connection error outside atomic).
                connections[self.using].close_if_unusable_or_obsolete()
                head = position_committed(self.using)
            except Exception:
                # Committed all the same: a later run (a writer's, the hub's poll) moves
                # them, but the writer's read-your-writes wait cannot cover them (head 0).
                logger.exception("myko: positioning failed again; the next run moves them")
        for positioned in self.then:
            positioned(head)


def _position_on_commit(ids: list[int], using: str, positioned: Positioned | None) -> None:
    callback = django_internals.last_on_commit_here(using)
    if not isinstance(callback, _Position):
        callback = _Position(using)
        # robust: an earlier callback that raises must not leave these events unpositioned.
        transaction.on_commit(callback, using=using, robust=True)
    callback.ids.extend(ids)
    if positioned is not None:
        callback.then.append(positioned)


def _position_mine(ids: list[int], using: str) -> int:
    """After commit: see that these pending events have positions; return a head at or
    past them. One statement in autocommit (its own transaction, one round trip): a run
    if the lock is free, else a wait until a run took them (see the module docstring)."""
    with connections[using].cursor() as cursor:
        head, events = _run(cursor, ids)
    if events:
        publish.committed(events)  # committed already: the statement was a transaction
    return head


def position_committed(using: str = "default") -> int:
    """Give every committed pending event its position (in `id` order) and publish them
    once that commits; return the log's head seen under the positioning lock.

    Inside a transaction the lock is held until it commits (see `reconcile.lock_out_writers`);
    otherwise this is its own short transaction. Nothing to do on SQLite."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return 0
    with transaction.atomic(using=using):
        head, events = _move_pending(using)
        _publish_on_commit(events, using)
    return head


def position_stragglers(using: str = "default") -> int:
    """Position pending events whose writer did not (it died between its commit and its
    positioning run): called by the hub's poll. Returns how many were pending."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM (SELECT 1 FROM myko_pending_event LIMIT 1000) p")
        waiting = cursor.fetchone()[0]
    if waiting:
        position_committed(using)
    return waiting


def _move_pending(using: str) -> tuple[int, list[CommittedEvent]]:
    """Under the positioning lock (taken here, held to commit): move the committed pending
    events into the log. Returns the head and the events moved."""
    with connections[using].cursor() as cursor:
        return _run(cursor, None)


def _run(cursor: Any, mine: list[int] | None) -> tuple[int, list[CommittedEvent]]:
    """One positioning run, MOVE_LIMIT events at a time (see POSITION_SQL)."""
    events: list[CommittedEvent] = []
    while True:
        cursor.execute(POSITION_SQL, [MOVE_LIMIT, mine])
        rows = cursor.fetchall()
        head = rows[0][0]
        moved = [row for row in rows if row[1] is not None]
        for _, position, item_type, item_id, change_type, item in moved:
            if isinstance(item, str):
                item = json.loads(item)
            item = _restore_floats(item_type, item)
            events.append(CommittedEvent(position, item_type, item_id, change_type, item))
        if moved:
            head = moved[-1][1]
        if len(moved) < MOVE_LIMIT:
            return head, events
        mine = None  # a long backlog: keep moving


def _insert_pending(
    pending: Sequence[Pending], tx: str | None, source_id: str | None, using: str
) -> list[int]:
    """The transaction's events, without positions; in capture order (so `id` order).
    Returns their ids."""
    tx = tx or uuid.uuid4().hex
    now = timezone.now()
    values = ", ".join(["(%s, %s, %s, %s, %s::jsonb, %s, %s)"] * len(pending))
    params: list[Any] = []
    for p in pending:
        item = None if p.item is None else json.dumps(p.item, separators=(",", ":"))
        params += [tx, p.item_type, p.item_id, p.change_type, item, now, source_id]
    table = PendingEvent._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} {_PENDING_COLUMNS} VALUES {values} RETURNING id", params
        )
        return [row[0] for row in cursor.fetchall()]


class _Deferred:
    """Events captured in a transaction that appends them just before it commits.

    Registered with `on_commit` from the start: Django drops the registration when the
    savepoint it was made in rolls back, so `append_deferred` finds only what survived.
    After commit the first surviving one publishes the transaction's events, positions
    filled in by then (one publication, so one update per subscription); events positioned
    after commit are published by their positioning run instead.
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


def append_deferred(
    *,
    tx: str | None,
    source_id: str | None,
    using: str = "default",
    positioned: Positioned | None = None,
) -> int:
    """Append, in capture order, every deferred event of this transaction not rolled back;
    the last step before commit. Returns as `append` does."""
    batches = [
        callback
        for callback in django_internals.on_commit_callbacks(using)
        if isinstance(callback, _Deferred) and callback.committed is None
    ]
    pending = [p for batch in batches for p in batch.pending]
    if not pending:
        return 0
    for batch in batches:
        batch.committed = []
    if _after_commit(using):
        ids = _insert_pending(pending, tx, source_id, using)
        _position_on_commit(ids, using, positioned)
        return 0
    last, committed = _insert(pending, tx, source_id, using)
    # One publication for the transaction: the first callback carries every event.
    batches[0].committed = committed
    if positioned is not None:
        positioned(last)
    return last


def _insert(
    pending: Sequence[Pending], tx: str | None, source_id: str | None, using: str
) -> tuple[int, list[CommittedEvent]]:
    """Take the next positions at once (the positioning lock on Postgres, the counter row
    on SQLite, held until commit) and insert the rows: for transactions that do not own
    their commit."""
    connection = connections[using]
    n = len(pending)
    if connection.vendor == "postgresql":
        # Pending events committed before us go first (and are published with ours).
        head, moved = _move_pending(using)
        _publish_on_commit(moved, using)
        last = head + n
    else:
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
