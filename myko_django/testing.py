"""Test helpers for projects using myko-django: run commands and watch live queries and
reports in-process, without a server (like Channels' WebsocketCommunicator).

    session = LiveSession()
    targets = session.query("GetTargetsByQuery", "Target", {"category": "a"})
    session.command("RenameTarget", {"id": t.pk, "name": "new"})
    assert targets.items[t.pk]["name"] == "new"

Use it with `pytest.mark.django_db(transaction=True)`: events are published on commit.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

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
        item_type, flt = resolve_query(query_id, item_type, params or {})
        self.pump()
        self._ensure_store(item_type)
        live = LiveQuery(self, f"q{next(self._tx)}")
        self._subs[live.tx] = live
        self._deliver([self.engine.subscribe_query(self.conn, live.tx, item_type, flt, window)])
        return live

    def report(self, report_id: str, params: dict | None = None) -> LiveReport:
        spec = resolve_report(report_id, params or {})
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
