"""Frames <-> messages: JSON text, MessagePack or CBOR binary (PROTOCOL.md §1).

A query response's items are encoded once per format and spliced into every
subscriber's message; only the small per-subscription fields differ (DESIGN.md inv. 5).
"""

from __future__ import annotations

import gc
import json
import re
from typing import Any

import cbor2
import msgpack

from .engine import QueryUpdate

JSON, MSGPACK, CBOR = "json", "msgpack", "cbor"
SWITCH_TEXT = "myko:switch-to-msgpack"
SWITCH_REPLY = '{"event":"ws:m:protocol-switch","data":{"protocol":"msgpack"}}'


MAX_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class WireError(ValueError):
    """A frame that does not decode in its format."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_text(text: str) -> Any:
    try:
        value = json.loads(text)
        if "\\u" in text and _ESCAPED_SURROGATE.search(text):
            _no_lone_surrogates(value)
    except WireError:
        raise
    except (ValueError, RecursionError) as exc:
        raise WireError(f"text frame is not JSON: {exc}") from None
    return value


def _no_lone_surrogates(value: Any) -> None:
    """A `\\ud800` escape decodes to a string no UTF-8 encoder (database, socket) takes."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise WireError("text frame holds a lone UTF-16 surrogate escape")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_lone_surrogates(key)
            _no_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogates(item)


def detect_binary(data: bytes) -> str:
    """Which binary format a first frame is in, from its first byte (a map in each)."""
    if not data:
        raise WireError("empty binary frame")
    first = data[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return MSGPACK
    if 0xA0 <= first <= 0xBF:
        return CBOR
    raise WireError(f"binary frame is neither a MessagePack nor a CBOR map (first byte {first:#x})")


def _check(value: Any, depth: int = 0) -> Any:
    """Refuse what JSON cannot carry (non-string map keys, tags, byte strings) and nesting
    deeper than MAX_DEPTH (which would exhaust the stack of whatever walks it next)."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise WireError(f"message is nested deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"map key {key!r:.40} is not a string")
            _check(item, depth + 1)
    elif isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise WireError(f"message is nested deeper than {MAX_DEPTH} levels")
        for item in value:
            _check(item, depth + 1)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise WireError(f"value of type {type(value).__name__} has no JSON equivalent")
    return value


def decode_binary(data: bytes, fmt: str) -> Any:
    try:
        if fmt == MSGPACK:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        else:
            value = cbor2.loads(data)
    except Exception as exc:  # each library has its own errors for truncated/garbage input
        raise WireError(f"binary frame is not valid {fmt}: {exc!r:.200}") from None
    return _check(value)


def encode(message: dict, fmt: str) -> str | bytes:
    """A whole message: text for JSON, bytes for the binary formats."""
    if fmt == JSON:
        return _dumps(message)
    if fmt == MSGPACK:
        return msgpack.packb(message, use_bin_type=True)
    return cbor2.dumps(message)


# Above this many items, encoding runs with the cyclic garbage collector paused.
NO_GC_ABOVE = 1000


def _upserts(update: QueryUpdate, fmt: str) -> Any:
    cache = update.upserts.cache
    encoded = cache.get(fmt)
    if encoded is None:
        # The wrapper dicts of a large snapshot (100,000 for 100,000 items) would set off
        # collections that walk every store item again, several times, for garbage that
        # has no cycles: encoding 100,000 items took 3-5x longer with the collector on.
        paused = len(update.upserts) > NO_GC_ABOVE and gc.isenabled()
        if paused:
            gc.disable()
        try:
            wire = update.upserts.wire()
            if fmt == JSON:
                encoded = _dumps(wire)
            elif fmt == MSGPACK:
                encoded = msgpack.packb(wire, use_bin_type=True)
            else:
                encoded = cbor2.dumps(wire)
            del wire
        finally:
            if paused:
                gc.enable()
        cache[fmt] = encoded
    return encoded


def _map_header(n: int, fmt: str) -> bytes:
    if fmt == MSGPACK:
        return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return bytes([0xA0 | n]) if n < 24 else b"\xb8" + bytes([n])


def _pack(value: Any, fmt: str) -> bytes:
    return msgpack.packb(value, use_bin_type=True) if fmt == MSGPACK else cbor2.dumps(value)


_prefixes: dict[tuple[str, str], tuple[bytes, bytes]] = {}


def _binary_prefix(event: str, fmt: str) -> tuple[bytes, bytes]:
    """(outer map header + "event" + event + "data" key, the "upserts" key), per format."""
    found = _prefixes.get((event, fmt))
    if found is None:
        outer = _map_header(2, fmt) + _pack("event", fmt) + _pack(event, fmt) + _pack("data", fmt)
        found = _prefixes[(event, fmt)] = (outer, _pack("upserts", fmt))
    return found


def encode_query_response(
    update: QueryUpdate, fmt: str, event: str = "ws:m:query-response"
) -> str | bytes:
    """A query (or view) response with the shared upserts spliced in already encoded.

    The small per-subscription fields are encoded in one call and the items appended as
    they are (this runs once per receiving connection, so it stays a handful of calls)."""
    data: dict[str, Any] = {
        "tx": update.tx,
        "sequence": update.sequence,
        "deletes": update.deletes,
        "totalCount": update.total_count,
    }
    if update.window is not None:
        data["window"] = update.window
    if update.changes is not None:
        data["changes"] = update.changes
    upserts = _upserts(update, fmt)
    if fmt == JSON:
        head = _dumps(data)
        return f'{{"event":{_dumps(event)},"data":{head[:-1]},"upserts":{upserts}}}}}'
    head = _pack(data, fmt)
    outer, upserts_key = _binary_prefix(event, fmt)
    # `data` has at most 6 keys: a one-byte map header (MessagePack fixmap 0x80|n, CBOR
    # 0xa0|n) either way, so adding "upserts" only increments that byte.
    return b"".join((outer, bytes((head[0] + 1,)), memoryview(head)[1:], upserts_key, upserts))
