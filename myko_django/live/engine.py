"""The engine proper: item stores, shared live results, their indexes and the diffing.

Pure Python, single-threaded (one event-loop thread), no I/O. See PROTOCOL.md §3-§4.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from myko_django.live.committed import CommittedEvent
from myko_django.live.filters import Filter, ItemSchema, field_key, strict_equal
from myko_django.live.updates import (
    EngineError,
    QueryUpdate,
    ReportSpec,
    ReportUpdate,
    SharedItems,
    Update,
)
from myko_django.wire.envelope import parse_window

log = logging.getLogger(__name__)

Key = tuple[Hashable, str]  # (conn, tx)


# ---------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------


class _Store:
    __slots__ = ("items", "position", "by_field")

    def __init__(self, items: dict[str, dict], position: int) -> None:
        self.items = items
        self.position = position
        # field -> field_key -> id (or set of ids): built for a field the first time a new
        # live result filters a large store by equality on it, then kept current.
        self.by_field: dict[str, dict[Hashable, str | set[str]]] = {}


# Below this many items a new live result scans the store instead of indexing a field.
INDEX_STORES_FROM = 1000


class _Sub:
    """A query subscriber: only what differs between subscribers of one live result."""

    __slots__ = ("conn", "tx", "live", "sequence", "window")

    def __init__(self, conn: Hashable, tx: str, live: _Live, window: tuple[int, int] | None):
        self.conn = conn
        self.tx = tx
        self.live = live
        self.sequence = 0
        self.window = window


class _Window:
    """Subscribers of one live result with the same window share its page."""

    __slots__ = ("offset", "limit", "echo", "page", "total", "subs", "snapshot", "_changes")

    def __init__(self, offset: int, limit: int, page: list[str], total: int) -> None:
        self.offset = offset
        self.limit = limit
        self.echo = {"offset": offset, "limit": limit}
        self.page = page
        self.total = total
        self.subs: dict[Key, _Sub] = {}
        self.snapshot: SharedItems | None = None
        self._changes: list[dict] | None = None

    def set_page(self, page: list[str], total: int) -> None:
        self.page = page
        self.total = total
        self.snapshot = None
        self._changes = None

    def changes(self) -> list[dict]:
        if self._changes is None:
            self._changes = [
                {
                    "kind": "windowOrder",
                    "ids": self.page,
                    "total_count": self.total,
                    "window": self.echo,
                }
            ]
        return self._changes


class _Live:
    """One shared live result: the ids matching (item_type, filter), and who watches them."""

    __slots__ = (
        "item_type",
        "flt",
        "ids",
        "subs",
        "windows",
        "sorted_ids",
        "counts",
        "snapshot",
        "index",
    )

    def __init__(self, item_type: str, flt: Filter, ids: set[str]) -> None:
        self.item_type = item_type
        self.flt = flt
        self.ids = ids
        self.subs: dict[Key, _Sub] = {}  # unwindowed
        # Made when first needed: most results have neither (memory per subscription).
        self.windows: dict[tuple[int, int], _Window] | None = None
        self.sorted_ids: list[str] | None = None  # kept only while windows exist
        self.counts: dict[_ReportGroup, None] | None = None
        self.snapshot: SharedItems | None = None  # kept only while the result is shared
        self.index: tuple = ()

    def unused(self) -> bool:
        return not self.subs and not self.windows and not self.counts


class _ReportGroup:
    __slots__ = ("spec", "value", "subs", "live")

    def __init__(self, spec: ReportSpec, value: Any) -> None:
        self.spec = spec
        self.value = value
        self.subs: dict[Key, _ReportSub] = {}
        self.live: _Live | None = None


class _ReportSub:
    __slots__ = ("conn", "tx", "group")

    def __init__(self, conn: Hashable, tx: str, group: _ReportGroup) -> None:
        self.conn = conn
        self.tx = tx
        self.group = group


class _Delta:
    __slots__ = ("entered", "left", "changed")

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.left: list[str] = []
        self.changed: list[str] = []


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


class Engine:
    """Item stores plus live queries and reports, indexed so an event visits only what it may
    affect: results registered under its (type, id), under (type, field, key) of its old and
    new value for one equality field, and the type's unindexed results."""

    def __init__(self, schemas: dict[str, ItemSchema]) -> None:
        self._schemas = dict(schemas)
        self._stores: dict[str, _Store] = {}
        self._lives: dict[tuple[str, Hashable], _Live] = {}
        # Index slots hold a lone live result itself, several in a dict (see _slot_add).
        self._by_id: dict[str, dict[str, _Slot]] = {}
        self._by_field: dict[str, dict[str, dict[Hashable, _Slot]]] = {}
        self._scan: dict[str, dict[_Live, None]] = {}
        self._subs: dict[Key, _Sub | _ReportSub] = {}
        self._by_conn: dict[Hashable, dict[str, None]] = {}
        self._groups: dict[Hashable, _ReportGroup] = {}
        self._reports_by_id: dict[str, dict[str, dict[_ReportGroup, None]]] = {}
        self._reports_by_type: dict[str, dict[_ReportGroup, None]] = {}
        # Test and benchmark counters.
        self.predicate_evaluations = 0

    # -- stores -------------------------------------------------------------

    def has_store(self, item_type: str) -> bool:
        return item_type in self._stores

    def store_position(self, item_type: str) -> int | None:
        store = self._stores.get(item_type)
        return None if store is None else store.position

    def load_store(self, item_type: str, items: Iterable[dict], position: int) -> None:
        """Install the whole table as read at log `position`; later events apply on top."""
        if item_type not in self._schemas:
            raise EngineError(f"unknown item type {item_type!r}")
        if item_type in self._stores:
            raise EngineError(f"store {item_type!r} is already loaded")
        self._stores[item_type] = _Store({str(it["id"]): it for it in items}, position)

    def unload_store(self, item_type: str) -> bool:
        """Drop a store nobody watches (to free memory); returns False if it is still in use."""
        if item_type not in self._stores:
            return False
        if any(t == item_type for t, _ in self._lives) or any(
            item_type in (g.spec.item_types or (g.spec.item_type,)) for g in self._groups.values()
        ):
            return False
        del self._stores[item_type]
        return True

    def items(self, item_type: str) -> Mapping[str, dict]:
        """Read-only id -> item view of a loaded store (for report functions)."""
        return MappingProxyType(self._store(item_type).items)

    def _store(self, item_type: str) -> _Store:
        store = self._stores.get(item_type)
        if store is None:
            raise EngineError(f"store {item_type!r} is not loaded")
        return store

    def stats(self) -> dict[str, int]:
        return {
            "stores": len(self._stores),
            "live_results": len(self._lives),
            "subscriptions": len(self._subs),
            "report_groups": len(self._groups),
            "predicate_evaluations": self.predicate_evaluations,
        }

    # -- live results and their index -----------------------------------------

    def _live_for(self, item_type: str, flt: Filter) -> _Live:
        lkey = (item_type, flt.key)
        live = self._lives.get(lkey)
        if live is not None:
            return live
        items = self._store(item_type).items
        matches = flt.matches
        ids: set[str] = set()
        if flt.ids is not None:
            candidates: Iterable[tuple[str, dict]] = ((i, items[i]) for i in flt.ids if i in items)
        elif flt.eq_keys and len(items) >= INDEX_STORES_FROM:
            # Distinct subscriptions arriving one after another must not each scan a big
            # store on the event loop: look the equality field up in the store's index.
            field, key = flt.eq_keys[0]
            slot = self._field_index(item_type, field).get(key, ())
            found = (slot,) if isinstance(slot, str) else tuple(slot)
            candidates = ((i, items[i]) for i in found)
        else:
            candidates = items.items()
        n = 0
        for item_id, item in candidates:
            n += 1
            if _safe_match(matches, item):
                ids.add(item_id)
        self.predicate_evaluations += n
        live = _Live(item_type, flt, ids)
        self._register(live)
        self._lives[lkey] = live
        return live

    def _field_index(self, item_type: str, field: str) -> dict[Hashable, str | set[str]]:
        store = self._stores[item_type]
        index = store.by_field.get(field)
        if index is None:
            kind = self._schemas[item_type].fields.get(field, "json")
            index = store.by_field[field] = {}
            for item_id, item in store.items.items():
                _index_id(index, field_key(kind, item.get(field)), item_id)
        return index

    def _register(self, live: _Live) -> None:
        flt, t = live.flt, live.item_type
        if flt.ids is not None:
            by_id = self._by_id.setdefault(t, {})
            for i in flt.ids:
                _slot_add(by_id, i, live)
            live.index = ("id",)
        elif flt.eq_keys:
            fields = self._by_field.setdefault(t, {})
            # Prefer a field already indexed: fewer lookups per event.
            field, k = next(((f, k) for f, k in flt.eq_keys if f in fields), flt.eq_keys[0])
            _slot_add(fields.setdefault(field, {}), k, live)
            live.index = ("field", field, k)
        else:
            self._scan.setdefault(t, {})[live] = None
            live.index = ("scan",)

    def _unregister(self, live: _Live) -> None:
        t = live.item_type
        kind = live.index[0]
        if kind == "id":
            by_id = self._by_id[t]
            for i in live.flt.ids or ():
                _slot_remove(by_id, i, live)
            if not by_id:
                del self._by_id[t]
        elif kind == "field":
            _, field, k = live.index
            fields = self._by_field[t]
            keyed = fields[field]
            _slot_remove(keyed, k, live)
            if not keyed:
                del fields[field]
            if not fields:
                del self._by_field[t]
        else:
            scan = self._scan[t]
            scan.pop(live, None)
            if not scan:
                del self._scan[t]

    def _release(self, live: _Live) -> None:
        if live.unused():
            self._unregister(live)
            del self._lives[(live.item_type, live.flt.key)]

    def _window(self, live: _Live, w: tuple[int, int]) -> _Window:
        if live.windows is None:
            live.windows = {}
        g = live.windows.get(w)
        if g is None:
            if live.sorted_ids is None:
                live.sorted_ids = sorted(live.ids)
            offset, limit = w
            g = _Window(offset, limit, live.sorted_ids[offset : offset + limit], len(live.ids))
            live.windows[w] = g
        return g

    def _detach(self, sub: _Sub) -> None:
        live, key = sub.live, (sub.conn, sub.tx)
        if sub.window is None:
            live.subs.pop(key, None)
        else:
            assert live.windows is not None
            g = live.windows[sub.window]
            g.subs.pop(key, None)
            if not g.subs:
                del live.windows[sub.window]
                if not live.windows:
                    live.windows = None
                    live.sorted_ids = None

    # -- queries ----------------------------------------------------------------

    def subscribe_query(
        self, conn: Hashable, tx: str, item_type: str, flt: Filter, window: dict | None
    ) -> QueryUpdate | None:
        """Start a live query; returns its sequence-0 snapshot, or None for an active tx."""
        key = (conn, tx)
        if key in self._subs:
            return None
        self._store(item_type)
        w = parse_window(window)
        live = self._live_for(item_type, flt)
        sub = _Sub(conn, tx, live, w)
        self._add_sub(key, sub)
        if w is None:
            live.subs[key] = sub
            return QueryUpdate(conn, tx, 0, self._snapshot(live), [], len(live.ids))
        g = self._window(live, w)
        g.subs[key] = sub
        return QueryUpdate(
            conn, tx, 0, self._page_snapshot(live, g), [], g.total, g.echo, g.changes()
        )

    def _snapshot(self, live: _Live) -> SharedItems:
        """The result's items for a sequence 0, kept (with its encodings) for the next
        identical subscriber only once a second one came: a result watched by one
        subscription would otherwise hold a copy of its items it never sends again."""
        if live.snapshot is not None:
            return live.snapshot
        items = self._stores[live.item_type].items
        snapshot = SharedItems(live.item_type, tuple(items[i] for i in live.ids))
        if len(live.subs) > 1:
            live.snapshot = snapshot
        return snapshot

    def _page_snapshot(self, live: _Live, g: _Window) -> SharedItems:
        if g.snapshot is None:
            items = self._stores[live.item_type].items
            g.snapshot = SharedItems(live.item_type, tuple(items[i] for i in g.page))
        return g.snapshot

    def set_window(self, conn: Hashable, tx: str, window: dict | None) -> QueryUpdate | None:
        """Change a query's window (PROTOCOL §3.3): diff of what the client sees before/after."""
        sub = self._subs.get((conn, tx))
        if not isinstance(sub, _Sub):
            return None
        w = parse_window(window)
        if w == sub.window:
            return None
        live, key = sub.live, (conn, tx)
        old_page = None if sub.window is None else live.windows[sub.window].page
        if w is None:
            live.subs[key] = sub
        else:
            g = self._window(live, w)
            g.subs[key] = sub
        self._detach(sub)
        sub.window = w
        sub.sequence += 1
        items = self._stores[live.item_type].items
        t = live.item_type
        if w is None:
            old = set(old_page or ())
            shown = tuple(items[i] for i in live.ids if i not in old)
            return QueryUpdate(conn, tx, sub.sequence, SharedItems(t, shown), [], len(live.ids))
        new_page = g.page
        new_set = set(new_page)
        if old_page is None:
            assert live.sorted_ids is not None
            deletes = [i for i in live.sorted_ids if i not in new_set]
            upserts: tuple[dict, ...] = ()
        else:
            old_set = set(old_page)
            deletes = [i for i in old_page if i not in new_set]
            upserts = tuple(items[i] for i in new_page if i not in old_set)
        return QueryUpdate(
            conn, tx, sub.sequence, SharedItems(t, upserts), deletes, g.total, g.echo, g.changes()
        )

    # -- reports ----------------------------------------------------------------

    def subscribe_report(self, conn: Hashable, tx: str, report: ReportSpec) -> ReportUpdate:
        """Start (or replace) a live report; returns its current value.

        A custom compute that raises propagates, and the old subscription stays.
        """
        key = (conn, tx)
        old = self._subs.get(key)
        if isinstance(old, _ReportSub) and old.group.spec.key == report.key:
            return ReportUpdate(conn, tx, old.group.value)
        g = self._report_group(report)
        if old is not None:
            self.cancel(conn, tx)
        sub = _ReportSub(conn, tx, g)
        g.subs[key] = sub
        self._add_sub(key, sub)
        return ReportUpdate(conn, tx, g.value)

    def _report_group(self, spec: ReportSpec) -> _ReportGroup:
        g = self._groups.get(spec.key)
        if g is not None:
            return g
        if spec.kind == "count":
            assert spec.item_type is not None and spec.flt is not None
            self._store(spec.item_type)
            live = self._live_for(spec.item_type, spec.flt)
            g = _ReportGroup(spec, {"count": len(live.ids)})
            g.live = live
            if live.counts is None:
                live.counts = {}
            live.counts[g] = None
        elif spec.kind == "by_id":
            assert spec.item_type is not None and spec.item_id is not None
            store = self._store(spec.item_type)
            g = _ReportGroup(spec, store.items.get(spec.item_id))
            by_id = self._reports_by_id.setdefault(spec.item_type, {})
            by_id.setdefault(spec.item_id, {})[g] = None
        elif spec.kind == "custom":
            assert spec.compute is not None
            for t in spec.item_types:
                self._store(t)
            g = _ReportGroup(spec, spec.compute(self))
            for t in spec.item_types:
                self._reports_by_type.setdefault(t, {})[g] = None
        else:
            raise EngineError(f"unknown report kind {spec.kind!r}")
        self._groups[spec.key] = g
        return g

    def _drop_group(self, g: _ReportGroup) -> None:
        spec = g.spec
        del self._groups[spec.key]
        if spec.kind == "count":
            live = g.live
            assert live is not None and live.counts is not None
            live.counts.pop(g, None)
            self._release(live)
        elif spec.kind == "by_id":
            assert spec.item_type is not None and spec.item_id is not None
            by_id = self._reports_by_id[spec.item_type]
            d = by_id[spec.item_id]
            d.pop(g, None)
            if not d:
                del by_id[spec.item_id]
            if not by_id:
                del self._reports_by_id[spec.item_type]
        else:
            for t in spec.item_types:
                d = self._reports_by_type.get(t)
                if d is not None:
                    d.pop(g, None)
                    if not d:
                        del self._reports_by_type[t]

    # -- subscriptions ----------------------------------------------------------

    def _add_sub(self, key: Key, sub: _Sub | _ReportSub) -> None:
        self._subs[key] = sub
        self._by_conn.setdefault(key[0], {})[key[1]] = None

    def cancel(self, conn: Hashable, tx: str) -> None:
        """Cancel whatever subscription holds (conn, tx); unknown is a no-op."""
        key = (conn, tx)
        sub = self._subs.pop(key, None)
        if sub is None:
            return
        txs = self._by_conn.get(conn)
        if txs is not None:
            txs.pop(tx, None)
            if not txs:
                del self._by_conn[conn]
        if isinstance(sub, _Sub):
            self._detach(sub)
            self._release(sub.live)
        else:
            g = sub.group
            g.subs.pop(key, None)
            if not g.subs:
                self._drop_group(g)

    def drop_connection(self, conn: Hashable) -> None:
        """Remove every subscription of a closed connection."""
        for tx in list(self._by_conn.get(conn, ())):
            self.cancel(conn, tx)

    # -- events -------------------------------------------------------------------

    def apply(self, events: Sequence[CommittedEvent]) -> list[Update]:
        """Apply committed events (ascending positions) and return the coalesced updates:
        at most one per subscription, with final states only."""
        touched = self._apply_to_stores(events)
        if not touched:
            return []
        updates: list[Update] = []
        deltas = self._match(touched)
        shared: dict[Hashable, SharedItems] = {}
        for live, d in deltas.items():
            self._emit_live(live, d, shared, updates)
        self._emit_reports(touched, updates)
        return updates

    def _apply_to_stores(
        self, events: Sequence[CommittedEvent]
    ) -> dict[str, dict[str, dict | None]]:
        """Update stores; return, per type, each touched id with its state before the batch."""
        touched: dict[str, dict[str, dict | None]] = {}
        stores = self._stores
        for ev in events:
            store = stores.get(ev.item_type)
            if store is None or ev.position <= store.position:
                continue
            store.position = ev.position
            t = touched.get(ev.item_type)
            if t is None:
                t = touched[ev.item_type] = {}
            items = store.items
            before = items.get(ev.item_id)
            if ev.item_id not in t:
                t[ev.item_id] = before
            if ev.change_type == "SET":
                if ev.item is None:
                    log.warning("SET event %s without item ignored", ev.position)
                    continue
                items[ev.item_id] = ev.item
            elif ev.change_type == "DEL":
                items.pop(ev.item_id, None)
            else:
                log.warning("event %s has unknown change type %r", ev.position, ev.change_type)
                continue
            if store.by_field:
                self._reindex(ev.item_type, store, ev.item_id, before, items.get(ev.item_id))
        return touched

    def _reindex(
        self, item_type: str, store: _Store, item_id: str, old: dict | None, new: dict | None
    ) -> None:
        kinds = self._schemas[item_type].fields
        for field, index in store.by_field.items():
            kind = kinds.get(field, "json")
            ko = None if old is None else field_key(kind, old.get(field))
            kn = None if new is None else field_key(kind, new.get(field))
            if old is not None and (new is None or ko != kn):
                _unindex_id(index, ko, item_id)
            if new is not None and (old is None or ko != kn):
                _index_id(index, kn, item_id)

    def _match(self, touched: dict[str, dict[str, dict | None]]) -> dict[_Live, _Delta]:
        """Visit only the live results each changed item may affect; update their ids."""
        deltas: dict[_Live, _Delta] = {}
        evals = 0

        def visit(lives: _Slot, item_id: str, new: dict | None) -> None:
            nonlocal evals
            for live in (lives,) if isinstance(lives, _Live) else lives:
                if new is None:
                    now = False
                else:
                    evals += 1
                    now = _safe_match(live.flt.matches, new)
                ids = live.ids
                if item_id in ids:
                    if now:
                        d = deltas.get(live)
                        if d is None:
                            d = deltas[live] = _Delta()
                        d.changed.append(item_id)
                        continue
                    ids.discard(item_id)
                    s = live.sorted_ids
                    if s is not None:
                        del s[bisect_left(s, item_id)]
                    d = deltas.get(live)
                    if d is None:
                        d = deltas[live] = _Delta()
                    d.left.append(item_id)
                elif now:
                    ids.add(item_id)
                    if live.sorted_ids is not None:
                        insort(live.sorted_ids, item_id)
                    d = deltas.get(live)
                    if d is None:
                        d = deltas[live] = _Delta()
                    d.entered.append(item_id)

        for item_type, changed in touched.items():
            items = self._stores[item_type].items
            by_id = self._by_id.get(item_type)
            by_field = self._by_field.get(item_type)
            scan = self._scan.get(item_type)
            if not (by_id or by_field or scan):
                continue
            kinds = self._schemas[item_type].fields
            for item_id, old in changed.items():
                new = items.get(item_id)
                if old is None:
                    if new is None:
                        continue
                elif new is not None and (old is new or strict_equal(old, new)):
                    continue  # nothing visible changed
                if by_id:
                    lives = by_id.get(item_id)
                    if lives:
                        visit(lives, item_id, new)
                if by_field:
                    for field, keyed in by_field.items():
                        kind = kinds.get(field, "json")
                        kn = None if new is None else field_key(kind, new.get(field))
                        if kn is not None:
                            lives = keyed.get(kn)
                            if lives:
                                visit(lives, item_id, new)
                        if old is not None:
                            ko = field_key(kind, old.get(field))
                            if ko != kn:
                                lives = keyed.get(ko)
                                if lives:
                                    # Registered under the old value, so `new` cannot match.
                                    visit(lives, item_id, None)
                if scan:
                    visit(scan, item_id, new)
        self.predicate_evaluations += evals
        return deltas

    def _shared(
        self, item_type: str, ids: list[str], cache: dict[Hashable, SharedItems]
    ) -> SharedItems:
        """One SharedItems per distinct (type, id set) per apply() call."""
        ck: Hashable = (item_type, ids[0]) if len(ids) == 1 else (item_type, frozenset(ids))
        s = cache.get(ck)
        if s is None:
            items = self._stores[item_type].items
            s = cache[ck] = SharedItems(item_type, tuple(items[i] for i in ids))
        return s

    def _emit_live(
        self,
        live: _Live,
        d: _Delta,
        cache: dict[Hashable, SharedItems],
        updates: list[Update],
    ) -> None:
        live.snapshot = None
        total = len(live.ids)
        membership = bool(d.entered or d.left)
        t = live.item_type
        if live.subs:
            upserts = self._shared(t, d.entered + d.changed, cache)
            deletes = d.left
            for sub in live.subs.values():
                sub.sequence += 1
                updates.append(QueryUpdate(sub.conn, sub.tx, sub.sequence, upserts, deletes, total))
        if live.windows:
            s = live.sorted_ids
            assert s is not None
            for g in live.windows.values():
                start, stop = g.offset, g.offset + g.limit
                on_page = [i for i in d.changed if start <= bisect_left(s, i) < stop]
                if membership:
                    new_page = s[start:stop]
                    if not on_page and total == g.total and new_page == g.page:
                        continue
                    old_set = set(g.page)
                    new_set = set(new_page)
                    up_ids = [i for i in new_page if i not in old_set]
                    up_ids += [i for i in on_page if i in old_set]
                    deletes = [i for i in g.page if i not in new_set]
                    g.set_page(new_page, total)
                else:
                    if not on_page:
                        continue
                    up_ids, deletes = on_page, []
                    g.snapshot = None
                upserts = self._shared(t, up_ids, cache)
                changes = g.changes()
                for sub in g.subs.values():
                    sub.sequence += 1
                    updates.append(
                        QueryUpdate(
                            sub.conn, sub.tx, sub.sequence, upserts, deletes, total, g.echo, changes
                        )
                    )
        if membership and live.counts:
            for rg in live.counts:
                if rg.value["count"] != total:
                    rg.value = {"count": total}
                    _report(rg, updates)

    def _emit_reports(
        self, touched: dict[str, dict[str, dict | None]], updates: list[Update]
    ) -> None:
        customs: dict[_ReportGroup, None] = {}
        for item_type, changed in touched.items():
            by_id = self._reports_by_id.get(item_type)
            if by_id:
                items = self._stores[item_type].items
                for item_id in changed:
                    groups = by_id.get(item_id)
                    if groups:
                        new = items.get(item_id)
                        for g in groups:
                            if not strict_equal(g.value, new):
                                g.value = new
                                _report(g, updates)
            more = self._reports_by_type.get(item_type)
            if more:
                customs.update(more)
        for g in customs:
            assert g.spec.compute is not None
            try:
                value = g.spec.compute(self)
            except Exception:
                log.exception("report %r failed; keeping its last value", g.spec.key)
                continue
            if not strict_equal(g.value, value):
                g.value = value
                _report(g, updates)


_Slot = _Live | dict[_Live, None]


def _slot_add(index: dict, key: Hashable, live: _Live) -> None:
    """Most index keys lead to one live result: store it bare, not in a one-entry dict
    (a dict is ~230 bytes per distinct subscription)."""
    slot = index.get(key)
    if slot is None:
        index[key] = live
    elif isinstance(slot, _Live):
        if slot is not live:
            index[key] = {slot: None, live: None}
    else:
        slot[live] = None


def _slot_remove(index: dict, key: Hashable, live: _Live) -> None:
    slot = index.get(key)
    if slot is live:
        del index[key]
    elif isinstance(slot, dict):
        slot.pop(live, None)
        if len(slot) == 1:
            index[key] = next(iter(slot))


def _index_id(index: dict, key: Hashable, item_id: str) -> None:
    """A store index entry: the id itself while it is the only one (most keys of a
    unique-ish field), a set once there are more."""
    slot = index.get(key)
    if slot is None:
        index[key] = item_id
    elif isinstance(slot, str):
        if slot != item_id:
            index[key] = {slot, item_id}
    else:
        slot.add(item_id)


def _unindex_id(index: dict, key: Hashable, item_id: str) -> None:
    slot = index.get(key)
    if slot == item_id:
        del index[key]
    elif isinstance(slot, set):
        slot.discard(item_id)
        if len(slot) == 1:
            index[key] = next(iter(slot))


def _report(g: _ReportGroup, updates: list[Update]) -> None:
    value = g.value
    for sub in g.subs.values():
        updates.append(ReportUpdate(sub.conn, sub.tx, value))


def _safe_match(matches: Callable[[Mapping[str, Any]], bool], item: dict) -> bool:
    """A user predicate that raises counts as no match; it must not stop the batch."""
    try:
        return bool(matches(item))
    except Exception:
        log.exception("query predicate failed on item %r", item.get("id"))
        return False
