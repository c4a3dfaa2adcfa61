"""Transactions that the database refused for their timing, not their content, run again.

A deadlock (SQLSTATE 40P01) or a serialization failure (40001) rolls the whole transaction
back, at any statement or at COMMIT; running it again from the start usually succeeds, as
the other transaction has gone on meanwhile. So does SQLite's "database is locked".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


def retryable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a failure a fresh run of the transaction may not
    meet again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in RETRY_SQLSTATES:
            return True
        if getattr(getattr(current, "diag", None), "sqlstate", None) in RETRY_SQLSTATES:
            return True
        if isinstance(current, OperationalError) and "database is locked" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def run(func: Callable[[], T], *, using: str = "default", attempts: int = ATTEMPTS) -> T:
    """`func()`, which runs one whole transaction; run again (at most `attempts` times in
    all, after a short random pause) while it fails for a `retryable` reason. Inside a
    caller's transaction it runs once: that transaction is the one to redo, not ours."""
    if transaction.get_connection(using).in_atomic_block:
        return func()
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except Exception as exc:
            if attempt == attempts or not retryable(exc):
                raise
            logger.info("myko: transaction failed (%s), retrying (%d)", exc, attempt)
            time.sleep(random.uniform(0.005, 0.03) * attempt)
    raise AssertionError("unreachable")
