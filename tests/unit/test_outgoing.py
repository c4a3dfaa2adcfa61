"""Splitting a response over the message limit (server/outgoing.py; docs/protocol.md,
"Large results"), without a socket: every part within the limit, applied in order they
leave a client consistent after each part and right after the last."""

from __future__ import annotations

import json

import pytest

from myko_django.live.updates import QueryUpdate, SharedItems
from myko_django.server.outgoing import TooLarge, frame_size, query_frames
from myko_django.wire import codecs

LIMIT = 2000


def gadget(i: int, note: str = "n" * 100) -> dict:
    return {"id": f"g{i:02d}", "label": "l", "note": note}


def apply(state: dict, order: list, data: dict) -> None:
    if data["sequence"] == 0:
        state.clear()
    for item_id in data["deletes"]:
        state.pop(item_id, None)
    for upsert in data["upserts"]:
        state[upsert["item"]["id"]] = upsert["item"]
    for change in data.get("changes") or ():
        order[:] = change["ids"]


@pytest.mark.parametrize("fmt", [codecs.JSON, codecs.MSGPACK, codecs.CBOR])
def test_a_windowed_update_in_parts_is_consistent_after_each(fmt):
    page = [f"g{i:02d}" for i in range(5, 45)]
    window = {"offset": 5, "limit": 40}
    changes = [{"kind": "windowOrder", "ids": page, "total_count": 60, "window": window}]
    items = SharedItems("Gadget", tuple(gadget(i) for i in range(5, 45)))
    update = QueryUpdate("c", "t", 3, items, ["g00", "g01"], 60, window, changes)
    frames = query_frames(update, fmt, "ws:m:query-response", LIMIT)
    assert len(frames) > 3 and all(frame_size(f) <= LIMIT for f in frames)
    state = {"g00": {}, "g01": {}}
    order: list[str] = []
    parts = [
        codecs.decode_text(f) if fmt == codecs.JSON else codecs.decode_binary(f, fmt)
        for f in frames
    ]
    for i, part in enumerate(parts):
        data = part["data"]
        assert data["sequence"] == 3 + i and data["totalCount"] == 60
        assert data["window"] == window
        assert data.get("more", False) is (i < len(parts) - 1)
        apply(state, order, data)
        assert set(order) <= set(state)  # every id the page lists is there
    assert order == page and set(state) == set(page)


def test_one_item_over_the_limit_cannot_be_split():
    items = SharedItems("Gadget", (gadget(1), gadget(2, "x" * LIMIT), gadget(3)))
    update = QueryUpdate("c", "t", 0, items, [], 3)
    with pytest.raises(TooLarge, match="Gadget 'g02' is .* bytes encoded, over the 2000-byte"):
        query_frames(update, codecs.JSON, "ws:m:query-response", LIMIT)


def test_a_response_within_the_limit_is_one_frame_as_before():
    items = SharedItems("Gadget", (gadget(1),))
    update = QueryUpdate("c", "t", 0, items, [], 1)
    [frame] = query_frames(update, codecs.JSON, "ws:m:query-response", LIMIT)
    assert "more" not in json.loads(frame)["data"]
