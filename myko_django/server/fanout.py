"""Fan-out encoding: one query response per subscriber, the costly part encoded once.

A live result's items are encoded once per format and spliced into every subscriber's
message, with everything else but `tx` and `sequence` (docs/architecture.md, "One
change", step 5).
"""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import msgpack

from myko_django.live.updates import QueryUpdate, SharedItems
from myko_django.server import gcpause
from myko_django.wire import codecs, envelope

# Above this many items, encoding runs with the cyclic garbage collector paused.
NO_GC_ABOVE = 1000


def encoded_upserts(update: QueryUpdate | SharedItems, fmt: str) -> Any:
    """The `upserts` array of `update` (or of these shared items) encoded in `fmt`, once."""
    upserts = update if isinstance(update, SharedItems) else update.upserts
    cache = upserts.cache
    encoded = cache.get(fmt)
    if encoded is None:
        # A large snapshot's wrapper dicts (one per item) would set off collections that
        # walk the store again for nothing (see gcpause).
        large = len(upserts) > NO_GC_ABOVE
        with gcpause.paused() if large else contextlib.nullcontext():
            wire = upserts.wire()
            if fmt == codecs.JSON:
                encoded = codecs.dumps_json(wire)
            elif fmt == codecs.MSGPACK:
                encoded = msgpack.packb(wire, use_bin_type=True)
            else:
                encoded = cbor2.dumps(wire)
            del wire
        cache[fmt] = encoded
    return encoded


def _shared_part(update: QueryUpdate, fmt: str, event: str) -> tuple[Any, Any]:
    """(everything before the tx value, everything from `deletes` to the upserts key): the
    same for every subscriber of one live result in one batch, so encoded once and kept
    with the shared items. Keyed by the identity of the shared `deletes`/`window`/`changes`
    (the entry holds them, so an id cannot be reused while it is cached)."""
    deletes, window, changes = update.deletes, update.window, update.changes
    more = getattr(update, "more", False)  # a part of a split response (server/outgoing.py)
    key = (
        "part",
        fmt,
        event,
        more,
        update.total_count,
        id(deletes) if deletes else 0,
        id(window) if window is not None else 0,
        id(changes) if changes is not None else 0,
    )
    cache = update.upserts.cache
    entry = cache.get(key)
    if (
        entry is not None
        and (entry[0] is deletes or not deletes)
        and entry[1] is window
        and entry[2] is changes
    ):
        return entry[3]
    fields: list[tuple[str, Any]] = [("deletes", deletes), ("totalCount", update.total_count)]
    if window is not None:
        fields.append(("window", window))
    if changes is not None:
        fields.append(("changes", changes))
    if more:
        fields.append(("more", True))
    if fmt == codecs.JSON:
        head: Any = f'{{"event":{codecs.dumps_json(event)},"data":{{"tx":'
        tail: Any = (
            "".join(f",{codecs.dumps_json(k)}:{codecs.dumps_json(v)}" for k, v in fields)
            + ',"upserts":'
        )
    else:
        head = (
            codecs.map_header(2, fmt)
            + codecs.pack_binary("event", fmt)
            + codecs.pack_binary(event, fmt)
            + codecs.pack_binary("data", fmt)
            + codecs.map_header(len(fields) + 3, fmt)
            + codecs.pack_binary("tx", fmt)
        )
        tail = b"".join(
            codecs.pack_binary(k, fmt) + codecs.pack_binary(v, fmt) for k, v in fields
        ) + codecs.pack_binary("upserts", fmt)
    part = (head, tail)
    cache[key] = (deletes if deletes else None, window, changes, part)
    return part


_SEQUENCE_KEY = {codecs.MSGPACK: msgpack.packb("sequence"), codecs.CBOR: cbor2.dumps("sequence")}


def encode_query_response(
    update: QueryUpdate, fmt: str, event: str = envelope.QUERY_RESPONSE
) -> str | bytes:
    """A query (or view) response with the shared upserts spliced in already encoded.

    This runs once per receiving connection: all but `tx` and `sequence` is encoded once
    per batch (`_shared_part`), so a subscriber's message is one join."""
    upserts = encoded_upserts(update, fmt)
    head, tail = _shared_part(update, fmt, event)
    if fmt == codecs.JSON:
        return (
            f'{head}{codecs.json_str(update.tx)},"sequence":{update.sequence:d}{tail}{upserts}}}}}'
        )
    if fmt == codecs.MSGPACK:
        tx, sequence = codecs.msgpack_str(update.tx), codecs.msgpack_uint(update.sequence)
    else:
        tx, sequence = cbor2.dumps(update.tx), cbor2.dumps(update.sequence)
    return b"".join((head, tx, _SEQUENCE_KEY[fmt], sequence, tail, upserts))
