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


@pytest.fixture
def asgi_app():
    """The project's ASGI application; the per-loop runtime is closed after the test."""
    from myko_django import runtime
    from project.asgi import application

    yield application
    runtime.reset()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daphne_server(transactional_db, tmp_path_factory):
    """A real daphne process serving tests.settings against the test database.

    Yields its ws:// URL. Function-scoped: a transactional test flushes the log afterwards,
    and a server that outlived that would wait for positions that never come again.
    """
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("postgresql"):
        url = (
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    else:
        url = f"sqlite:///{db['NAME']}"
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env.pop("REDIS_URL", None)
    size = str(16 * 1024 * 1024)
    log = tmp_path_factory.mktemp("daphne") / "daphne.log"
    log_file = open(log, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "--websocket-max-message-size",
            size,
            "--websocket-max-frame-size",
            size,
            "project.asgi:application",
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"daphne did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    yield f"ws://127.0.0.1:{port}/myko"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log_file.close()
    print(log.read_text()[-5000:])  # shown by pytest when the test failed
    connection.close()
