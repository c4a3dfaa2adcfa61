"""The fan-out writer's command, found by myko at start-up like any app's myko.py."""

from myko_django import command
from project.demo.models import Target


@command("BenchStamp")
def bench_stamp(ctx, *, id: str, name: str) -> None:
    """Rename one Target with `save()`, the usual ORM write: myko captures it into the log
    and the peer's model_observer sees the same change through post_save."""
    target = Target.objects.get(pk=id)
    target.name = name
    target.save()
