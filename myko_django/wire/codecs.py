"""Frames <-> messages: JSON text, MessagePack or CBOR binary (docs/protocol.md, "Formats").

Decoding refuses what JSON could not carry, so every format means the same messages.
The small byte-level encoders at the end let the server splice pre-encoded parts
(server/fanout.py).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import cbor2
import msgpack

JSON, MSGPACK, CBOR = "json", "msgpack", "cbor"


MAX_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class WireError(ValueError):
    """A frame that does not decode in its format."""


def dumps_json(value: Any) -> str:
    """Compact JSON text, as every frame is sent."""
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
    if fmt != MSGPACK:
        # Before cbor2 builds anything (see scan_cbor). The scan refuses all that `_check`
        # would, so the decoded value needs no second walk.
        scan_cbor(data)
    try:
        if fmt == MSGPACK:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        else:
            value = cbor2.loads(data)
    except Exception as exc:  # each library has its own errors for truncated/garbage input
        raise WireError(f"binary frame is not valid {fmt}: {exc!r:.200}") from None
    return value if fmt != MSGPACK else _check(value)


# ---- CBOR headers, read before decoding --------------------------------------------------
#
# CBOR tags 28/29 (shared values) let a few bytes stand for a DAG that expands
# exponentially when walked: 170 bytes held 2^30 list items, and checking (or echoing)
# them froze a worker for seconds to minutes. Every tag is refused anyway (docs/protocol.md,
# "Formats": none means anything JSON can carry, and cbor2 acts on many of them while
# decoding: dates, regexes, decimals, sets...), so the frame's headers are read first,
# without building values, and a frame is refused before cbor2 sees it if it holds a tag or
# anything else JSON cannot carry. Without tags each item takes at least one byte of the
# frame, so what cbor2 then builds is bounded by the frame's size (at most len(data)
# items), and no later walk can cost more than the bytes that came in.

_TAG_NAMES = {28: "shared value", 29: "shared-value reference", 55799: "self-described CBOR"}
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def scan_cbor(data: bytes) -> int:
    """Check a CBOR frame's structure from its headers: one well-formed item and nothing
    after it, no tags, no byte strings, text map keys, no simple values but false, true and
    null, containers nested at most MAX_DEPTH deep (as `_check` counts). Returns the number
    of items (never more than len(data)); raises WireError. Strings' UTF-8 is left to cbor2."""
    try:
        end, items = _scan_item(data, 0, 0, len(data))
    except IndexError:
        raise WireError("binary frame is not valid cbor: it ends inside an item") from None
    if end != len(data):
        raise WireError(
            f"binary frame is not valid cbor: {len(data) - end} bytes after the message"
        )
    return items


def _scan_item(data: bytes, i: int, depth: int, size: int) -> tuple[int, int]:
    """(position after the item starting at i, items in it)."""
    ib = data[i]
    major, ai = ib >> 5, ib & 31
    i += 1
    if ai < 24:
        arg = ai
    elif ai < 28:
        n = _ARG_BYTES[ai]
        if i + n > size:
            raise IndexError
        arg = int.from_bytes(data[i : i + n], "big")
        i += n
    elif ai == 31:
        arg = -1  # indefinite length (or a float/break for major 7)
    else:
        raise WireError(f"binary frame is not valid cbor: reserved header byte {ib:#x}")
    if major == 3:  # text string
        if arg < 0:
            return _scan_chunks(data, i, size), 1
        i += arg
        if i > size:
            raise IndexError
        return i, 1
    if major <= 1:  # integer
        if arg < 0:
            raise WireError(f"binary frame is not valid cbor: header byte {ib:#x}")
        return i, 1
    if major == 5 or major == 4:  # map / array
        if depth >= MAX_DEPTH:
            raise WireError(f"message is nested deeper than {MAX_DEPTH} levels")
        items = 1
        depth += 1
        is_map = major == 5
        count = 0
        while arg < 0 or count < arg:  # each pass reads at least a byte: ends by `size`
            b = data[i]
            if arg < 0 and b == 0xFF:
                return i + 1, items
            if is_map:
                if 0x60 <= b < 0x78:  # a short key, the usual case: inline, for speed
                    i += 1 + b - 0x60
                    items += 1
                elif b >> 5 != 3:
                    raise WireError("a map key is not a string")
                else:
                    i, n = _scan_item(data, i, depth, size)
                    items += n
                b = data[i]
            if b < 0x18 or 0xF4 <= b <= 0xF6 or 0x20 <= b < 0x38:  # small int, false/true/null
                i += 1
                items += 1
            elif 0x60 <= b < 0x78:  # short text
                i += 1 + b - 0x60
                items += 1
            else:
                i, n = _scan_item(data, i, depth, size)
                items += n
            count += 1
        if i > size:
            raise IndexError
        return i, items
    if major == 7:
        if ai in (20, 21, 22):  # false, true, null
            return i, 1
        if ai in (25, 26, 27):  # half, single, double float
            return i, 1
        if ai == 31:
            raise WireError("binary frame is not valid cbor: a break outside an indefinite item")
        if ai == 23:
            raise WireError("value undefined has no JSON equivalent")
        raise WireError(f"CBOR simple value {arg} has no JSON equivalent")
    if major == 6:
        if arg < 0:
            raise WireError(f"binary frame is not valid cbor: header byte {ib:#x}")
        name = _TAG_NAMES.get(arg)
        raise WireError(f"CBOR tag {arg}{f' ({name})' if name else ''} is not accepted")
    raise WireError("byte strings have no JSON equivalent")  # major 2


def _scan_chunks(data: bytes, i: int, size: int) -> int:
    """The chunks of an indefinite-length text string, up to its break."""
    while data[i] != 0xFF:
        ib = data[i]
        if ib >> 5 != 3 or ib & 31 > 27:
            raise WireError("binary frame is not valid cbor: a bad chunk in an indefinite string")
        i, _ = _scan_item(data, i, 0, size)
    return i + 1


def encode(message: dict, fmt: str) -> str | bytes:
    """A whole message: text for JSON, bytes for the binary formats."""
    if fmt == JSON:
        return dumps_json(message)
    if fmt == MSGPACK:
        return msgpack.packb(message, use_bin_type=True)
    return cbor2.dumps(message)


def carriable(value: Any, depth: int = 0) -> Any:
    """`value` with what some format cannot carry replaced by None: NaN and infinities
    (JSON has no such numbers) and integers outside -2**63..2**64-1 (MessagePack's range).
    For echoing a ping whatever it held (docs/protocol.md, "Envelope")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else None
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {k: carriable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [carriable(v, depth + 1) for v in value]
    return value


# ---- byte-level pieces for splicing pre-encoded parts ----------------------------------


def map_header(n: int, fmt: str) -> bytes:
    if fmt == MSGPACK:
        return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return bytes([0xA0 | n]) if n < 24 else b"\xb8" + bytes([n])


def pack_binary(value: Any, fmt: str) -> bytes:
    return msgpack.packb(value, use_bin_type=True) if fmt == MSGPACK else cbor2.dumps(value)


def json_str(s: str) -> str:
    """A JSON string; a plain ASCII one (as every tx the clients make) needs no escaping."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return dumps_json(s)


def msgpack_str(s: str) -> bytes:
    """What msgpack.packb gives for a str, without building a Packer for a short one."""
    data = s.encode()  # a lone surrogate raises, as in msgpack
    n = len(data)
    if n < 32:
        return bytes((0xA0 | n,)) + data
    if n < 256:
        return bytes((0xD9, n)) + data
    return msgpack.packb(s, use_bin_type=True)


def msgpack_uint(n: int) -> bytes:
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
