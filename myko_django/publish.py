"""Hands committed events to whoever listens in this process (the hub), after commit only."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[[Sequence[Any]], None]
_listeners: list[Listener] = []
_batch: contextvars.ContextVar[list | None] = contextvars.ContextVar("myko_batch", default=None)


def add_listener(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


@contextmanager
def batched() -> Iterator[None]:
    """Publish what commits inside as one batch on exit.

    A command appends once per write and each append has its own `on_commit` (so a rolled
    back savepoint drops its events); gathering them here means one commit reaches
    subscribers as one update, not one per write.
    """
    if _batch.get() is not None:
        yield
        return
    events: list = []
    token = _batch.set(events)
    try:
        yield
    finally:
        _batch.reset(token)
        if events:
            _notify(events)


def committed(events: Sequence[Any]) -> None:
    """Called by `transaction.on_commit` with the events one append made durable."""
    batch = _batch.get()
    if batch is not None:
        batch.extend(events)
    else:
        _notify(events)


def _notify(events: Sequence[Any]) -> None:
    for listener in list(_listeners):
        try:
            listener(events)
        except Exception:  # a broken listener must not break the writer's request
            logger.exception("myko: event listener %r failed", listener)
