"""Every Django internal the log layer relies on, in one place.

Each is pinned by tests/db/test_django_internals.py, which fails when a Django upgrade
changes it; the rest of the package uses Django's public API only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import NotSupportedError, connections, models


def on_commit_callbacks(using: str) -> list[Callable[[], Any]]:
    """The callbacks `transaction.on_commit` holds for the open transaction, oldest first.

    Those registered in a savepoint that rolled back are already gone, which is what lets
    events be captured as writes happen and appended just before commit."""
    return [entry[1] for entry in connections[using].run_on_commit]


def last_on_commit_here(using: str) -> Callable[[], Any] | None:
    """The newest `on_commit` callback if it was registered under exactly the savepoints
    open now, so that a rollback would drop it together with anything registered next."""
    connection = connections[using]
    hooks = connection.run_on_commit
    if hooks and hooks[-1][0] == set(connection.savepoint_ids):
        return hooks[-1][1]
    return None


def can_lock_rows(using: str) -> bool:
    """Whether the database takes SELECT ... FOR UPDATE (SQLite locks the whole file)."""
    return connections[using].features.has_select_for_update


def use_as_base_manager(model: type[models.Model], manager_name: str) -> None:
    """Make a model's base manager (used by related managers and on_delete updates) the
    named manager, after the class was created."""
    model._meta.base_manager_name = manager_name
    model._meta.__dict__.pop("base_manager", None)  # a cached_property


def updates_fetched_rows(on_delete: Callable) -> bool:
    """Whether Django applies this `on_delete` with an UPDATE of rows it already fetched
    (SET_DEFAULT, SET(callable)), past QuerySet.update; SET_NULL and SET(value) update
    lazily through the base manager instead."""
    if on_delete is models.SET_DEFAULT:
        return True
    return getattr(on_delete, "__name__", "") == "set_on_delete" and not getattr(
        on_delete, "lazy_sub_objs", False
    )


class RefuseRawDelete:
    """Django's deletion collector deletes rows with `QuerySet._raw_delete` when nothing
    needs the objects ("fast delete"): such a delete would not be logged, so refuse it."""

    def _raw_delete(self, using: str) -> int:
        raise NotSupportedError(
            f"{self.model.__name__}: a raw delete would bypass the myko event log; use delete()."
        )
