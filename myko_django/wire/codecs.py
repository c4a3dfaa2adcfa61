"""Frames <-> messages: JSON text, MessagePack or CBOR binary (docs/protocol.md, "Formats").

Decoding refuses what JSON could not carry, so every format means the same messages.
The small byte-level encoders at the end let the server splice pre-encoded parts
(server/fanout.py).
"""

from __future__ import annotations

import json
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
        return dumps_json(message)
    if fmt == MSGPACK:
        return msgpack.packb(message, use_bin_type=True)
    return cbor2.dumps(message)


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
