"""Shared fixtures. Tests that need committed data (threads, on_commit) use
`django_db(transaction=True)`; see DESIGN.md "Tests see the database"."""

import pytest

from myko_django import publish


@pytest.fixture
def published():
    """Every batch of events published after commit, in order, during the test."""
    batches: list = []
    publish.add_listener(batches.append)
    yield batches
    publish.remove_listener(batches.append)


def pytest_collection_modifyitems(items):
    # Engine and filter tests are pure Python: part of the core suite on both databases.
    for item in items:
        if item.fspath.basename in ("test_engine.py", "test_filters.py"):
            item.add_marker(pytest.mark.core)
