"""Turns every ORM write to an item model into SET/DEL events in the same transaction.

Saves are made atomic (see `managers.atomic_save_base`), so the post_save and post_delete
receivers below run inside the transaction that wrote the row. Each SET carries the row
as re-read after the write, so F() expressions, database defaults and `update_fields`
are captured as stored.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import models, router, transaction
from django.db.models import signals

from myko_django.items.registry import registry
from myko_django.log import append, django_internals

_CHUNK = 500


@dataclass
class WriteContext:
    """Who is writing (tx, source) and the last position this writer appended."""

    tx: str | None = None
    source_id: str | None = None
    last_position: int = 0
    defer_using: str | None = None  # the database whose events wait for the commit

    def positioned(self, head: int) -> None:
        """Told the log's head once this writer's events have positions (at or below it)."""
        self.last_position = max(self.last_position, head)


_context: contextvars.ContextVar[WriteContext | None] = contextvars.ContextVar(
    "myko_write_context", default=None
)


@contextmanager
def write_context(tx: str | None = None, source_id: str | None = None) -> Iterator[WriteContext]:
    """Events appended inside carry this tx and source id; nested contexts reuse the outer."""
    outer = _context.get()
    if outer is not None:
        yield outer
        return
    ctx = WriteContext(tx=tx, source_id=source_id)
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


@contextmanager
def write_transaction(
    tx: str | None = None, source_id: str | None = None, using: str = "default"
) -> Iterator[WriteContext]:
    """One transaction whose events are appended last, just before it commits.

    Writes inside are captured as they happen and appended together at the end
    (docs/architecture.md, "One change", step 2): the pending events are inserted after
    every row write, which their ordering relies on, and where positions are taken before
    commit (append.py) the lock is held only from there to the commit. Once this block
    has committed, `ctx.last_position` is at or past its events' positions."""
    with write_context(tx, source_id) as ctx, transaction.atomic(using=using):
        owner = ctx.defer_using is None
        if owner:
            ctx.defer_using = using
        try:
            yield ctx
            if owner:
                append.append_deferred(
                    tx=ctx.tx, source_id=ctx.source_id, using=using, positioned=ctx.positioned
                )
        finally:
            if owner:
                ctx.defer_using = None


def _append(pending: list[append.Pending], using: str) -> None:
    ctx = _context.get()
    if ctx is not None and ctx.defer_using == using:
        append.defer(pending, using)
        return
    append.append(
        pending,
        tx=ctx.tx if ctx else None,
        source_id=ctx.source_id if ctx else None,
        using=using,
        positioned=ctx.positioned if ctx else None,
    )


def capture_sets(model: type[models.Model], pks: Iterable[Any], using: str) -> None:
    """Append a SET for each row, as stored now; rows that no longer exist are skipped."""
    item_type = registry.for_model(model)
    if item_type is None:
        return
    pks = list(dict.fromkeys(pks))
    pending: list[append.Pending] = []
    for start in range(0, len(pks), _CHUNK):
        chunk = pks[start : start + _CHUNK]
        rows = model._base_manager.using(using).in_bulk(chunk)
        for pk in chunk:
            row = rows.get(pk)
            if row is not None:
                pending.append(
                    append.Pending("SET", item_type.name, str(row.pk), item_type.encode(row))
                )
    _append(pending, using)


def capture_delete(instance: models.Model, using: str) -> None:
    item_type = registry.for_model(type(instance))
    if item_type is None:
        return
    item = item_type.encode(instance)
    _append([append.Pending("DEL", item_type.name, str(instance.pk), item)], using)


def _on_post_save(sender, instance, raw=False, using=None, **kwargs) -> None:
    capture_sets(sender, [instance.pk], using or router.db_for_write(sender))


def _on_post_delete(sender, instance, using=None, **kwargs) -> None:
    capture_delete(instance, using or router.db_for_write(sender))


# on_delete handlers that Django applies with an UPDATE on already fetched rows
# (SET_DEFAULT, SET(callable)) bypass QuerySet.update; we note the rows on the parent
# instance before it is deleted and re-read them after. Lazy ones (SET_NULL, SET(value))
# go through the item model's base manager, i.e. ItemQuerySet.update, and are captured there.
def _reread_fields(parent: type[models.Model]) -> list[models.ForeignKey]:
    fields = []
    for item_type in registry:
        for codec in item_type.codecs:
            f = codec.field
            if codec.kind != "fk" or f.remote_field.model._meta.concrete_model is not parent:
                continue
            if django_internals.updates_fetched_rows(f.remote_field.on_delete):
                fields.append(f)
    return fields


def _on_parent_pre_delete(sender, instance, using=None, **kwargs) -> None:
    noted = []
    for f in _reread_fields(sender._meta.concrete_model):
        rows = f.model._base_manager.using(using).filter(**{f.name: instance})
        pks = list(rows.values_list("pk", flat=True))
        if pks:
            noted.append((f.model, pks))
    instance._myko_reread = noted


def _on_parent_post_delete(sender, instance, using=None, **kwargs) -> None:
    for model, pks in getattr(instance, "_myko_reread", ()):
        capture_sets(model, pks, using)
    instance._myko_reread = []


def _with_proxies(models_: set[type[models.Model]]) -> list[type[models.Model]]:
    """Signals name the class an instance was loaded as: include proxies of each model."""
    return [m for m in apps.get_models() if m._meta.concrete_model in models_]


def connect() -> None:
    """Connect the receivers for every registered item model (called from AppConfig.ready)."""
    items = {item_type.model for item_type in registry}
    parents = {
        codec.field.remote_field.model._meta.concrete_model
        for item_type in registry
        for codec in item_type.codecs
        if codec.kind == "fk"
    }
    for model in _with_proxies(items):
        signals.post_save.connect(_on_post_save, sender=model, dispatch_uid=f"myko-save-{model}")
        signals.post_delete.connect(
            _on_post_delete, sender=model, dispatch_uid=f"myko-delete-{model}"
        )
    for parent in _with_proxies({p for p in parents if _reread_fields(p)}):
        signals.pre_delete.connect(
            _on_parent_pre_delete, sender=parent, dispatch_uid=f"myko-parent-pre-{parent}"
        )
        signals.post_delete.connect(
            _on_parent_post_delete, sender=parent, dispatch_uid=f"myko-parent-post-{parent}"
        )
