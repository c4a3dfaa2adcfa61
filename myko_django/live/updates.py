"""Values that go in and out of the engine: report specs, updates, errors."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from myko_django.live.filters import Filter


class EngineError(Exception):
    """Misuse of the engine (store not loaded, loaded twice, unknown item type)."""


class ItemsView(Protocol):
    """What a report function reads: the current items of a type, by id."""

    def items(self, item_type: str) -> Mapping[str, dict]: ...


class SharedItems:
    """Items of one outgoing upsert list, shared by every subscriber that receives them.

    Treat as immutable. `cache` is for the transport, e.g. the items encoded once per format.
    A live result keeps its SharedItems for later subscribers, so it holds nothing more
    than the items (the store's own dicts) and their encodings.
    """

    __slots__ = ("item_type", "items", "cache")

    def __init__(self, item_type: str, items: tuple[dict, ...]) -> None:
        self.item_type = item_type
        self.items = items
        self.cache: dict[Any, Any] = {}

    def wire(self) -> list[dict]:
        """The `upserts` array of a query response (docs/protocol.md, "Queries"), built
        anew on each call (not kept: the wrapper dicts would double a kept snapshot's
        memory; the transport keeps the encoded form in `cache`)."""
        t = self.item_type
        return [{"item": it, "itemType": t} for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"SharedItems({self.item_type!r}, {len(self.items)} items)"


@dataclass(slots=True, eq=False)
class QueryUpdate:
    """One `ws:m:query-response` for one subscription. `deletes`/`changes` may be shared."""

    conn: Hashable
    tx: str
    sequence: int
    upserts: SharedItems
    deletes: list[str]
    total_count: int
    window: dict | None = None
    changes: list[dict] | None = None

    def to_wire(self) -> dict:
        """The `data` of a query response (docs/protocol.md, "Queries")."""
        d: dict[str, Any] = {
            "tx": self.tx,
            "sequence": self.sequence,
            "upserts": self.upserts.wire(),
            "deletes": self.deletes,
            "totalCount": self.total_count,
        }
        if self.window is not None:
            d["window"] = self.window
        if self.changes is not None:
            d["changes"] = self.changes
        return d


@dataclass(slots=True, eq=False)
class ReportUpdate:
    """One `ws:m:report-response` for one subscription (value shared; do not mutate)."""

    conn: Hashable
    tx: str
    value: Any


Update = QueryUpdate | ReportUpdate


@dataclass(frozen=True, eq=False)
class ReportSpec:
    """What a live report computes; subscriptions with the same `key` share one computation.

    Row visibility: a by-id report's `flt` is the filter its item must match to be seen
    (None: every row); a custom report's `visible` maps item types to the filter of the
    rows its compute may see. Both are part of `key`, so users who see the same rows share
    one report group and users who do not, do not."""

    kind: str  # "count" | "by_id" | "custom"
    key: Hashable
    item_type: str | None = None
    flt: Filter | None = None
    item_id: str | None = None
    item_types: tuple[str, ...] = ()
    compute: Callable[[ItemsView], Any] | None = None
    visible: Mapping[str, Filter] | None = None

    @classmethod
    def count(cls, item_type: str, flt: Filter) -> ReportSpec:
        """CountAllXs / CountXs: `{"count": n}`, kept by the shared live result of `flt`
        (with row visibility, `filters.both(query, visible)`: only visible rows count)."""
        return cls("count", ("count", item_type, flt.key), item_type, flt, item_types=(item_type,))

    @classmethod
    def by_id(cls, item_type: str, item_id: str, visible: Filter | None = None) -> ReportSpec:
        """GetXById: the wire item while it exists and matches `visible` (None: every row
        is visible), else None."""
        key: Hashable = ("by_id", item_type, item_id)
        if visible is not None:
            key = (*key, visible.key)
        return cls("by_id", key, item_type, visible, item_id=item_id, item_types=(item_type,))

    @classmethod
    def custom(
        cls,
        key: Hashable,
        item_types: tuple[str, ...],
        compute: Callable[[ItemsView], Any],
        visible: Mapping[str, Filter] | None = None,
    ) -> ReportSpec:
        """A user report: recomputed when a batch touches `item_types`, sent when it changes.

        `visible`: per item type, the filter of the rows the user may see; `compute`'s
        `view.items(t)` then holds only those (types without a filter: every row)."""
        shown = {t: f for t, f in (visible or {}).items() if f is not None}
        if not shown:
            return cls("custom", ("custom", key), item_types=tuple(item_types), compute=compute)
        # Item type names are unique, so sorting by them alone orders the pairs.
        keys = tuple(sorted(((t, f.key) for t, f in shown.items()), key=lambda p: p[0]))
        return cls(
            "custom",
            ("custom", key, ("visible", keys)),
            item_types=tuple(item_types),
            compute=compute,
            visible=MappingProxyType(shown),
        )
