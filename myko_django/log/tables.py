"""The log's tables: the events, the position counter, stored command results.

Defined here, in the log layer that uses them; `myko_django.models` makes Django find them.
"""

from __future__ import annotations

from django.db import models


class Event(models.Model):
    """One committed change of one item: the append-only log that is the truth
    (docs/architecture.md, "Words")."""

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
        app_label = "myko_django"
        db_table = "myko_event"
        ordering = ["position"]
        indexes = [
            models.Index(fields=["item_type", "item_id", "position"], name="myko_event_item")
        ]

    def __str__(self) -> str:
        return f"#{self.position} {self.change_type} {self.item_type} {self.item_id}"


class PendingEvent(models.Model):
    """An event whose transaction committed (or will) before it has a position: writers
    insert here concurrently, and the positioner (log/append.py) moves committed ones into
    `Event` in `id` order with the next positions. Readers never look here."""

    id = models.BigAutoField(primary_key=True)
    tx = models.CharField(max_length=255)
    item_type = models.CharField(max_length=100)
    item_id = models.CharField(max_length=255)
    change_type = models.CharField(
        max_length=3, choices=[(Event.SET, Event.SET), (Event.DEL, Event.DEL)]
    )
    item = models.JSONField(null=True)
    created_at = models.DateTimeField()
    source_id = models.CharField(max_length=255, null=True, blank=True)

    class Meta:
        app_label = "myko_django"
        db_table = "myko_pending_event"


class Position(models.Model):
    """One row holding the last handed-out log position, changed only by whoever holds the
    positioning lock (log/append.py)."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    last = models.BigIntegerField()

    class Meta:
        app_label = "myko_django"
        db_table = "myko_position"


class CommandResult(models.Model):
    """The stored response of a committed command, for idempotent retries
    (docs/protocol.md, "Commands")."""

    command_id = models.CharField(max_length=255)
    tx = models.CharField(max_length=255)
    user_key = models.CharField(max_length=255)
    # sha256 of the parameters (log/commands.py params_hash): a retry with other ones is
    # refused; "" for results stored before it was recorded.
    params_hash = models.CharField(max_length=64, default="", blank=True)
    response = models.JSONField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        app_label = "myko_django"
        db_table = "myko_command_result"
        constraints = [
            models.UniqueConstraint(
                fields=["command_id", "tx", "user_key"], name="myko_command_once"
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="myko_command_age")]


class Adoption(models.Model):
    """An item type whose table rows are all in the log: its rows that predate its
    registration were adopted (given a SET each) by `migrate` or `myko_resync`
    (`myko_django.log.adoption`). A registered type without one is looked at again."""

    item_type = models.CharField(max_length=100, primary_key=True)
    adopted_at = models.DateTimeField()
    events = models.BigIntegerField(default=0)  # SETs appended when adopted
    source = models.CharField(max_length=50)

    class Meta:
        app_label = "myko_django"
        db_table = "myko_adoption"

    def __str__(self) -> str:
        return f"{self.item_type} adopted {self.adopted_at:%Y-%m-%d %H:%M} by {self.source}"
