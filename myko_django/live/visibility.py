"""Row visibility in the live layer: what a user may see of one item, and of a whole store.

Queries, windows and counts need nothing here: their filter is `filters.both(query,
visible)`, an ordinary filter whose live result is shared by the users who see the same
rows. What is here serves the reports that are not a live result: a by-id report (the item
while it is visible) and a user report's view (only the visible items of each type).

Pure Python, no Django, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from typing import Any

from myko_django.live.filters import Filter

__all__ = ["VisibleItems", "VisibleView", "visible_item"]

log = logging.getLogger(__name__)


def _visible(flt: Filter, item: Mapping[str, Any]) -> bool:
    """A visibility predicate that raises hides the item; it must not stop the batch."""
    try:
        return bool(flt.matches(item))
    except Exception:
        log.exception("visibility predicate failed on item %r", item.get("id"))
        return False


def visible_item(flt: Filter | None, item: dict | None) -> dict | None:
    """`item` if it exists and `flt` (None: every row) lets the user see it, else None."""
    if item is None or flt is None or _visible(flt, item):
        return item
    return None


class VisibleItems(Mapping[str, dict]):
    """A read-only id -> item view of a store holding only the items a filter matches.

    Nothing is copied: a lookup tests the one item; the first iteration (or `len`) scans
    the store once and keeps the visible ids for the rest of the report's computation (the
    store does not change while a report computes; do not keep the view beyond it)."""

    __slots__ = ("_items", "_flt", "_ids")

    def __init__(self, items: Mapping[str, dict], flt: Filter) -> None:
        self._items = items
        self._flt = flt
        self._ids: list[str] | None = None

    def _visible_ids(self) -> list[str]:
        ids = self._ids
        if ids is None:
            flt = self._flt
            ids = self._ids = [i for i, x in self._items.items() if _visible(flt, x)]
        return ids

    def __getitem__(self, item_id: str) -> dict:
        item = self._items[item_id]
        if not _visible(self._flt, item):
            raise KeyError(item_id)
        return item

    def __contains__(self, item_id: object) -> bool:
        item = self._items.get(item_id)  # type: ignore[call-overload]
        return item is not None and _visible(self._flt, item)

    def __iter__(self) -> Iterator[str]:
        return iter(self._visible_ids())

    def __len__(self) -> int:
        return len(self._visible_ids())

    def values(self) -> ValuesView[dict]:
        return _Values(self)

    def items(self) -> ItemsView[str, dict]:
        return _Items(self)

    def __repr__(self) -> str:
        return f"VisibleItems({self._flt!r}, {len(self)} of {len(self._items)} items)"


class _Values(ValuesView):
    """Values of a VisibleItems in one pass (not a second predicate test per item)."""

    __slots__ = ()

    def __iter__(self) -> Iterator[dict]:
        view: VisibleItems = self._mapping  # type: ignore[assignment]
        items = view._items
        for i in view._visible_ids():
            yield items[i]


class _Items(ItemsView):
    """(id, item) pairs of a VisibleItems in one pass."""

    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        view: VisibleItems = self._mapping  # type: ignore[assignment]
        items = view._items
        for i in view._visible_ids():
            yield i, items[i]


class VisibleView:
    """What a user report with row visibility reads (the `ItemsView` of live.updates):
    `items(t)` holds only the rows `visible[t]` matches; a type without a filter, every row.
    One per computation."""

    __slots__ = ("_items_of", "_visible", "_views", "_declared")

    def __init__(
        self,
        items_of: Callable[[str], Mapping[str, dict]],
        visible: Mapping[str, Filter],
        declared: tuple[str, ...],
    ) -> None:
        self._items_of = items_of
        self._visible = visible
        self._declared = declared
        self._views: dict[str, Mapping[str, dict]] = {}

    def items(self, item_type: str) -> Mapping[str, dict]:
        """The (visible) items of a type the report depends on. Another type is refused: it
        would not be checked for permission, filtered for visibility, nor recomputed."""
        view = self._views.get(item_type)
        if view is None:
            if item_type not in self._declared:
                raise KeyError(
                    f"the report reads {item_type}, which is not in its depends "
                    f"({', '.join(self._declared) or 'none'})"
                )
            items = self._items_of(item_type)
            flt = self._visible.get(item_type)
            view = items if flt is None else VisibleItems(items, flt)
            self._views[item_type] = view
        return view
