"""Hands committed events to whoever listens in this process (the hub), after commit only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[[Sequence[Any]], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def committed(events: Sequence[Any]) -> None:
    """Called by `transaction.on_commit` with the events a transaction made durable."""
    for listener in list(_listeners):
        try:
            listener(events)
        except Exception:  # a broken listener must not break the writer's request
            logger.exception("myko: event listener %r failed", listener)
