"""Binary frames cannot cost more than their bytes (issue 13, item 1).

CBOR shared-value tags (28/29) let ~170 bytes stand for a DAG of 2^30 list items: walking
it froze a worker for 21 s, and a ping echoing one amplified 10 kB into 1 MB. The wire
layer reads a CBOR frame's headers before decoding and refuses every tag (docs/protocol.md,
"Formats"), so what is decoded is bounded by the frame's size.
"""

from __future__ import annotations

import json
import time

import cbor2
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from myko_django.wire import codecs
from tests.support.cbor_attacks import ATTACKS, envelope

FAST = 0.05  # seconds: what a refused attack frame may cost


def refused_fast(frame: bytes, fmt: str = codecs.CBOR) -> str:
    start = time.perf_counter()
    with pytest.raises(codecs.WireError) as info:
        codecs.decode_binary(frame, fmt)
    elapsed = time.perf_counter() - start
    assert elapsed < FAST, f"refusing took {elapsed:.3f} s"
    return str(info.value)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_shared_value_frames_are_refused_fast(name):
    frame = ATTACKS[name]
    if name == "dag-30-levels":
        assert len(frame) < 220  # 2^30 leaves in ~200 bytes (the issue: 170 bytes, 21 s)
    assert codecs.detect_binary(frame) == codecs.CBOR
    assert "CBOR tag 28 (shared value) is not accepted" in refused_fast(frame)


def test_a_bare_shared_reference_is_refused():
    assert "tag 29 (shared-value reference)" in refused_fast(envelope("x", b"\xd8\x1d\x00"))


@pytest.mark.parametrize(
    "data, tag",
    [
        (cbor2.dumps({1, 2}), 258),  # a set
        (b"\xd9\xd9\xf7" + cbor2.dumps({"a": 1}), 55799),  # self-described CBOR
        (b"\xc1\x1a\x00\x00\x00\x01", 1),  # an epoch date
        (b"\xc2\x41\x01", 2),  # a bignum
        (b"\xc5\x82\x1b\x7f\xff\xff\xff\xff\xff\xff\xff\x01", 5),  # bigfloat 2^(2^63)
        (b"\xd8\x23\x62a*", 35),  # a regex
        (b"\xd8\x69\x00", 105),  # cbor-x's record extension
        (b"\xdb\xff\xff\xff\xff\xff\xff\xff\xff\x00", 2**64 - 1),
    ],
)
def test_every_tag_is_refused_before_decoding(data, tag):
    assert f"CBOR tag {tag}" in refused_fast(envelope("ws:m:ping", data))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x41x", "byte strings"),
        (b"\xf7", "undefined"),
        (b"\xf0", "simple value 16"),
        (b"\xf8\xff", "simple value 255"),
        (b"\xa1\x01\x02", "map key"),
        (b"\xa1\x41k\x02", "map key"),
        (b"\x5f\xff", "byte strings"),
        (b"\x9f\x01", "ends inside"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "ends inside"),  # 2^64-1 items declared
        (b"\x7b\xff\xff\xff\xff\xff\xff\xff\xff", "ends inside"),
        (b"\x7f\x61a\x01\xff", "indefinite string"),
        (b"\x1f", "header byte"),
        (b"\x1c", "reserved"),
        (b"\xff", "break"),
    ],
)
def test_what_json_cannot_carry_or_bad_cbor_is_refused(data, reason):
    assert reason in refused_fast(envelope("ws:m:ping", data))


def test_trailing_bytes_are_refused():
    assert "1 bytes after the message" in refused_fast(cbor2.dumps({"event": "x"}) + b"\x00")


def test_nesting_limit_matches_json():
    for levels, ok in ((codecs.MAX_DEPTH, True), (codecs.MAX_DEPTH + 1, False)):
        value: object = 1
        for _ in range(levels - 1):
            value = [value]
        message = {"event": "ws:m:ping", "data": value}  # the envelope is one level
        text = json.dumps(message)
        frame = cbor2.dumps(message)
        if ok:
            assert codecs.decode_binary(frame, codecs.CBOR) == codecs.decode_text(text)
        else:
            with pytest.raises(codecs.WireError, match="nested deeper"):
                codecs.decode_text(text)
            assert "nested deeper" in refused_fast(frame)
    assert "nested deeper" in refused_fast(b"\x81" * 100_000 + b"\x00")


# ---- honest frames --------------------------------------------------------------------

HONEST = [
    {"event": "ws:m:ping", "data": {"id": "c", "timestamp": 4}},
    {
        "event": "ws:m:query",
        "data": {
            "query": {"tx": "t1", "ids": ["a", "b"]},
            "queryId": "GetTargetsByIds",
            "queryItemType": "Target",
            "window": {"offset": 0, "limit": 50},
        },
    },
    {"event": "ws:m:query-window", "data": {"tx": "t1", "window": None}},
    {"event": "ws:m:query-cancel", "data": {"tx": "t1"}},
    {"event": "ws:m:report", "data": {"report": {"tx": "r"}, "reportId": "CountAllTargets"}},
    {
        "event": "ws:m:command",
        "data": {"command": {"tx": "c", "id": "t", "name": "é ✓ 𝄞"}, "commandId": "Rename"},
    },
    {
        "event": "ws:m:event",
        "data": {
            "changeType": "SET",
            "itemType": "Target",
            "item": {"id": "t", "name": "a", "count": 2**64 - 1, "low": -(2**63), "f": 1.5},
            "tx": "e",
            "createdAt": "2024-01-01T00:00:00Z",
            "sourceId": "s",
            "options": {"nested": [[], {}, [True, False, None, 0.1, -1e300, "x" * 300]]},
        },
    },
    {"event": "ws:m:event-batch", "data": [{"changeType": "DEL", "itemType": "T", "item": {}}]},
]


@pytest.mark.parametrize("message", HONEST, ids=lambda m: m["event"])
def test_honest_messages_decode(message):
    frame = cbor2.dumps(message)
    assert codecs.decode_binary(frame, codecs.CBOR) == message
    assert codecs.decode_binary(msgpack.packb(message), codecs.MSGPACK) == message


def test_the_typescript_clients_framing_and_other_honest_encodings():
    ping = {"id": "c", "timestamp": 4}
    body = cbor2.dumps("event") + cbor2.dumps("ws:m:ping") + cbor2.dumps("data")
    body += cbor2.dumps(ping)
    expected = {"event": "ws:m:ping", "data": ping}
    assert codecs.decode_binary(b"\xb9\x00\x02" + body, codecs.CBOR) == expected  # 2-byte len
    assert codecs.decode_binary(b"\xbf" + body + b"\xff", codecs.CBOR) == expected  # indefinite
    # Indefinite arrays and strings (keys too), half/single floats, 8-byte headers.
    frame = b"\xa1\x7f\x62ev\x63ent\xff\x9f\xf9\x3c\x00\xfa\x3f\xc0\x00\x00\x1b" + (
        (5_000_000_000).to_bytes(8, "big") + b"\x7b" + (1).to_bytes(8, "big") + b"z\xff"
    )
    assert codecs.decode_binary(frame, codecs.CBOR) == {"event": [1.0, 1.5, 5_000_000_000, "z"]}


def test_decoded_items_are_bounded_by_the_frame_size():
    message = HONEST[6]
    frame = cbor2.dumps(message)
    assert codecs.scan_cbor(frame) <= len(frame)
    assert codecs.scan_cbor(b"\x9f" + b"\x80" * 1000 + b"\xff") == 1001


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_every_json_value_survives_cbor_and_msgpack(value):
    assert codecs.decode_binary(cbor2.dumps(value), codecs.CBOR) == value
    assert codecs.scan_cbor(cbor2.dumps(value)) <= len(cbor2.dumps(value))
    try:
        packed = msgpack.packb(value)
    except OverflowError:  # an integer beyond MessagePack's range (CBOR goes to -2^64)
        return
    assert codecs.decode_binary(packed, codecs.MSGPACK) == value


def _decode_quietly(frame: bytes, fmt: str) -> None:
    start = time.perf_counter()
    try:
        codecs.decode_binary(frame, fmt)
    except codecs.WireError:
        pass
    elapsed = time.perf_counter() - start
    assert elapsed < 0.2, f"{fmt} frame {frame[:40]!r} took {elapsed:.3f} s"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([codecs.CBOR, codecs.MSGPACK]))
def test_random_bytes_only_ever_raise_wire_error(frame, fmt):
    _decode_quietly(frame, fmt)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(
        [cbor2.dumps(m) for m in HONEST] + list(ATTACKS.values()) + [msgpack.packb(HONEST[6])]
    ),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
    st.sampled_from([codecs.CBOR, codecs.MSGPACK]),
)
def test_mutated_frames_only_ever_raise_wire_error(frame, edits, fmt):
    data = bytearray(frame)
    for position, byte in edits:
        data[position % len(data)] = byte
    _decode_quietly(bytes(data), fmt)


# ---- MessagePack has no shared references; its sizes are checked against the frame -----


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0", "not valid msgpack"),
        (b"\x81\xa1a\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
        (b"\x81\xa1a\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
        (b"\x81\xa1a\xdb\xff\xff\xff\xff", "not valid msgpack"),
        (b"\x81\xa1a" + msgpack.packb(msgpack.ExtType(5, b"x")), "ExtType"),
        (b"\x81\xa1a\xd6\xff\x00\x00\x00\x01", "Timestamp"),
    ],
)
def test_msgpack_frames_cannot_claim_more_than_they_hold(frame, reason):
    assert reason in refused_fast(frame, codecs.MSGPACK)
