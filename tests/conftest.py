"""Shared fixtures. Tests that need committed data (threads, on_commit) use
`django_db(transaction=True)`: commands run on other threads and in daphne processes, which
cannot see an open test transaction, and `on_commit` runs only on a real commit."""

from pathlib import Path

import pytest

from myko_django.log import publish


@pytest.fixture
def published():
    """Every batch of events published after commit, in order, during the test."""
    batches: list = []
    publish.add_listener(batches.append)
    yield batches
    publish.remove_listener(batches.append)


@pytest.fixture(params=["json", "msgpack"])
def fmt(request) -> str:
    """Each protocol test runs in JSON and in MessagePack."""
    return request.param


# The folder says what a test needs:
#   unit/    pure Python, no database, no socket
#   db/      the ORM and the database (pytest-django)
#   asgi/    the project's ASGI application in-process (Channels' WebsocketCommunicator)
#   system/  real daphne processes, other processes, Redis
# unit, db and asgi are the core suite: bin/test runs it on Postgres and again on SQLite with
# the in-memory channel layer. system runs on Postgres + Redis only.
CORE_FOLDERS = frozenset({"unit", "db", "asgi"})
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    for item in items:
        path = item.path.resolve()
        if path.is_relative_to(TESTS) and path.relative_to(TESTS).parts[0] in CORE_FOLDERS:
            item.add_marker(pytest.mark.core)


@pytest.fixture
def asgi_app():
    """The project's ASGI application; the per-loop hub is closed after the test."""
    from myko_django.server import hub
    from project.asgi import application

    yield application
    hub.reset()


@pytest.fixture
def daphne_server(transactional_db, tmp_path):
    """A real daphne process serving tests.settings against the test database
    (`myko_django.testing.DaphneServer`).

    Yields its ws:// URL. Function-scoped: a transactional test flushes the log afterwards,
    and a server that outlived that would wait for positions that never come again.
    """
    from django.db import connection

    from myko_django.testing import DaphneServer

    worker = DaphneServer(tmp_path).start()
    yield worker.url
    worker.stop()
    print(worker.output()[-5000:])  # shown by pytest when the test failed
    connection.close()


@pytest.fixture
def daphne_workers(transactional_db, tmp_path):
    """Start real daphne workers with `daphne_workers(n, redis_url=...)`; all are stopped
    after the test."""
    from django.db import connection

    from myko_django.testing import DaphneServer

    started: list = []

    def start(n: int = 1, **kwargs):
        workers = [DaphneServer(tmp_path, **kwargs) for _ in range(n)]
        for worker in workers:
            worker.launch()
        for worker in workers:
            worker.wait_ready()
        started.extend(workers)
        return workers

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        print(worker.output()[-3000:])
    connection.close()
