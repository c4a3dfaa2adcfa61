"""Frames <-> messages: JSON text, MessagePack or CBOR binary (PROTOCOL.md §1).

A query response's items are encoded once per format and spliced into every
subscriber's message; only the small per-subscription fields differ (DESIGN.md inv. 5).
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import cbor2
import msgpack

from . import gcpause
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
        value = _check(json.loads(text))
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
        # A large snapshot's wrapper dicts (one per item) would set off collections that
        # walk the store again for nothing (see gcpause).
        large = len(update.upserts) > NO_GC_ABOVE
        with gcpause.paused() if large else contextlib.nullcontext():
            wire = update.upserts.wire()
            if fmt == JSON:
                encoded = _dumps(wire)
            elif fmt == MSGPACK:
                encoded = msgpack.packb(wire, use_bin_type=True)
            else:
                encoded = cbor2.dumps(wire)
            del wire
        cache[fmt] = encoded
    return encoded


def _map_header(n: int, fmt: str) -> bytes:
    if fmt == MSGPACK:
        return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return bytes([0xA0 | n]) if n < 24 else b"\xb8" + bytes([n])


def _pack(value: Any, fmt: str) -> bytes:
    return msgpack.packb(value, use_bin_type=True) if fmt == MSGPACK else cbor2.dumps(value)


def _json_str(s: str) -> str:
    """A JSON string; a plain ASCII one (as every tx the clients make) needs no escaping."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return _dumps(s)


def _shared_part(update: QueryUpdate, fmt: str, event: str) -> tuple[Any, Any]:
    """(everything before the tx value, everything from `deletes` to the upserts key): the
    same for every subscriber of one live result in one batch, so encoded once and kept
    with the shared items. Keyed by the identity of the shared `deletes`/`window`/`changes`
    (the entry holds them, so an id cannot be reused while it is cached)."""
    deletes, window, changes = update.deletes, update.window, update.changes
    key = (
        "part",
        fmt,
        event,
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
    if fmt == JSON:
        head: Any = f'{{"event":{_dumps(event)},"data":{{"tx":'
        tail: Any = "".join(f",{_dumps(k)}:{_dumps(v)}" for k, v in fields) + ',"upserts":'
    else:
        head = (
            _map_header(2, fmt)
            + _pack("event", fmt)
            + _pack(event, fmt)
            + _pack("data", fmt)
            + _map_header(len(fields) + 3, fmt)
            + _pack("tx", fmt)
        )
        tail = b"".join(_pack(k, fmt) + _pack(v, fmt) for k, v in fields) + _pack("upserts", fmt)
    part = (head, tail)
    cache[key] = (deletes if deletes else None, window, changes, part)
    return part


_SEQUENCE_KEY = {MSGPACK: msgpack.packb("sequence"), CBOR: cbor2.dumps("sequence")}


def encode_query_response(
    update: QueryUpdate, fmt: str, event: str = "ws:m:query-response"
) -> str | bytes:
    """A query (or view) response with the shared upserts spliced in already encoded.

    This runs once per receiving connection: all but `tx` and `sequence` is encoded once
    per batch (`_shared_part`), so a subscriber's message is one join."""
    upserts = _upserts(update, fmt)
    head, tail = _shared_part(update, fmt, event)
    if fmt == JSON:
        return f'{head}{_json_str(update.tx)},"sequence":{update.sequence:d}{tail}{upserts}}}}}'
    if fmt == MSGPACK:
        tx, sequence = _msgpack_str(update.tx), _msgpack_uint(update.sequence)
    else:
        tx, sequence = cbor2.dumps(update.tx), cbor2.dumps(update.sequence)
    return b"".join((head, tx, _SEQUENCE_KEY[fmt], sequence, tail, upserts))


def _msgpack_str(s: str) -> bytes:
    """What msgpack.packb gives for a str, without building a Packer for a short one."""
    data = s.encode()  # a lone surrogate raises, as in msgpack
    n = len(data)
    if n < 32:
        return bytes((0xA0 | n,)) + data
    if n < 256:
        return bytes((0xD9, n)) + data
    return msgpack.packb(s, use_bin_type=True)


def _msgpack_uint(n: int) -> bytes:
    """What msgpack.packb gives for a non-negative int (the smallest form)."""
    if 0 <= n < 0x80:
        return bytes((n,))
    if 0 <= n < 0x100:
        return bytes((0xCC, n))
    if 0 <= n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if 0 <= n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return msgpack.packb(n, use_bin_type=True)
