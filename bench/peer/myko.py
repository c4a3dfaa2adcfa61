"""The fan-out writer's command, found by myko at start-up like any app's myko.py."""

from myko_django import command
from myko_django.permissions import AllowAny
from project.demo.models import Note, Target


# Open to anyone, like the demo's RenameTarget: the writer's connections are anonymous.
@command("BenchStamp", permission=AllowAny)
def bench_stamp(ctx, *, id: str, name: str, note: bool = False) -> None:
    """Rename one Target with `save()`, the usual ORM write: myko captures it into the log
    and the peer's model_observer sees the same change through post_save. With `note`,
    put `name` in the text of the Note `id` instead (bench/visibility_fanout.py)."""
    if note:
        item = Note.objects.get(pk=id)
        item.text = name
    else:
        item = Target.objects.get(pk=id)
        item.name = name
    item.save()
