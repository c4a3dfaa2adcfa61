"""The models of myko_django: the abstract `Item` base, and the log's tables (defined in
`myko_django.log.tables`, imported here so Django finds them)."""

from __future__ import annotations

import uuid

from django.db import models

from myko_django.log.managers import ItemManager, atomic_save_base
from myko_django.log.tables import CommandResult, Event, Position

__all__ = ["CommandResult", "Event", "Item", "Position", "new_id"]


def new_id() -> str:
    return str(uuid.uuid4())


class Item(models.Model):
    """Subclass this to make a model a myko item: string id, writes captured in the log."""

    id = models.CharField(primary_key=True, max_length=64, default=new_id, editable=False)

    # Optional overrides of the wire name and its plural (default: class name, name + "s").
    myko_name: str | None = None
    myko_plural: str | None = None

    objects = ItemManager()

    class Meta:
        abstract = True
        base_manager_name = "objects"

    save_base = atomic_save_base(models.Model.save_base)
