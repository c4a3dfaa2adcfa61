"""The QuerySet and manager every item model uses, so bulk ORM writes are captured too."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.db import NotSupportedError, models, router, transaction

from myko_django.log import django_internals
from myko_django.log.capture import capture_sets

_CHUNK = 500


def atomic_save_base(save_base: Callable) -> Callable:
    """Wrap Model.save_base so the row write and its event commit in one transaction.

    No savepoint: like Django's own save(), an error marks the enclosing block for rollback.
    """

    @functools.wraps(save_base)
    def wrapper(self, *args: Any, using: str | None = None, **kwargs: Any):
        using = using or router.db_for_write(self.__class__, instance=self)
        with transaction.atomic(using=using, savepoint=False):
            return save_base(self, *args, using=using, **kwargs)

    wrapper.myko_atomic = True
    return wrapper


class ItemQuerySet(django_internals.RefuseRawDelete, models.QuerySet):
    """A QuerySet whose bulk writes append the matching events."""

    def update(self, **kwargs: Any) -> int:
        # No savepoint (two round trips of every command that updates): as with Django's
        # own update(), an error marks the enclosing block for rollback.
        with transaction.atomic(using=self.db, savepoint=False):
            base = self.model._base_manager.using(self.db)
            # Lock the rows we are about to change so the events match what we wrote; the
            # outer query keeps FOR UPDATE away from the caller's DISTINCT or annotations.
            matching = base.filter(pk__in=self.order_by().values("pk"))
            if django_internals.can_lock_rows(self.db):
                matching = matching.select_for_update()
            pks = list(matching.values_list("pk", flat=True))
            count = 0
            for start in range(0, len(pks), _CHUNK):
                chunk = base.filter(pk__in=pks[start : start + _CHUNK])
                count += models.QuerySet.update(chunk, **kwargs)
            capture_sets(self.model, pks, self.db)
        return count

    update.alters_data = True

    def bulk_create(
        self,
        objs,
        batch_size=None,
        ignore_conflicts=False,
        update_conflicts=False,
        update_fields=None,
        unique_fields=None,
    ):
        if ignore_conflicts or update_conflicts:
            raise NotSupportedError(
                f"{self.model.__name__}.objects.bulk_create(ignore_conflicts/update_conflicts) "
                "cannot tell which rows it wrote, so myko cannot log them. Use "
                "bulk_create() without them, or update_or_create() per item."
            )
        objs = list(objs)
        with transaction.atomic(using=self.db):
            created = super().bulk_create(objs, batch_size=batch_size)
            missing = [o for o in created if o.pk is None]
            if missing:
                raise NotSupportedError(
                    f"{self.model.__name__}: the database did not return the primary keys of "
                    "bulk-created rows, so myko cannot log them; use save() per item."
                )
            capture_sets(self.model, [o.pk for o in created], self.db)
        return created

    bulk_create.alters_data = True

    # bulk_update() needs no override: Django implements it with update(), captured above.


class ItemManager(models.Manager.from_queryset(ItemQuerySet)):
    """The default (and base) manager of item models."""


def adopt(model: type[models.Model]) -> None:
    """Make a registered model's every write path logged: saves atomic with their event,
    and, when its default manager is ours, related managers and on_delete updates too."""
    if not getattr(model.save_base, "myko_atomic", False):
        model.save_base = atomic_save_base(model.save_base)
    default = model._meta.default_manager
    if uses_item_queryset(default) and not uses_item_queryset(model._base_manager):
        django_internals.use_as_base_manager(model, default.name)


def uses_item_queryset(manager: models.Manager | None) -> bool:
    """Whether a manager's querysets capture bulk writes."""
    return manager is not None and isinstance(manager.get_queryset(), ItemQuerySet)
