"""Sagas by decorator: a handler that turns the events of one item type into writes.

Only the declaration lives here (what a saga follows and how it wants its events); the
runtime that follows the log from a durable checkpoint is `myko_django.sagas`, run by
`manage.py myko_sagas` (docs/architecture.md, "Sagas").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from myko_django.items.errors import ItemError, OperationError
from myko_django.items.registry import registry
from myko_django.live import filters

CHANGE_TYPES = ("SET", "DEL")


@dataclass
class Saga:
    """One registered saga: `func(ctx, item, event)`, or `func(ctx, events)` when
    `batch` is set (a list of at most `batch` events, each with its `item`)."""

    name: str
    item_type: str
    changes: frozenset[str]
    func: Callable[..., Any]
    # Only events whose item (for DEL: its last state) matches this filter, as
    # GetXsByQuery takes it; None: every event of the type.
    filter: dict[str, Any] | None = None
    batch: int | None = None
    # Where a saga without a checkpoint starts: "head" (only what commits from now on),
    # or a log position (0: replay the whole log).
    start: str | int = "head"
    retries: int = 3  # attempts after the first, before the event is parked
    backoff: float = 0.2  # seconds before the first retry, doubled for each next one
    where: str = field(default="")

    def compiled_filter(self) -> filters.Filter | None:
        """The filter compiled against the item type (OperationError if either is wrong)."""
        try:
            it = registry.get(self.item_type)
        except ItemError as exc:
            raise OperationError(f"saga {self.name}: {exc}") from None
        if self.filter is None:
            return None
        try:
            return filters.compile_filter(it.schema, self.filter, op_name=f"saga {self.name}")
        except filters.FilterError as exc:
            raise OperationError(str(exc)) from None


_sagas: dict[str, Saga] = {}
_duplicates: list[tuple[Saga, Saga]] = []


def _item_name(item: str | type[models.Model]) -> str:
    if isinstance(item, str):
        return item
    return getattr(item, "myko_name", None) or item.__name__


def saga(
    item: str | type[models.Model],
    *,
    on: str | Iterable[str] = ("SET", "DEL"),
    name: str | None = None,
    filter: dict[str, Any] | None = None,  # noqa: A002 - the word the docs use
    batch: int | None = None,
    start: str | int = "head",
    retries: int = 3,
    backoff: float = 0.2,
) -> Callable:
    """Register `func(ctx, item, event)` to run for each SET and/or DEL (`on`) of `item`.

    It runs in `manage.py myko_sagas`, as the system (no permission checks), in one
    transaction with the advance of its checkpoint: each event's effects happen once.
    `ctx` reads (`get`, `query`) and writes like a command's (`set`, `set_many`, `create`,
    `delete`, `run`); `ctx.previous` is the item before this event (None if new).
    `filter`: only events whose item matches (as GetXsByQuery takes it). `batch=N`:
    `func(ctx, events)` gets up to N events at once. `start`: where a new saga begins,
    "head" (default) or a position (0 replays the log). A handler that raises is retried
    `retries` times (after `backoff`, doubling), then its event is parked (admin)."""
    changes = (on,) if isinstance(on, str) else tuple(on)
    bad = [c for c in changes if c not in CHANGE_TYPES]
    if not changes or bad:
        raise ValueError(f"saga: on must be 'SET', 'DEL' or both, got {on!r}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"saga: batch must be a positive int or None, got {batch!r}")
    if start != "head" and (not isinstance(start, int) or isinstance(start, bool) or start < 0):
        raise ValueError(f"saga: start must be 'head' or a position >= 0, got {start!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"saga: retries must be an int >= 0, got {retries!r}")
    if filter is not None and not isinstance(filter, dict):
        raise ValueError(f"saga: filter must be a dict, got {type(filter).__name__}")

    def register(func: Callable) -> Callable:
        saga_name = name or "".join(p[:1].upper() + p[1:] for p in func.__name__.split("_"))
        where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
        entry = Saga(
            name=saga_name,
            item_type=_item_name(item),
            changes=frozenset(changes),
            func=func,
            filter=filter,
            batch=batch,
            start=start,
            retries=retries,
            backoff=float(backoff),
            where=where,
        )
        earlier = _sagas.get(saga_name)
        if earlier is not None and earlier.where != where:
            _duplicates.append((earlier, entry))
        _sagas[saga_name] = entry
        return func

    return register


def registered() -> dict[str, Saga]:
    """Every registered saga, by name."""
    return dict(_sagas)


def duplicate_registrations() -> list[tuple[Saga, Saga]]:
    """(earlier, later) pairs of sagas registered under one name (the later replaced it)."""
    return list(_duplicates)


def get(name: str) -> Saga:
    try:
        return _sagas[name]
    except KeyError:
        known = ", ".join(sorted(_sagas)) or "none"
        raise OperationError(f"Unknown saga: {name} (known: {known})") from None


def unregister(name: str) -> Saga | None:
    """Remove a saga (tests registering sagas of their own)."""
    _duplicates[:] = [(a, b) for a, b in _duplicates if b.name != name]
    return _sagas.pop(name, None)
