"""The demo's own operations, found by myko at start-up (each app's myko.py)."""

from collections import Counter

from myko_django import command, saga
from myko_django.permissions import AllowAny

from .models import Target, TargetStats


@command("RenameTarget", permission=AllowAny)  # a demo: open to anyone
def rename_target(ctx, *, id: str, name: str) -> None:
    updated = Target.objects.filter(pk=id).update(name=name)
    if not updated:
        raise ValueError(f"Target not found: {id}")


@saga(Target, on="SET", start=0, batch=500)  # start=0: a new deployment derives the history
def target_stats(ctx, events) -> None:
    """Count each Target's SETs and keep its latest name (`manage.py myko_sagas`). Batched:
    up to 500 events at once, handled with one read and one write per batch, in the
    transaction that advances the saga's checkpoint past them."""
    counts = Counter(e.item_id for e in events)
    names = {e.item_id: e.item["name"] for e in events}  # the latest of each Target
    stats = TargetStats.objects.in_bulk(list(counts))
    ctx.set_many(
        "TargetStats",
        [
            {"id": pk, "sets": n + (stats[pk].sets if pk in stats else 0), "lastName": names[pk]}
            for pk, n in counts.items()
        ],
    )
