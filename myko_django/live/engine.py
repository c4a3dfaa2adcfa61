"""The engine proper: item stores, live results, their indexes and the diffing.

Pure Python, single-threaded (one event-loop thread), no I/O. What it serves is in
docs/protocol.md, "Queries", "Windows" and "Reports".

One word per concept (docs/architecture.md, "Words"), with the short name the code uses:

- store (`_Store`, `store`): one item type's items as of a log position.
- live result (`_LiveResult`, `live`): the ids matching (item type, filter), shared by
  every identical query subscription and count report group.
- connection (`conn`): one client's socket, as the caller identifies it.
- subscription (`sub`): what one (connection, tx) asked for: a query subscription
  (`_QuerySubscription`) watches a live result, whole or through a window; a report
  subscription (`_ReportSubscription`) watches a report group.
- window (`_Window`, `win`): one page (offset, limit) of a live result's sorted ids,
  shared by the query subscriptions that asked for those bounds.
- report group (`_ReportGroup`, `group`): one report's value, shared by identical
  report subscriptions.
- row visibility: a user's filter of the rows they may see. Queries and counts take
  `filters.both(query, visible)`, an ordinary filter (users who see the same rows share its
  live result); by-id and custom reports take it in their ReportSpec (`live/visibility.py`).
- live-result index (`Engine._by_id`, `_by_field`, `_scan`): where a touched item looks
  for the live results it may affect; each key leads to an index slot (`_Slot`).
- store index (`_Store.by_field`): field -> key -> item ids, so that a new live result
  need not scan a large store.
- touched: per item type, each id a batch of events changed, with its state before.
- delta (`_Delta`, `d`): what one batch did to one live result's ids: entered, left, or
  changed while staying in.
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
from myko_django.live.visibility import VisibleView, visible_item
from myko_django.wire.envelope import parse_window

log = logging.getLogger(__name__)

SubscriptionKey = tuple[Hashable, str]  # (connection, tx)


# ---------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------


class _Store:
    """One item type's items (id -> item) as of log `position`."""

    __slots__ = ("items", "position", "by_field")

    def __init__(self, items: dict[str, dict], position: int) -> None:
        self.items = items
        self.position = position
        # The store index: field -> field_key -> id (or set of ids). Built for a field the
        # first time a new live result filters a large store by equality on it, then kept
        # current.
        self.by_field: dict[str, dict[Hashable, str | set[str]]] = {}


# Below this many items a new live result scans the store instead of indexing a field.
INDEX_STORES_FROM = 1000


class _QuerySubscription:
    """A query subscription: only what differs between the subscriptions of one live result.
    `window` is its (offset, limit), or None for the whole live result."""

    __slots__ = ("conn", "tx", "live", "sequence", "window")

    def __init__(self, conn: Hashable, tx: str, live: _LiveResult, window: tuple[int, int] | None):
        self.conn = conn
        self.tx = tx
        self.live = live
        self.sequence = 0
        self.window = window


class _Window:
    """One window of a live result: the page its query subscriptions with these bounds share."""

    __slots__ = ("offset", "limit", "echo", "page", "total", "subs", "snapshot", "_changes")

    def __init__(self, offset: int, limit: int, page: list[str], total: int) -> None:
        self.offset = offset
        self.limit = limit
        self.echo = {"offset": offset, "limit": limit}
        self.page = page
        self.total = total
        self.subs: dict[SubscriptionKey, _QuerySubscription] = {}
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


class _LiveResult:
    """The ids matching (item_type, filter), and the subscriptions and count report groups
    that watch them."""

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
        self.subs: dict[SubscriptionKey, _QuerySubscription] = {}  # those without a window
        # Made when first needed: most live results have neither (memory per subscription).
        self.windows: dict[tuple[int, int], _Window] | None = None
        self.sorted_ids: list[str] | None = None  # kept only while windows exist
        self.counts: dict[_ReportGroup, None] | None = None
        self.snapshot: SharedItems | None = None  # kept only while the live result is shared
        self.index: tuple = ()  # where the live-result index holds it (see Engine._register)

    def unused(self) -> bool:
        return not self.subs and not self.windows and not self.counts


class _ReportGroup:
    """One report's value, shared by identical report subscriptions; `live` is the live result
    a count report counts."""

    __slots__ = ("spec", "value", "subs", "live")

    def __init__(self, spec: ReportSpec, value: Any) -> None:
        self.spec = spec
        self.value = value
        self.subs: dict[SubscriptionKey, _ReportSubscription] = {}
        self.live: _LiveResult | None = None


class _ReportSubscription:
    """A report subscription: which report group one (connection, tx) watches."""

    __slots__ = ("conn", "tx", "group")

    def __init__(self, conn: Hashable, tx: str, group: _ReportGroup) -> None:
        self.conn = conn
        self.tx = tx
        self.group = group


class _Delta:
    """What one batch did to one live result's ids: entered, left, changed while staying in."""

    __slots__ = ("entered", "left", "changed")

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.left: list[str] = []
        self.changed: list[str] = []


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


class Engine:
    """Item stores plus live results and report groups, indexed so that a touched item visits
    only the live results it may affect: those indexed under its (type, id), under
    (type, field, key) of its old and new value for each indexed equality field, and the
    type's scanned ones (those with neither an id set nor an equality to index by)."""

    def __init__(self, schemas: dict[str, ItemSchema]) -> None:
        self._schemas = dict(schemas)
        self._stores: dict[str, _Store] = {}
        self._lives: dict[tuple[str, Hashable], _LiveResult] = {}
        # The live-result index. A slot holds a lone live result itself, several in a dict
        # (see _slot_add).
        self._by_id: dict[str, dict[str, _Slot]] = {}
        self._by_field: dict[str, dict[str, dict[Hashable, _Slot]]] = {}
        self._scan: dict[str, dict[_LiveResult, None]] = {}
        self._subs: dict[SubscriptionKey, _QuerySubscription | _ReportSubscription] = {}
        self._by_conn: dict[Hashable, dict[str, None]] = {}
        self._report_groups: dict[Hashable, _ReportGroup] = {}
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
            item_type in (group.spec.item_types or (group.spec.item_type,))
            for group in self._report_groups.values()
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
            "report_groups": len(self._report_groups),
            "predicate_evaluations": self.predicate_evaluations,
        }

    # -- live results and their index -----------------------------------------

    def _live_for(self, item_type: str, flt: Filter) -> _LiveResult:
        """The live result of (item_type, filter); made, filled and indexed on first use."""
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
            # store on the event loop: look the equality field up in the store index.
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
        live = _LiveResult(item_type, flt, ids)
        self._register(live)
        self._lives[lkey] = live
        return live

    def _field_index(self, item_type: str, field: str) -> dict[Hashable, str | set[str]]:
        """The store index of one field (key -> id or ids), built on first use."""
        store = self._stores[item_type]
        index = store.by_field.get(field)
        if index is None:
            kind = self._schemas[item_type].fields.get(field, "json")
            index = store.by_field[field] = {}
            for item_id, item in store.items.items():
                _index_id(index, field_key(kind, item.get(field)), item_id)
        return index

    def _register(self, live: _LiveResult) -> None:
        """Put a new live result in the live-result index: under its ids, under one of its
        equality fields, or among its type's scanned ones."""
        flt, t = live.flt, live.item_type
        if flt.ids is not None:
            if flt.ids:  # an empty id set matches nothing, ever: no slot to watch
                by_id = self._by_id.setdefault(t, {})
                for i in flt.ids:
                    _slot_add(by_id, i, live)
            live.index = ("id",)
        elif flt.eq_keys:
            fields = self._by_field.setdefault(t, {})
            # The key whose slot holds the fewest live results, so a touched item is tested
            # against few (users' row filters combined with one query all share the query's
            # key); on a tie a field already indexed: fewer lookups per touched item.
            field, k = min(flt.eq_keys, key=lambda fk: _slot_rank(fields, fk))
            _slot_add(fields.setdefault(field, {}), k, live)
            live.index = ("field", field, k)
        else:
            self._scan.setdefault(t, {})[live] = None
            live.index = ("scan",)

    def _unregister(self, live: _LiveResult) -> None:
        """Take a live result out of the live-result index."""
        t = live.item_type
        kind = live.index[0]
        if kind == "id":
            if live.flt.ids:
                by_id = self._by_id[t]
                for i in live.flt.ids:
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

    def _release(self, live: _LiveResult) -> None:
        """Forget a live result nothing watches any more."""
        if live.unused():
            self._unregister(live)
            del self._lives[(live.item_type, live.flt.key)]

    def _window(self, live: _LiveResult, bounds: tuple[int, int]) -> _Window:
        """The live result's window at bounds (offset, limit), made on first use."""
        if live.windows is None:
            live.windows = {}
        win = live.windows.get(bounds)
        if win is None:
            if live.sorted_ids is None:
                live.sorted_ids = sorted(live.ids)
            offset, limit = bounds
            win = _Window(offset, limit, live.sorted_ids[offset : offset + limit], len(live.ids))
            live.windows[bounds] = win
        return win

    def _detach(self, sub: _QuerySubscription) -> None:
        """Take a query subscription off its live result or window; drop a window left empty."""
        live, key = sub.live, (sub.conn, sub.tx)
        if sub.window is None:
            live.subs.pop(key, None)
        else:
            assert live.windows is not None
            win = live.windows[sub.window]
            win.subs.pop(key, None)
            if not win.subs:
                del live.windows[sub.window]
                if not live.windows:
                    live.windows = None
                    live.sorted_ids = None

    # -- queries ----------------------------------------------------------------

    def subscribe_query(
        self, conn: Hashable, tx: str, item_type: str, flt: Filter, window: dict | None
    ) -> QueryUpdate | None:
        """Start a query subscription; returns its sequence-0 snapshot, or None for an active
        tx."""
        key = (conn, tx)
        if key in self._subs:
            return None
        self._store(item_type)
        bounds = parse_window(window)
        live = self._live_for(item_type, flt)
        sub = _QuerySubscription(conn, tx, live, bounds)
        self._add_subscription(key, sub)
        if bounds is None:
            live.subs[key] = sub
            return QueryUpdate(conn, tx, 0, self._snapshot(live), [], len(live.ids))
        win = self._window(live, bounds)
        win.subs[key] = sub
        return QueryUpdate(
            conn, tx, 0, self._page_snapshot(live, win), [], win.total, win.echo, win.changes()
        )

    def _snapshot(self, live: _LiveResult) -> SharedItems:
        """The live result's items for a sequence 0, kept (with its encodings) for the next
        identical subscription only once a second one came: a live result watched by one
        subscription would otherwise hold a copy of its items it never sends again."""
        if live.snapshot is not None:
            return live.snapshot
        items = self._stores[live.item_type].items
        snapshot = SharedItems(live.item_type, tuple(items[i] for i in live.ids))
        if len(live.subs) > 1:
            live.snapshot = snapshot
        return snapshot

    def _page_snapshot(self, live: _LiveResult, win: _Window) -> SharedItems:
        """The window's items for a sequence 0, kept for the window's next subscription."""
        if win.snapshot is None:
            items = self._stores[live.item_type].items
            win.snapshot = SharedItems(live.item_type, tuple(items[i] for i in win.page))
        return win.snapshot

    def set_window(self, conn: Hashable, tx: str, window: dict | None) -> QueryUpdate | None:
        """Change a query subscription's window (docs/protocol.md, "Windows"): returns the
        diff of what the client sees before and after."""
        sub = self._subs.get((conn, tx))
        if not isinstance(sub, _QuerySubscription):
            return None
        bounds = parse_window(window)
        if bounds == sub.window:
            return None
        live, key = sub.live, (conn, tx)
        old_page = None if sub.window is None else live.windows[sub.window].page
        if bounds is None:
            live.subs[key] = sub
        else:
            win = self._window(live, bounds)
            win.subs[key] = sub
        self._detach(sub)
        sub.window = bounds
        sub.sequence += 1
        items = self._stores[live.item_type].items
        t = live.item_type
        if bounds is None:
            old = set(old_page or ())
            shown = tuple(items[i] for i in live.ids if i not in old)
            return QueryUpdate(conn, tx, sub.sequence, SharedItems(t, shown), [], len(live.ids))
        new_page = win.page
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
            conn,
            tx,
            sub.sequence,
            SharedItems(t, upserts),
            deletes,
            win.total,
            win.echo,
            win.changes(),
        )

    # -- reports ----------------------------------------------------------------

    def subscribe_report(self, conn: Hashable, tx: str, report: ReportSpec) -> ReportUpdate:
        """Start (or replace) a report subscription; returns the report's current value.

        A custom compute that raises propagates, and the old subscription stays.
        """
        key = (conn, tx)
        old = self._subs.get(key)
        if isinstance(old, _ReportSubscription) and old.group.spec.key == report.key:
            return ReportUpdate(conn, tx, old.group.value)
        group = self._report_group(report)
        if old is not None:
            self.cancel(conn, tx)
        sub = _ReportSubscription(conn, tx, group)
        group.subs[key] = sub
        self._add_subscription(key, sub)
        return ReportUpdate(conn, tx, group.value)

    def _report_group(self, spec: ReportSpec) -> _ReportGroup:
        """The report group of `spec`; made, computed and indexed on first use."""
        group = self._report_groups.get(spec.key)
        if group is not None:
            return group
        if spec.kind == "count":
            assert spec.item_type is not None and spec.flt is not None
            self._store(spec.item_type)
            live = self._live_for(spec.item_type, spec.flt)
            group = _ReportGroup(spec, {"count": len(live.ids)})
            group.live = live
            if live.counts is None:
                live.counts = {}
            live.counts[group] = None
        elif spec.kind == "by_id":
            assert spec.item_type is not None and spec.item_id is not None
            store = self._store(spec.item_type)
            group = _ReportGroup(spec, visible_item(spec.flt, store.items.get(spec.item_id)))
            by_id = self._reports_by_id.setdefault(spec.item_type, {})
            by_id.setdefault(spec.item_id, {})[group] = None
        elif spec.kind == "custom":
            assert spec.compute is not None
            for t in spec.item_types:
                self._store(t)
            group = _ReportGroup(spec, spec.compute(self._report_view(spec)))
            for t in spec.item_types:
                self._reports_by_type.setdefault(t, {})[group] = None
        else:
            raise EngineError(f"unknown report kind {spec.kind!r}")
        self._report_groups[spec.key] = group
        return group

    def _report_view(self, spec: ReportSpec) -> VisibleView:
        """What a custom report's compute reads: the stores of the types it depends on, only
        their visible rows where it has a visibility."""
        return VisibleView(self.items, spec.visible or {}, spec.item_types)

    def _drop_report_group(self, group: _ReportGroup) -> None:
        """Forget a report group whose last subscription was cancelled."""
        spec = group.spec
        del self._report_groups[spec.key]
        if spec.kind == "count":
            live = group.live
            assert live is not None and live.counts is not None
            live.counts.pop(group, None)
            self._release(live)
        elif spec.kind == "by_id":
            assert spec.item_type is not None and spec.item_id is not None
            by_id = self._reports_by_id[spec.item_type]
            groups = by_id[spec.item_id]
            groups.pop(group, None)
            if not groups:
                del by_id[spec.item_id]
            if not by_id:
                del self._reports_by_id[spec.item_type]
        else:
            for t in spec.item_types:
                groups = self._reports_by_type.get(t)
                if groups is not None:
                    groups.pop(group, None)
                    if not groups:
                        del self._reports_by_type[t]

    # -- subscriptions ----------------------------------------------------------

    def _add_subscription(
        self, key: SubscriptionKey, sub: _QuerySubscription | _ReportSubscription
    ) -> None:
        self._subs[key] = sub
        self._by_conn.setdefault(key[0], {})[key[1]] = None

    def cancel(self, conn: Hashable, tx: str) -> None:
        """Cancel whatever subscription holds (connection, tx); unknown is a no-op."""
        key = (conn, tx)
        sub = self._subs.pop(key, None)
        if sub is None:
            return
        txs = self._by_conn.get(conn)
        if txs is not None:
            txs.pop(tx, None)
            if not txs:
                del self._by_conn[conn]
        if isinstance(sub, _QuerySubscription):
            self._detach(sub)
            self._release(sub.live)
        else:
            group = sub.group
            group.subs.pop(key, None)
            if not group.subs:
                self._drop_report_group(group)

    def subscription_key(self, conn: Hashable, tx: str) -> Hashable | None:
        """What a subscription watches: its live result's filter key (a query) or its
        report's key; None when (conn, tx) has no subscription."""
        sub = self._subs.get((conn, tx))
        if isinstance(sub, _QuerySubscription):
            return sub.live.flt.key
        return None if sub is None else sub.group.spec.key

    def query_window(self, conn: Hashable, tx: str) -> dict | None:
        """A query subscription's window as the client gave it (None: no window)."""
        sub = self._subs.get((conn, tx))
        if isinstance(sub, _QuerySubscription) and sub.window is not None:
            offset, limit = sub.window
            return {"offset": offset, "limit": limit}
        return None

    def drop_connection(self, conn: Hashable) -> None:
        """Remove every subscription of a closed connection."""
        for tx in list(self._by_conn.get(conn, ())):
            self.cancel(conn, tx)

    # -- events -------------------------------------------------------------------

    def apply(self, events: Sequence[CommittedEvent]) -> list[Update]:
        """Apply committed events (ascending positions) and return the coalesced updates:
        at most one per subscription, with final states only.

        Three steps: update the stores (noting the touched items), match the touched items
        against the live results they may affect (a delta each), then emit the updates of
        each live result's subscriptions and of the report groups."""
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
        """Keep the store index current for one item that went from `old` to `new`."""
        kinds = self._schemas[item_type].fields
        for field, index in store.by_field.items():
            kind = kinds.get(field, "json")
            ko = None if old is None else field_key(kind, old.get(field))
            kn = None if new is None else field_key(kind, new.get(field))
            if old is not None and (new is None or ko != kn):
                _unindex_id(index, ko, item_id)
            if new is not None and (old is None or ko != kn):
                _index_id(index, kn, item_id)

    def _match(self, touched: dict[str, dict[str, dict | None]]) -> dict[_LiveResult, _Delta]:
        """Bring every live result a touched item may affect up to date; return their deltas."""
        deltas: dict[_LiveResult, _Delta] = {}
        evals = 0
        for item_type, before in touched.items():
            evals += self._match_type(item_type, before, deltas)
        self.predicate_evaluations += evals
        return deltas

    def _match_type(
        self, item_type: str, before: dict[str, dict | None], deltas: dict[_LiveResult, _Delta]
    ) -> int:
        """Rematch the touched items of one type against their candidate live results: those
        indexed under the item's id, under the equality keys of its old and new value, and the
        type's scanned ones. Returns the number of predicate evaluations."""
        by_id = self._by_id.get(item_type)
        by_field = self._by_field.get(item_type)
        scan = self._scan.get(item_type)
        if not (by_id or by_field or scan):
            return 0
        items = self._stores[item_type].items
        fields = _indexed_fields(by_field, self._schemas[item_type].fields) if by_field else None
        evals = 0
        for item_id, old in before.items():
            new = items.get(item_id)
            if old is None:
                if new is None:
                    continue  # created and deleted within the batch
            elif new is not None and (old is new or strict_equal(old, new)):
                continue  # nothing visible changed
            if by_id:
                slot = by_id.get(item_id)
                if slot:
                    evals += _rematch(slot, item_id, new, deltas)
            if fields:
                evals += _rematch_by_field(fields, item_id, old, new, deltas)
            if scan:
                evals += _rematch(scan, item_id, new, deltas)
        return evals

    def _shared(
        self, item_type: str, ids: list[str], cache: dict[Hashable, SharedItems]
    ) -> SharedItems:
        """One SharedItems per distinct (type, id set) per apply() call, shared by every
        subscription that receives those items."""
        ck: Hashable = (item_type, ids[0]) if len(ids) == 1 else (item_type, frozenset(ids))
        s = cache.get(ck)
        if s is None:
            items = self._stores[item_type].items
            s = cache[ck] = SharedItems(item_type, tuple(items[i] for i in ids))
        return s

    def _emit_live(
        self,
        live: _LiveResult,
        d: _Delta,
        cache: dict[Hashable, SharedItems],
        updates: list[Update],
    ) -> None:
        """Append the updates one live result's delta causes: to its subscriptions without
        a window, to the subscriptions of each window whose page it changed, and to its
        count report groups whose count changed."""
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
            for win in live.windows.values():
                start, stop = win.offset, win.offset + win.limit
                on_page = [i for i in d.changed if start <= bisect_left(s, i) < stop]
                if membership:
                    new_page = s[start:stop]
                    if not on_page and total == win.total and new_page == win.page:
                        continue
                    old_set = set(win.page)
                    new_set = set(new_page)
                    up_ids = [i for i in new_page if i not in old_set]
                    up_ids += [i for i in on_page if i in old_set]
                    deletes = [i for i in win.page if i not in new_set]
                    win.set_page(new_page, total)
                else:
                    if not on_page:
                        continue
                    up_ids, deletes = on_page, []
                    win.snapshot = None
                upserts = self._shared(t, up_ids, cache)
                changes = win.changes()
                for sub in win.subs.values():
                    sub.sequence += 1
                    updates.append(
                        QueryUpdate(
                            sub.conn,
                            sub.tx,
                            sub.sequence,
                            upserts,
                            deletes,
                            total,
                            win.echo,
                            changes,
                        )
                    )
        if membership and live.counts:
            for group in live.counts:
                if group.value["count"] != total:
                    group.value = {"count": total}
                    _report(group, updates)

    def _emit_reports(
        self, touched: dict[str, dict[str, dict | None]], updates: list[Update]
    ) -> None:
        """Append the updates of the by-id and custom report groups whose value the touched
        items changed (count report groups follow their live result, in _emit_live)."""
        customs: dict[_ReportGroup, None] = {}
        for item_type, before in touched.items():
            by_id = self._reports_by_id.get(item_type)
            if by_id:
                items = self._stores[item_type].items
                for item_id in before:
                    groups = by_id.get(item_id)
                    if groups:
                        item = items.get(item_id)
                        for group in groups:
                            new = visible_item(group.spec.flt, item)
                            if not strict_equal(group.value, new):
                                group.value = new
                                _report(group, updates)
            more = self._reports_by_type.get(item_type)
            if more:
                customs.update(more)
        for group in customs:
            assert group.spec.compute is not None
            try:
                value = group.spec.compute(self._report_view(group.spec))
            except Exception:
                log.exception("report %r failed; keeping its last value", group.spec.key)
                continue
            if not strict_equal(group.value, value):
                group.value = value
                _report(group, updates)


# ---------------------------------------------------------------------------
# Index slots
# ---------------------------------------------------------------------------

# What one key of the live-result index leads to: one live result, or several.
_Slot = _LiveResult | dict[_LiveResult, None]


def _slot_add(index: dict, key: Hashable, live: _LiveResult) -> None:
    """Most index keys lead to one live result: store it bare, not in a one-entry dict
    (a dict is ~230 bytes per distinct subscription)."""
    slot = index.get(key)
    if slot is None:
        index[key] = live
    elif isinstance(slot, _LiveResult):
        if slot is not live:
            index[key] = {slot: None, live: None}
    else:
        slot[live] = None


def _slot_rank(fields: dict[str, dict[Hashable, _Slot]], fk: tuple[str, Hashable]) -> tuple:
    """How a new live result indexed under equality `fk` = (field, key) would fare: the
    live results its slot holds already, then whether the field is new to the index."""
    keyed = fields.get(fk[0])
    if keyed is None:
        return (0, 1)
    slot = keyed.get(fk[1])
    return (0 if slot is None else 1 if isinstance(slot, _LiveResult) else len(slot), 0)


def _slot_remove(index: dict, key: Hashable, live: _LiveResult) -> None:
    """Undo _slot_add; a slot left with one live result holds it bare again."""
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
    """Undo _index_id; an entry left with one id holds it bare again."""
    slot = index.get(key)
    if slot == item_id:
        del index[key]
    elif isinstance(slot, set):
        slot.discard(item_id)
        if len(slot) == 1:
            index[key] = next(iter(slot))


# ---------------------------------------------------------------------------
# Matching one touched item against its candidate live results (Engine._match_type)
# ---------------------------------------------------------------------------


def _indexed_fields(
    by_field: dict[str, dict[Hashable, _Slot]], kinds: Mapping[str, str]
) -> list[tuple[str, dict[Hashable, _Slot], str]]:
    """(field, its slots by key, its kind) for each field of a type's live-result index."""
    return [(field, keyed, kinds.get(field, "json")) for field, keyed in by_field.items()]


def _rematch_by_field(
    fields: list[tuple[str, dict[Hashable, _Slot], str]],
    item_id: str,
    old: dict | None,
    new: dict | None,
    deltas: dict[_LiveResult, _Delta],
) -> int:
    """Rematch one item against the live results indexed by equality on its fields: those
    under the key of its new value may keep or gain it; those under the key of its old
    value, when that differs, can only lose it. Returns the predicate evaluations."""
    evals = 0
    for field, keyed, kind in fields:
        key_new = None if new is None else field_key(kind, new.get(field))
        if key_new is not None:
            slot = keyed.get(key_new)
            if slot:
                evals += _rematch(slot, item_id, new, deltas)
        if old is not None:
            key_old = field_key(kind, old.get(field))
            if key_old != key_new:
                slot = keyed.get(key_old)
                if slot:  # indexed under the old value, so the item cannot match them
                    _rematch(slot, item_id, None, deltas)
    return evals


def _rematch(
    slot: _Slot, item_id: str, item: dict | None, deltas: dict[_LiveResult, _Delta]
) -> int:
    """Test one item's new state against each live result of an index slot (None: deleted,
    or found under its old key, so it cannot match) and apply the outcome to the live
    result: the item stays in (changed), leaves, or enters. `ids` and `sorted_ids` follow,
    and the live result's delta records it. Returns the number of predicate evaluations."""
    lives = (slot,) if isinstance(slot, _LiveResult) else slot
    for live in lives:
        now = item is not None and _safe_match(live.flt.matches, item)
        ids = live.ids
        if item_id in ids:  # stays in (changed) or leaves
            d = deltas.get(live)
            if d is None:
                d = deltas[live] = _Delta()
            if now:
                d.changed.append(item_id)
                continue
            ids.discard(item_id)
            sorted_ids = live.sorted_ids
            if sorted_ids is not None:
                del sorted_ids[bisect_left(sorted_ids, item_id)]
            d.left.append(item_id)
        elif now:  # enters
            ids.add(item_id)
            if live.sorted_ids is not None:
                insort(live.sorted_ids, item_id)
            d = deltas.get(live)
            if d is None:
                d = deltas[live] = _Delta()
            d.entered.append(item_id)
    return 0 if item is None else len(lives)


def _report(group: _ReportGroup, updates: list[Update]) -> None:
    """Append the report group's value for each of its subscriptions."""
    value = group.value
    for sub in group.subs.values():
        updates.append(ReportUpdate(sub.conn, sub.tx, value))


def _safe_match(matches: Callable[[Mapping[str, Any]], bool], item: dict) -> bool:
    """A user predicate that raises counts as no match; it must not stop the batch."""
    try:
        return bool(matches(item))
    except Exception:
        log.exception("query predicate failed on item %r", item.get("id"))
        return False
