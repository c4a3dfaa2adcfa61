"""Test helpers for projects using myko-django: run commands and watch live queries and
reports in-process, without a server (like Channels' WebsocketCommunicator).

    session = LiveSession()
    targets = session.query("GetTargetsByQuery", "Target", {"category": "a"})
    session.command("RenameTarget", {"id": t.pk, "name": "new"})
    assert targets.items[t.pk]["name"] == "new"

Use it with `pytest.mark.django_db(transaction=True)`: events are published on commit.

For end-to-end tests over a real socket (several worker processes, a server restart, a
client in another language), `DaphneServer` runs your ASGI application in a daphne process
of its own on the test database:

    server = DaphneServer().start()     # in a transactional test
    ...connect a client to server.url...
    server.stop()
"""

from __future__ import annotations

import http.client
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.db import connections

from myko_django.items.operations import resolve_query, resolve_report
from myko_django.items.registry import registry
from myko_django.live.engine import Engine
from myko_django.live.sequencer import Sequencer, Steps, run_sync
from myko_django.live.updates import QueryUpdate, ReportUpdate, Update
from myko_django.log import publish
from myko_django.log.commands import Outcome, run_command
from myko_django.log.read import high_water, read_request, read_snapshot


class LiveQuery:
    """What a client would hold for one query: every response, and the current result."""

    def __init__(self, session: LiveSession, tx: str) -> None:
        self.session = session
        self.tx = tx
        self.responses: list[dict] = []
        self.items: dict[str, dict] = {}

    def _receive(self, update: QueryUpdate) -> None:
        wire = update.to_wire()
        if wire["sequence"] == 0:
            self.items = {}
        for item_id in wire["deletes"]:
            self.items.pop(item_id, None)
        for row in wire["upserts"]:
            self.items[row["item"]["id"]] = row["item"]
        self.responses.append(wire)

    def set_window(self, window: dict | None) -> None:
        self.session._deliver([self.session.engine.set_window(self.session.conn, self.tx, window)])

    def cancel(self) -> None:
        self.session.engine.cancel(self.session.conn, self.tx)


class LiveReport:
    def __init__(self, tx: str) -> None:
        self.tx = tx
        self.values: list[Any] = []

    @property
    def value(self) -> Any:
        return self.values[-1]


class LiveSession:
    """One in-process 'connection' with its own engine, fed by committed events."""

    def __init__(self, user: Any = None) -> None:
        self.user = user
        self.conn = object()
        self.engine = Engine({it.name: it.schema for it in registry})
        self.sequencer = Sequencer(self.engine, high_water())
        self._tx = itertools.count(1)
        self._inbox: list = []
        self._lock = threading.Lock()
        self._subs: dict[str, LiveQuery | LiveReport] = {}
        publish.add_listener(self._published)

    def close(self) -> None:
        publish.remove_listener(self._published)
        self.engine.drop_connection(self.conn)

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _published(self, events) -> None:
        with self._lock:
            self._inbox.extend(events)

    def pump(self) -> None:
        """Apply every event committed so far and deliver the updates."""
        with self._lock:
            events, self._inbox = self._inbox, []
        self._deliver(self.sequencer.offer(events))
        self._run(self.sequencer.fill_gaps())
        self._run(self.sequencer.poll())

    def _run(self, steps: Steps) -> None:
        self._deliver(run_sync(steps, read_request))

    def _ensure_store(self, item_type: str) -> None:
        if not self.engine.has_store(item_type):
            self._run(self.sequencer.install(read_snapshot(item_type)))

    def _deliver(self, updates: list[Update]) -> None:
        for update in updates:
            if update is None or update.conn is not self.conn:
                continue
            sub = self._subs.get(update.tx)
            if isinstance(update, QueryUpdate) and isinstance(sub, LiveQuery):
                sub._receive(update)
            elif isinstance(update, ReportUpdate) and isinstance(sub, LiveReport):
                sub.values.append(update.value)

    def query(
        self, query_id: str, item_type: str, params: dict | None = None, window: dict | None = None
    ) -> LiveQuery:
        item_type, flt = resolve_query(query_id, item_type, params or {}, self.user)
        self.pump()
        self._ensure_store(item_type)
        live = LiveQuery(self, f"q{next(self._tx)}")
        self._subs[live.tx] = live
        self._deliver([self.engine.subscribe_query(self.conn, live.tx, item_type, flt, window)])
        return live

    def report(self, report_id: str, params: dict | None = None) -> LiveReport:
        spec = resolve_report(report_id, params or {}, self.user)
        self.pump()
        for item_type in spec.item_types:
            self._ensure_store(item_type)
        live = LiveReport(f"r{next(self._tx)}")
        self._subs[live.tx] = live
        self._deliver([self.engine.subscribe_report(self.conn, live.tx, spec)])
        return live

    def command(self, command_id: str, params: dict | None = None, *, tx: str | None = None) -> Any:
        """Run a command as this session's user; its updates are delivered before it returns."""
        outcome: Outcome = run_command(
            command_id, params or {}, tx=tx or f"c{next(self._tx)}", user=self.user
        )
        self.pump()
        self._run(self.sequencer.catch_up(outcome.position))
        return outcome.response


# ---- a real server ------------------------------------------------------------------------

#: daphne's own caps are 1 MiB per message and frame (README, "Serving it").
MAX_MESSAGE = 16 * 1024 * 1024


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib raises HTTPError with the 3xx response instead


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def current_database_url(alias: str = "default") -> str:
    """The URL of the database this process uses (under pytest-django: the test database),
    in the form dj-database-url reads, for other processes to use the same one."""
    db = connections[alias].settings_dict
    engine = db["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite:///{db['NAME']}"
    if engine != "postgresql":
        raise ValueError(f"no URL for database engine {db['ENGINE']}: pass database_url")
    user = urllib.parse.quote(db.get("USER") or "", safe="")
    if user and db.get("PASSWORD"):
        user += ":" + urllib.parse.quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user + '@' if user else ''}{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def _asgi_application() -> str:
    path = getattr(django_settings, "ASGI_APPLICATION", None)
    if not path:
        raise ValueError("settings.ASGI_APPLICATION is not set: pass application='module:attr'")
    module, _, attr = path.rpartition(".")
    return f"{module}:{attr}"


class DaphneServer:
    """One daphne process serving the project's ASGI application on a free local port.

    For tests that need a real socket or several worker processes, and for benchmarks. The
    process gets this process's environment plus `DJANGO_SETTINGS_MODULE` (default: this
    process's) and `DATABASE_URL` (default: `current_database_url()`, the test database under
    pytest-django; your settings must read it, e.g. with dj-database-url), without
    `REDIS_URL` unless `redis_url` is given (then, if your settings read it, workers meet
    through channels-redis), then `extra_env` on top. Tests that use it need
    `django_db(transaction=True)`: the server cannot see a test's open transaction. Start a
    fresh server per test: after a transactional test the log starts again at position 1.

    `application` defaults to `settings.ASGI_APPLICATION`; daphne runs with 16 MiB message
    and frame limits (its defaults are 1 MiB). Its output goes to `log_dir` (a new
    temporary directory by default); `output()` reads it, to show when a test fails.

        server = DaphneServer(redis_url="redis://127.0.0.1:6379/0").start()
        async with websockets.connect(server.url) as ws: ...
        server.stop()
    """

    def __init__(
        self,
        log_dir: Path | str | None = None,
        *,
        settings: str | None = None,
        database_url: str | None = None,
        application: str | None = None,
        path: str = "/myko",
        redis_url: str | None = None,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.port = port or free_port()
        self.path = path
        self.application = application or _asgi_application()
        self.max_message = max_message
        log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="myko-daphne-"))
        self.log = log_dir / f"daphne-{self.port}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url or current_database_url(),
            "DJANGO_SETTINGS_MODULE": settings or django_settings.SETTINGS_MODULE,
            **(extra_env or {}),
        }
        self.env.pop("REDIS_URL", None)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL of the myko endpoint (`path`)."""
        return f"ws://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout: float = 20) -> DaphneServer:
        """Launch and wait until it serves; returns self."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (start several, then `wait_ready` each)."""
        log_file = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--websocket-max-message-size",
                str(self.max_message),
                "--websocket-max-frame-size",
                str(self.max_message),
                self.application,
            ],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()

    def wait_ready(self, timeout: float = 20) -> DaphneServer:
        """Wait until it answers an HTTP request (any status); kills it and raises with its
        output if it exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                _NO_REDIRECTS.open(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            except urllib.error.HTTPError:
                # An error page is an answer: the application is loaded. So is a redirect
                # (to https://, with production settings), which is not followed.
                return self
            except (OSError, http.client.HTTPException):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"daphne did not start:\n{self.output()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL after 10 s); it can be started again."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no closing handshake, as when a worker dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text() if self.log.exists() else ""
