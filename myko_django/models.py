"""The models of myko_django: the abstract `Item` base, the log's tables (defined in
`myko_django.log.tables`, imported here so Django finds them), and the per-user salt of
access tokens (`myko_django.auth`)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from myko_django.log.managers import ItemManager, atomic_save_base
from myko_django.log.tables import Adoption, CommandResult, Event, Position
from myko_django.sagas.tables import ParkedEvent, SagaState

__all__ = [
    "Adoption",
    "CommandResult",
    "Event",
    "Item",
    "ParkedEvent",
    "Position",
    "SagaState",
    "TokenSalt",
    "new_id",
]


def new_id() -> str:
    return str(uuid.uuid4())


class Item(models.Model):
    """Subclass this to make a model a myko item: string id, writes captured in the log."""

    id = models.CharField(primary_key=True, max_length=64, default=new_id, editable=False)

    # Optional overrides of the wire name and its plural (default: class name, name + "s").
    myko_name: str | None = None
    myko_plural: str | None = None
    # Field visibility, at most one of the two (model field names; the id always travels):
    # the fields that travel, or those that do not. Those that do not are never sent and
    # clients cannot write them (a SET keeps their stored values; new rows get defaults).
    myko_fields: list[str] | None = None
    myko_exclude: list[str] | None = None

    objects = ItemManager()

    class Meta:
        abstract = True
        base_manager_name = "objects"

    save_base = atomic_save_base(models.Model.save_base)


class TokenSalt(models.Model):
    """A user's current access-token salt: every token carries the salt it was issued with,
    and `myko_django.auth.revoke_tokens(user)` draws a new one, which invalidates them all."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    salt = models.CharField(max_length=64)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "myko_token_salt"
        verbose_name = "access token salt"

    def __str__(self) -> str:
        return f"token salt of user {self.user_id}"
