"""The sagas' tables: one checkpoint per saga, and the events a saga parked.

Defined here, in the layer that uses them; `myko_django.models` makes Django find them.
"""

from __future__ import annotations

from django.db import models


class SagaState(models.Model):
    """A saga's durable checkpoint: the last log position it handled. It advances in the
    same transaction as the saga's writes for the events up to it, so each event's effects
    commit exactly once."""

    name = models.CharField(max_length=200, primary_key=True)
    position = models.BigIntegerField()
    updated_at = models.DateTimeField()

    class Meta:
        app_label = "myko_django"
        db_table = "myko_saga"
        verbose_name = "saga checkpoint"

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"


class ParkedEvent(models.Model):
    """An event a saga's handler kept failing on: parked (with the last error) so the saga
    goes on, until an admin retries or skips it. Kept once resolved, as a record."""

    PARKED = "parked"
    RETRIED = "retried"
    SKIPPED = "skipped"
    STATUSES = [(PARKED, "parked"), (RETRIED, "retried"), (SKIPPED, "skipped")]

    saga = models.CharField(max_length=200)
    position = models.BigIntegerField()
    item_type = models.CharField(max_length=100)
    item_id = models.CharField(max_length=255)
    change_type = models.CharField(max_length=3)
    attempts = models.IntegerField(default=0)
    error = models.TextField()
    traceback = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=STATUSES, default=PARKED)
    parked_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True)

    class Meta:
        app_label = "myko_django"
        db_table = "myko_saga_parked"
        verbose_name = "parked saga event"
        constraints = [
            models.UniqueConstraint(fields=["saga", "position"], name="myko_saga_parked_once")
        ]
        indexes = [models.Index(fields=["status", "saga"], name="myko_saga_parked_status")]

    def __str__(self) -> str:
        return f"{self.saga} #{self.position} {self.change_type} {self.item_type} {self.item_id}"
