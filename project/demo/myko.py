"""The demo's own operations, found by myko at start-up (each app's myko.py)."""

from myko_django import command
from myko_django.permissions import AllowAny

from .models import Target


@command("RenameTarget", permission=AllowAny)  # a demo: open to anyone
def rename_target(ctx, *, id: str, name: str) -> None:
    updated = Target.objects.filter(pk=id).update(name=name)
    if not updated:
        raise ValueError(f"Target not found: {id}")
