"""Values that go in and out of the engine: report specs, updates, errors."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
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
        """The `upserts` array of PROTOCOL §3.2, built anew on each call (not kept: the
        wrapper dicts would double a kept snapshot's memory; the transport keeps the
        encoded form in `cache`)."""
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
        """The QueryResponse data dict of PROTOCOL §3.2."""
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
    """What a live report computes; subscriptions with the same `key` share one computation."""

    kind: str  # "count" | "by_id" | "custom"
    key: Hashable
    item_type: str | None = None
    flt: Filter | None = None
    item_id: str | None = None
    item_types: tuple[str, ...] = ()
    compute: Callable[[ItemsView], Any] | None = None

    @classmethod
    def count(cls, item_type: str, flt: Filter) -> ReportSpec:
        """CountAllXs / CountXs: `{"count": n}`, kept by the shared live result of `flt`."""
        return cls("count", ("count", item_type, flt.key), item_type, flt, item_types=(item_type,))

    @classmethod
    def by_id(cls, item_type: str, item_id: str) -> ReportSpec:
        """GetXById: the wire item or None."""
        return cls(
            "by_id",
            ("by_id", item_type, item_id),
            item_type,
            item_id=item_id,
            item_types=(item_type,),
        )

    @classmethod
    def custom(
        cls, key: Hashable, item_types: tuple[str, ...], compute: Callable[[ItemsView], Any]
    ) -> ReportSpec:
        """A user report: recomputed when a batch touches `item_types`, sent when it changes."""
        return cls("custom", ("custom", key), item_types=tuple(item_types), compute=compute)
