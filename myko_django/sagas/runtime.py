"""Handling a saga's events: the handler's writes and the checkpoint's advance in one
transaction, parking an event that keeps failing, and the admin's retry and skip.

The checkpoint is the last log position handled, as readers of the log see positions
(log/read.py). Each transaction first locks the saga's checkpoint row and checks it still
holds the position this process read from: whoever else moved it (a second runner, an
operator) wins, and nothing is handled twice even without the runner's lock.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from myko_django.items.operations import resolve_query
from myko_django.items.permissions import SYSTEM
from myko_django.items.registry import registry
from myko_django.items.sagas import Saga, registered
from myko_django.items.sagas import get as get_saga
from myko_django.live.filters import Filter
from myko_django.log.capture import write_transaction
from myko_django.log.commands import CommandContext
from myko_django.log.read import LoggedEvent, high_water, read_logged, state_before
from myko_django.sagas.tables import ParkedEvent, SagaState

logger = logging.getLogger(__name__)


class SagaContext(CommandContext):
    """What a saga handler gets: a command's reads and writes, run as the system (no
    permission checks, also for `run`), plus the event's `previous` state and `query`."""

    def __init__(self, saga: Saga, event: LoggedEvent, using: str) -> None:
        super().__init__(
            command_id=f"saga:{saga.name}", tx=tx_of(saga, [event]), user=SYSTEM, using=using
        )
        self.saga = saga
        self.event = event
        self._previous: dict[int, dict | None] = {}

    @property
    def previous(self) -> dict | None:
        """The item as it was before this event (None: it did not exist)."""
        return self.previous_of(self.event)

    def previous_of(self, event: LoggedEvent) -> dict | None:
        """The item of `event` as it was before it (for batched handlers)."""
        if event.position not in self._previous:
            self._previous[event.position] = state_before(
                event.item_type, event.item_id, event.position, using=self.using
            )
        return self._previous[event.position]

    def query(self, query_id: str, params: dict | None = None) -> list[dict]:
        """The items a query (derived or your own) matches now, read from the table."""
        item_type, flt = resolve_query(query_id, None, params or {}, SYSTEM)
        it = registry.get(item_type)
        rows = it.model._base_manager.using(self.using).values_list(*it.attnames)
        return [
            item for item in it.encode_values(rows.iterator(chunk_size=2000)) if flt.matches(item)
        ]


def tx_of(saga: Saga, events: Sequence[LoggedEvent]) -> str:
    """The tx of a saga's writes: the saga and the position(s) of the triggering event(s)."""
    first, last = events[0].position, events[-1].position
    return f"saga:{saga.name}:{first}" if first == last else f"saga:{saga.name}:{first}-{last}"


def source_of(saga: Saga) -> str:
    return f"saga:{saga.name}"


class HandlerFailed(Exception):
    """The handler raised for `events[index]` (a batch: index 0); the transaction rolled back."""

    def __init__(self, index: int, error: BaseException, trace: str) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.index = index
        self.error = error
        self.trace = trace

    @property
    def message(self) -> str:
        return str(self)


class CheckpointMoved(Exception):
    """Another process moved the saga's checkpoint: reload it and go on from there."""


def wants(saga: Saga, flt: Filter | None, event: LoggedEvent) -> bool:
    """Whether the saga's handler runs for this event (its change types and filter)."""
    if event.change_type not in saga.changes:
        return False
    return flt is None or (event.item is not None and flt.matches(event.item))


def invoke(
    saga: Saga, events: Sequence[LoggedEvent], using: str, deadline: float | None = None
) -> int:
    """Run the handler for `events` inside the caller's write transaction. With a
    `deadline` (time.monotonic()), stops after the event that ends past it. Returns how
    many events it handled; raises HandlerFailed (the caller's transaction then rolls
    back whole)."""
    if not events:
        return 0
    groups = [list(events)] if saga.batch else [[e] for e in events]
    done = 0
    for index, group in enumerate(groups):
        try:
            ctx = SagaContext(saga, group[-1], using)
            if saga.batch:
                saga.func(ctx, group)
            else:
                saga.func(ctx, group[0].item, group[0])
        except Exception as exc:
            raise HandlerFailed(index, exc, traceback.format_exc()) from exc
        done += len(group)
        if deadline is not None and time.monotonic() > deadline:
            break
    return done


def load_checkpoint(saga: Saga, start: str | int | None = None, using: str = "default") -> int:
    """The saga's checkpoint, created at its start position the first time: the log's head
    ("head", the default), or the position given (0: replay the whole log)."""
    found = SagaState.objects.using(using).filter(name=saga.name).values_list("position", flat=True)
    for position in found:
        return position
    where = saga.start if start is None else start
    position = high_water(using) if where == "head" else int(where)
    with transaction.atomic(using=using):
        state, _ = SagaState.objects.using(using).get_or_create(
            name=saga.name, defaults={"position": position, "updated_at": timezone.now()}
        )
    return state.position


def set_checkpoint(name: str, position: int, using: str = "default") -> None:
    """Move a saga's checkpoint (an operator's replay: `myko_sagas --set-checkpoint`)."""
    SagaState.objects.using(using).update_or_create(
        name=name, defaults={"position": position, "updated_at": timezone.now()}
    )


def _claim(saga: Saga, expected: int, using: str) -> None:
    """Lock the checkpoint row until commit; it must still be where this process left it."""
    rows = SagaState.objects.using(using).select_for_update().filter(name=saga.name)
    current = rows.values_list("position", flat=True).first()
    if current != expected:
        raise CheckpointMoved(f"saga {saga.name}: checkpoint at {current}, expected {expected}")


def _advance(saga: Saga, position: int, using: str) -> None:
    SagaState.objects.using(using).filter(name=saga.name).update(
        position=position, updated_at=timezone.now()
    )


def commit(
    saga: Saga,
    expected: int,
    events: Sequence[LoggedEvent],
    upto: int,
    using: str = "default",
    *,
    budget: float | None = None,
) -> int:
    """Handle `events` (those the saga wants, in order) and move the checkpoint from
    `expected` to `upto`, all in one transaction; the saga's writes carry the tx
    `saga:<name>:<position>` of the event they come from (`<first>-<last>` when the
    transaction handled several). With a `budget` (seconds), handles events
    until it is spent and moves the checkpoint only past those. Returns the new checkpoint.
    Raises HandlerFailed (nothing committed) or CheckpointMoved."""
    deadline = None if budget is None else time.monotonic() + budget
    # The write transaction is the outermost block: it owns the commit, so the log gives
    # its events positions just after it (log/append.py) and no lock is held meanwhile.
    with write_transaction(None, source_of(saga), using) as writing:
        _claim(saga, expected, using)
        done = invoke(saga, events, using, deadline)
        if done:
            writing.tx = tx_of(saga, events[:done])
        position = upto if done == len(events) else events[done - 1].position
        _advance(saga, position, using)
    return position


def park(
    saga: Saga, expected: int, event: LoggedEvent, failure: HandlerFailed, attempts: int, using: str
) -> None:
    """Record `event` as parked with its last error and move the checkpoint past it, in one
    transaction: the saga goes on, and the event is kept until retried or skipped."""
    with transaction.atomic(using=using):
        _claim(saga, expected, using)
        ParkedEvent.objects.using(using).update_or_create(
            saga=saga.name,
            position=event.position,
            defaults={
                "item_type": event.item_type,
                "item_id": event.item_id,
                "change_type": event.change_type,
                "attempts": attempts,
                "error": failure.message,
                "traceback": failure.trace,
                "status": ParkedEvent.PARKED,
                "parked_at": timezone.now(),
                "resolved_at": None,
                "resolved_by": "",
            },
        )
        _advance(saga, event.position, using)
    logger.error(
        "myko: saga %s parked event %d after %d attempts: %s",
        saga.name,
        event.position,
        attempts,
        failure.message,
    )


@dataclass(frozen=True)
class RetryResult:
    ok: bool
    message: str


def retry_parked(parked_id: int, *, by: str = "", using: str = "default") -> RetryResult:
    """Run the saga's handler again for a parked event, now; on success the handler's writes
    and the parked row's "retried" commit together (so a second retry finds nothing to do).
    On failure the row stays parked with the new error."""
    row = ParkedEvent.objects.using(using).filter(pk=parked_id).first()
    if row is None or row.status != ParkedEvent.PARKED:
        return RetryResult(False, f"parked event {parked_id} is not parked")
    label = f"{row.saga} #{row.position}"
    try:
        saga = get_saga(row.saga)
    except Exception as exc:
        return RetryResult(False, f"{label}: {exc}")
    found = read_logged(row.position - 1, row.position, using=using)
    if not found:
        return RetryResult(False, f"{label}: the event is no longer in the log; skip it")
    try:
        with write_transaction(tx_of(saga, found), source_of(saga), using):
            locked = ParkedEvent.objects.using(using).select_for_update().get(pk=parked_id)
            if locked.status != ParkedEvent.PARKED:
                return RetryResult(False, f"{label} was {locked.status} meanwhile")
            invoke(saga, found, using)
            locked.status = ParkedEvent.RETRIED
            locked.attempts += 1
            locked.resolved_at = timezone.now()
            locked.resolved_by = by
            locked.save(using=using)
    except HandlerFailed as failure:
        ParkedEvent.objects.using(using).filter(pk=parked_id, status=ParkedEvent.PARKED).update(
            attempts=F("attempts") + 1, error=failure.message, traceback=failure.trace
        )
        return RetryResult(False, f"{label} failed again: {failure.message}")
    return RetryResult(True, f"{label} handled")


def skip_parked(parked_id: int, *, by: str = "", using: str = "default") -> bool:
    """Give up on a parked event (kept, marked skipped); False if it was not parked."""
    return bool(
        ParkedEvent.objects.using(using)
        .filter(pk=parked_id, status=ParkedEvent.PARKED)
        .update(status=ParkedEvent.SKIPPED, resolved_at=timezone.now(), resolved_by=by)
    )


@dataclass(frozen=True)
class SagaStatus:
    name: str
    position: int | None  # None: it never ran
    lag: int  # positions of the log above its checkpoint
    parked: int


def status(using: str = "default") -> list[SagaStatus]:
    """Each saga (registered or with a checkpoint): checkpoint, lag and parked events."""
    head = high_water(using)
    positions = dict(SagaState.objects.using(using).values_list("name", "position"))
    parked = dict(
        ParkedEvent.objects.using(using)
        .filter(status=ParkedEvent.PARKED)
        .values_list("saga")
        .annotate(n=Count("id"))
        .values_list("saga", "n")
    )
    names = sorted(set(registered()) | set(positions) | set(parked))
    return [
        SagaStatus(
            n,
            positions.get(n),
            max(0, head - positions[n]) if n in positions else 0,
            parked.get(n, 0),
        )
        for n in names
    ]
