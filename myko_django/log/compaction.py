"""Removing superseded events from the log (`manage.py myko_compact`; docs/deploy.md, "The
log's growth").

An event is superseded when the same item (type and id) has an event at a higher position.
Nothing that runs reads superseded events: a worker reads only positions above the ones it
has applied, and `myko_rebuild`, `myko_resync` and the adoption of existing rows look at each
item's latest event alone. So removing them, and only them, changes no rebuild: every item
keeps its latest event (a SET or a DEL) at its position.

Only positions up to a cut are touched, the position of the last event older than a given
age: the recent log stays whole. Positions are never renumbered; the log has holes below
the cut, the head stays where it is.

A running worker may lag below the cut (`--older-than 0` puts the cut at the head): the
removed events are ones it has not applied yet. It does not wait for them: once a position
is visible every lower one is, so a position missing below one a read returned was
compacted, and the sequencer (live/sequencer.py) steps over it. What it skips was
superseded by a later event of the same item, which it applies, so it ends in the same
state (as when several commits are coalesced into one update).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Exists, Min, OuterRef, QuerySet

from myko_django.log.tables import Event

# Positions looked at per transaction.
BATCH = 10_000
# Rows per DELETE ... WHERE position IN (...): below SQLite's limit of bound variables.
DELETE_CHUNK = 500
# Each removed event, as archived: one JSON object per line with these keys.
FIELDS = (
    "position",
    "tx",
    "item_type",
    "item_id",
    "change_type",
    "item",
    "created_at",
    "source_id",
)


@dataclass
class Result:
    cut: int  # positions <= cut were looked at
    removed: Counter = field(default_factory=Counter)  # item type -> events removed

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def cut_position(cutoff: dt.datetime, using: str = "default") -> int:
    """The highest position of an event created before `cutoff` (0: none).

    A bisection on the primary key, a dozen index lookups for any log: creation times follow
    positions (up to clock differences between the hosts that append), and holes left by
    earlier compactions are stepped over.
    """
    events = Event.objects.using(using).order_by("position")
    first = events.values_list("position", "created_at").first()
    if first is None or first[1] >= cutoff:
        return 0
    last = events.reverse().values_list("position", "created_at").first()
    if last[1] < cutoff:
        return last[0]
    # The event at `lo` is older than the cutoff; the first event at or after `hi` is not.
    lo, hi = first[0], last[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        position, created_at = events.filter(position__gte=mid).values_list(
            "position", "created_at"
        )[0]
        if created_at < cutoff:
            lo = position
        else:
            hi = mid
    return lo


def superseded(after: int, upto: int, using: str = "default") -> QuerySet:
    """Events at positions in (after, upto] whose item has a later event."""
    newer = Event.objects.using(using).filter(
        item_type=OuterRef("item_type"),
        item_id=OuterRef("item_id"),
        position__gt=OuterRef("position"),
    )
    return (
        Event.objects.using(using)
        .filter(position__gt=after, position__lte=upto)
        .filter(Exists(newer))
        .order_by("position")
    )


def compact(
    cut: int,
    *,
    using: str = "default",
    batch: int = BATCH,
    dry_run: bool = False,
    archive: Callable[[list[dict[str, Any]]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Remove every superseded event at a position <= `cut`, `batch` positions per
    transaction. `archive(events)` gets each batch's events (dicts of FIELDS) before they
    are removed, in the same transaction: if it raises, that batch stays. `dry_run` only
    counts. `progress(position)` is called after each batch."""
    result = Result(cut)
    events = Event.objects.using(using)
    after = 0
    while after < cut:
        # Step over holes (earlier compactions) to the next event there is.
        following = events.filter(position__gt=after, position__lte=cut).aggregate(
            first=Min("position")
        )["first"]
        if following is None:
            break
        after = following - 1
        upto = min(after + batch, cut)
        with transaction.atomic(using=using):
            rows = _rows(after, upto, using, ("item_type",) if dry_run else FIELDS)
            if rows and not dry_run:
                if archive is not None:
                    archive(rows)
                positions = [row["position"] for row in rows]
                for i in range(0, len(positions), DELETE_CHUNK):
                    events.filter(position__in=positions[i : i + DELETE_CHUNK]).delete()
        result.removed.update(row["item_type"] for row in rows)
        after = upto
        if progress is not None:
            progress(after)
    return result


def _rows(after: int, upto: int, using: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = superseded(after, upto, using).values_list(*fields)
    return [dict(zip(fields, row, strict=True)) for row in rows]


def archive_line(event: dict[str, Any]) -> bytes:
    """One archived event: a JSON object on one line."""
    created_at = event["created_at"]
    return (
        json.dumps(
            {**event, "created_at": created_at.isoformat()},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )
