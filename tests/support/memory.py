"""An in-memory Backend and Hub for protocol tests of `server.connection.Connection`.

The test double of the Django side (issue 8): no Django, no database, no socket. It is
deliberately small; what it does not do (permissions, idempotent command results,
user-defined operations by decorator, field kinds beyond strings) is the real backend's
and is tested against a database elsewhere.

- `MemoryDatabase`: item tables (id -> wire item) and the event log (CommittedEvent with
  gap-free positions); a commit writes both at once and tells its listeners afterwards,
  as `log.publish` does after a real commit.
- `MemoryBackend`: the `Backend` protocol: the derived operations (docs/protocol.md,
  "Derived operations") of the item types below, a few test commands, and client events
  checked strictly.
- `MemoryHub`: the `Hub` protocol on a real `Engine` + `Sequencer`. Commits reach it on
  a later loop turn (like the real hub's inbox and flush), or with `push=False` only
  through the log (a silent doorbell): `catch_up` and `ensure_store` read the log with
  `run_sync`, exactly as the real hub drives the same sequencer steps.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from myko_django.items.errors import ItemError, OperationError
from myko_django.live.committed import CommittedEvent
from myko_django.live.engine import Engine
from myko_django.live.filters import Filter, FilterError, ItemSchema, compile_filter, filter_for_ids
from myko_django.live.sequencer import LogRead, Sequencer, Snapshot, run_sync
from myko_django.live.updates import ReportSpec, Update
from myko_django.server.connection import CommandRejected, Limits
from myko_django.wire.envelope import RESERVED_KEYS

REQUIRED = object()

# Item type -> wire field -> (filter kind, default). Strings only, strictly typed.
FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "Target": {
        "id": ("id", REQUIRED),
        "name": ("str", REQUIRED),
        "category": ("str", None),
        "sceneId": ("fk", None),
    },
    "Scene": {"id": ("id", REQUIRED), "name": ("str", REQUIRED)},
}
SCHEMAS = {
    name: ItemSchema(name, {f: kind for f, (kind, _) in fields.items()})
    for name, fields in FIELDS.items()
}


def target(tid: str, name: str = "n", category: str | None = None, scene: str | None = None):
    """A Target as the wire carries it (every field present)."""
    return {"id": tid, "name": name, "category": category, "sceneId": scene}


def _known(item_type: Any) -> dict[str, tuple[str, Any]]:
    fields = FIELDS.get(item_type) if isinstance(item_type, str) else None
    if fields is None:
        known = ", ".join(sorted(FIELDS))
        raise ItemError(f"Unknown item type: {item_type} (known: {known})")
    return fields


def check_item(item_type: Any, item: Any) -> dict:
    """The item as stored: unknown keys dropped, defaults filled, types strict; ItemError
    names the problem (the real backend checks each field against its model)."""
    fields = _known(item_type)
    if not isinstance(item, dict):
        raise ItemError(f"{item_type}: item must be an object, got {item!r:.60}")
    out: dict[str, Any] = {}
    for field, (_, default) in fields.items():
        if field not in item or (item[field] is None and default is REQUIRED):
            if default is REQUIRED:
                raise ItemError(f"{item_type}.{field} is required")
            out[field] = default
            continue
        value = item[field]
        if value is not None and not isinstance(value, str):
            raise ItemError(f"{item_type}.{field} must be a string, got {value!r:.60}")
        out[field] = value
    return out


class MemoryDatabase:
    """Tables and log, committed together; listeners hear of each commit afterwards."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict]] = {name: {} for name in FIELDS}
        self.log: list[CommittedEvent] = []
        self.listeners: list[Callable[[list[CommittedEvent]], None]] = []

    @property
    def position(self) -> int:
        return len(self.log)

    def commit(self, changes: Iterable[tuple[str, str, dict]]) -> int:
        """Apply (changeType, itemType, item) in order as one transaction; a DEL needs only
        the item's id and of a missing id writes nothing. Returns the last position."""
        events: list[CommittedEvent] = []
        for change_type, item_type, item in changes:
            table, item_id = self.tables[item_type], item["id"]
            if change_type == "SET":
                table[item_id] = dict(item)
            else:
                item = table.pop(item_id, None)  # a DEL event carries the item it removed
                if item is None:
                    continue
            event = CommittedEvent(self.position + 1, item_type, item_id, change_type, dict(item))
            self.log.append(event)
            events.append(event)
        if events:
            for listener in list(self.listeners):
                listener(events)
        return self.position

    def set(self, item_type: str, *items: dict) -> int:
        return self.commit(("SET", item_type, check_item(item_type, i)) for i in items)

    def delete(self, item_type: str, *ids: str) -> int:
        return self.commit(("DEL", item_type, {"id": i}) for i in ids)

    def read(self, request: LogRead) -> list[CommittedEvent]:
        upto = self.position if request.upto is None else request.upto
        return [
            e
            for e in self.log[request.after : upto]
            if request.item_type is None or e.item_type == request.item_type
        ]

    def snapshot(self, item_type: str) -> Snapshot:
        items = [dict(i) for i in self.tables[item_type].values()]
        return Snapshot(item_type, items, self.position)


class Transaction:
    """What a test command gets: reads see its own writes; nothing is written unless
    the command returns."""

    def __init__(self, db: MemoryDatabase) -> None:
        self.db = db
        self.changes: list[tuple[str, str, dict]] = []
        self._seen: dict[tuple[str, str], dict | None] = {}

    def get(self, item_type: str, item_id: str) -> dict | None:
        key = (item_type, item_id)
        if key in self._seen:
            return self._seen[key]
        return self.db.tables[item_type].get(item_id)

    def set(self, item_type: str, item: dict) -> dict:
        item = check_item(item_type, item)
        self._seen[(item_type, item["id"])] = item
        self.changes.append(("SET", item_type, item))
        return item

    def delete(self, item_type: str, item_id: str, *, missing_ok: bool = True) -> bool:
        old = self.get(item_type, item_id)
        if old is None:
            if missing_ok:
                return False
            raise CommandRejected(f"{item_type} not found: {item_id}")
        self._seen[(item_type, item_id)] = None
        self.changes.append(("DEL", item_type, old))
        return True


# ---- test commands: func(tx, **params) -------------------------------------------------


def rename_target(tx: Transaction, *, id: str, name: str) -> None:
    item = tx.get("Target", id)
    if item is None:
        raise CommandRejected(f"Target not found: {id}")
    tx.set("Target", {**item, "name": name})


def create_targets(tx: Transaction, *, ids: list[str], category: str | None = None) -> dict:
    for i in ids:
        tx.set("Target", target(i, f"n{i}", category))
    return {"created": len(ids)}


def fail_after_write(tx: Transaction, *, id: str) -> None:
    tx.set("Target", target(id, "never"))
    raise RuntimeError(f"failed after writing {id}")


def echo(tx: Transaction, *, value: Any = None) -> Any:
    return value


def _deleter(item_type: str) -> Callable[..., dict]:
    def delete_one(tx: Transaction, *, id: str) -> dict:
        tx.delete(item_type, id, missing_ok=False)
        return {"deleted": True}

    return delete_one


def _bulk_deleter(item_type: str) -> Callable[..., dict]:
    def delete_many(tx: Transaction, *, ids: list[str]) -> dict:
        return {"deletedCount": sum(1 for i in ids if tx.delete(item_type, i))}

    return delete_many


COMMANDS: dict[str, Callable[..., Any]] = {
    "RenameTarget": rename_target,
    "CreateTargets": create_targets,
    "FailAfterWrite": fail_after_write,
    "Echo": echo,
}
for _name in FIELDS:
    COMMANDS[f"Delete{_name}"] = _deleter(_name)
    COMMANDS[f"Delete{_name}s"] = _bulk_deleter(_name)


def _target_names(view: Any) -> list[str]:
    return sorted(i["name"] for i in view.items("Target").values())


def _explode(view: Any) -> Any:
    raise RuntimeError("boom")


# User reports: reportId -> (depends, compute).
REPORTS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "TargetNames": (("Target",), _target_names),
    "Explode": (("Target",), _explode),
}

SERVER = {"id": "memory-1", "version": "0.0.0", "startedAt": "2024-01-01T00:00:00Z"}


class MemoryBackend:
    """The database side of connections, in memory (server/backend.py's twin)."""

    def __init__(self, db: MemoryDatabase, limits: Limits | None = None) -> None:
        self.db = db
        self.allow_client_events = True
        self.limits = limits or Limits()  # read by each connection when it opens
        self.peers: list[dict] = []
        # Set to an unset asyncio.Event to hold commands (in arrival order) until it is set.
        self.command_gate: asyncio.Event | None = None
        self.commands_run: list[tuple[str, str]] = []  # (commandId, tx) as they start

    # -- names -> (item type, filter) / report specs ------------------------------------

    def resolve_query(
        self, query_id: Any, item_type: Any, request: Any, user: Any = None
    ) -> tuple[str, Filter]:
        if not isinstance(query_id, str):
            raise OperationError(f"queryId must be a string, got {query_id!r:.60}")
        for name, schema in SCHEMAS.items():
            if query_id not in (f"GetAll{name}s", f"Get{name}sByIds", f"Get{name}sByQuery"):
                continue
            if item_type is not None and item_type != name:
                raise OperationError(f"{query_id} returns {name} items, not {item_type!r:.60}")
            try:
                if query_id == f"GetAll{name}s":
                    return name, compile_filter(schema, {}, op_name=query_id)
                if query_id == f"Get{name}sByIds":
                    ids = request.get("ids") if isinstance(request, dict) else None
                    return name, filter_for_ids(schema, ids, op_name=query_id)
                spec = _params(query_id, request)
                return name, compile_filter(schema, spec, op_name=query_id, request=True)
            except FilterError as exc:
                raise OperationError(str(exc)) from None
        raise OperationError(f"Query handler not found: {query_id}")

    def resolve_report(self, report_id: Any, request: Any, user: Any = None) -> ReportSpec:
        if not isinstance(report_id, str):
            raise OperationError(f"reportId must be a string, got {report_id!r:.60}")
        if report_id in REPORTS:
            depends, compute = REPORTS[report_id]
            return ReportSpec.custom((report_id,), depends, compute)
        for name, schema in SCHEMAS.items():
            try:
                if report_id == f"CountAll{name}s":
                    return ReportSpec.count(name, compile_filter(schema, {}, op_name=report_id))
                if report_id == f"Count{name}s":
                    spec = _params(report_id, request)
                    flt = compile_filter(schema, spec, op_name=report_id, request=True)
                    return ReportSpec.count(name, flt)
            except FilterError as exc:
                raise OperationError(str(exc)) from None
            if report_id == f"Get{name}ById":
                item_id = request.get("id") if isinstance(request, dict) else None
                if not isinstance(item_id, str):
                    raise OperationError(f'{report_id}: "id" must be a string, got {item_id!r:.60}')
                return ReportSpec.by_id(name, item_id)
        raise OperationError(f"Report handler not found: {report_id}")

    # -- writes ------------------------------------------------------------------------

    async def run_command(
        self, command_id: Any, request: Any, *, tx: str, user: Any, source_id: str
    ) -> tuple[Any, int]:
        self.commands_run.append((command_id, tx))
        await asyncio.sleep(0)  # the real one runs on a database thread
        if self.command_gate is not None:
            await self.command_gate.wait()
        func = COMMANDS.get(command_id) if isinstance(command_id, str) else None
        if func is None:
            raise CommandRejected(f"Command handler not found: {command_id}")
        params = {k: v for k, v in request.items() if k not in RESERVED_KEYS}
        transaction = Transaction(self.db)
        try:
            inspect.signature(func).bind(transaction, **params)
        except TypeError as exc:
            raise CommandRejected(f"{command_id}: {exc}") from None
        try:
            response = func(transaction, **params)
        except CommandRejected:
            raise
        except Exception as exc:  # rolled back: nothing of it is written
            raise CommandRejected(str(exc) or type(exc).__name__) from None
        return response, self.db.commit(transaction.changes)

    async def apply_events(
        self, events: list[Any], *, user: Any = None, source_id: str
    ) -> tuple[int, list[tuple[int, Any, str]]]:
        await asyncio.sleep(0)
        changes: list[tuple[str, str, dict]] = []
        rejected: list[tuple[int, Any, str]] = []
        for index, event in enumerate(events):
            try:
                changes.append(_change(event))
            except ItemError as exc:
                rejected.append((index, event, str(exc)))
        return self.db.commit(changes), rejected

    def servers(self, op_id: str, address: tuple[str, int] | None) -> list[dict]:
        if op_id == "GetConnectedServer":
            host, port = address or ("", 0)
            return [{**SERVER, "address": host, "port": port}]
        return list(self.peers)


def _params(op_name: str, request: Any) -> dict:
    if not isinstance(request, dict):
        raise OperationError(f"{op_name}: parameters must be an object")
    return request


def _change(event: Any) -> tuple[str, str, dict]:
    if not isinstance(event, dict):
        raise ItemError(f"an event must be an object, got {event!r:.60}")
    change_type, item_type, item = event.get("changeType"), event.get("itemType"), event.get("item")
    if change_type not in ("SET", "DEL"):
        raise ItemError(f'changeType must be "SET" or "DEL", got {change_type!r:.40}')
    if change_type == "SET":
        return "SET", item_type, check_item(item_type, item)
    _known(item_type)
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise ItemError(f"{item_type}: a DEL needs the item's string id, got {item!r:.60}")
    return "DEL", item_type, {"id": item["id"]}


class MemoryHub:
    """The process's engine and sequencer, fed from a MemoryDatabase."""

    def __init__(self, db: MemoryDatabase, *, push: bool = True) -> None:
        self.db = db
        self.engine = Engine(SCHEMAS)
        self.sequencer = Sequencer(self.engine, db.position)
        self.sinks: dict[Hashable, Callable[[Update], None]] = {}
        self.push = push  # False: commits reach this hub only by reading the log
        # Set to an unset asyncio.Event to hold store loads (after their read) until set.
        self.load_gate: asyncio.Event | None = None
        self.loads: list[str] = []
        self._loading: dict[str, asyncio.Future] = {}
        self._inbox: list[CommittedEvent] = []
        self._flush_scheduled = False
        db.listeners.append(self._committed)

    def close(self) -> None:
        self.db.listeners.remove(self._committed)

    # -- Hub protocol -------------------------------------------------------------------

    def attach(self, conn: Hashable, sink: Callable[[Update], None]) -> None:
        self.sinks[conn] = sink

    def detach(self, conn: Hashable) -> None:
        self.sinks.pop(conn, None)
        self.engine.drop_connection(conn)

    def deliver(self, updates: Sequence[Update | None]) -> None:
        for update in updates:
            if update is not None and (sink := self.sinks.get(update.conn)) is not None:
                sink(update)

    async def ensure_store(self, item_type: str) -> None:
        if self.engine.has_store(item_type):
            return
        if item_type in self._loading:
            await asyncio.shield(self._loading[item_type])
            return
        future = self._loading[item_type] = asyncio.get_running_loop().create_future()
        try:
            snapshot = self.db.snapshot(item_type)
            self.loads.append(item_type)
            await asyncio.sleep(0)  # the real read runs on a database thread
            if self.load_gate is not None:
                await self.load_gate.wait()  # commits meanwhile are replayed by install
            self.deliver(run_sync(self.sequencer.install(snapshot), self.db.read))
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._loading[item_type]

    async def catch_up(self, position: int) -> None:
        if self.sequencer.applied < position:
            self.flush()
        if self.sequencer.applied < position:
            self.deliver(run_sync(self.sequencer.catch_up(position), self.db.read))

    # -- commits ------------------------------------------------------------------------

    def _committed(self, events: list[CommittedEvent]) -> None:
        if not self.push:
            return
        self._inbox.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Apply what arrived (the real hub does this once per loop turn)."""
        self._flush_scheduled = False
        events, self._inbox = self._inbox, []
        self.deliver(self.sequencer.offer(events))

    def poll(self) -> None:
        """Apply whatever the log holds beyond what was applied (the real hub's poll)."""
        self.deliver(run_sync(self.sequencer.poll(), self.db.read))
