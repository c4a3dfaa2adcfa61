"""The event log, the position counter, stored command results, and the abstract Item base."""

from __future__ import annotations

import uuid

from django.db import models

from .managers import ItemManager, atomic_save_base


class Event(models.Model):
    """One committed change of one item: the append-only log that is the truth (DESIGN.md)."""

    SET = "SET"
    DEL = "DEL"

    position = models.BigIntegerField(primary_key=True)
    tx = models.CharField(max_length=255)
    item_type = models.CharField(max_length=100)
    item_id = models.CharField(max_length=255)
    change_type = models.CharField(max_length=3, choices=[(SET, SET), (DEL, DEL)])
    item = models.JSONField(null=True)
    created_at = models.DateTimeField()
    source_id = models.CharField(max_length=255, null=True, blank=True)

    class Meta:
        db_table = "myko_event"
        ordering = ["position"]
        indexes = [
            models.Index(fields=["item_type", "item_id", "position"], name="myko_event_item")
        ]

    def __str__(self) -> str:
        return f"#{self.position} {self.change_type} {self.item_type} {self.item_id}"


class Position(models.Model):
    """One row holding the last handed-out log position; its row lock orders appends."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    last = models.BigIntegerField()

    class Meta:
        db_table = "myko_position"


class CommandResult(models.Model):
    """The stored response of a committed command, for idempotent retries (PROTOCOL.md §5)."""

    command_id = models.CharField(max_length=255)
    tx = models.CharField(max_length=255)
    user_key = models.CharField(max_length=255)
    response = models.JSONField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "myko_command_result"
        constraints = [
            models.UniqueConstraint(
                fields=["command_id", "tx", "user_key"], name="myko_command_once"
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="myko_command_age")]


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
