"""Hypothesis strategies for whole client frames of the myko protocol, and a checker for
what the server sends back (issue 13: the fuzz test). Every message shape of
docs/protocol.md, "Envelope", with parameters that are sometimes right and mostly not,
in JSON, MessagePack or CBOR, plus frames that are not messages at all.

`Replies` decodes and checks each frame a connection sends: it must decode (a text frame
as strict JSON, a binary one as MessagePack or CBOR by its first byte), be an envelope of
an event servers send, and carry that event's fields; query sequence numbers of a `tx`
must follow on from each other.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import msgpack
from hypothesis import strategies as st

from myko_django.wire import envelope as ev

TXS = st.sampled_from(["t1", "t2", "t3"]) | st.text(max_size=4) | st.integers() | st.none()
IDS = st.sampled_from(["a", "b", "c", "1", "2"]) | st.text(max_size=3)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)

QUERY_IDS = st.sampled_from(
    [
        "GetAllTargets",
        "GetTargetsByIds",
        "GetTargetsByQuery",
        "GetAllScenes",
        "GetConnectedServer",
        "GetPeerServers",
        "GetAllGadgets",
        "Nope",
    ]
) | st.text(max_size=6)
REPORT_IDS = st.sampled_from(
    [
        "CountAllTargets",
        "CountTargets",
        "GetTargetById",
        "TargetNames",
        "Explode",
        "CountAllGadgets",
        "Nope",
    ]
)
COMMAND_IDS = st.sampled_from(
    [
        "RenameTarget",
        "CreateTargets",
        "FailAfterWrite",
        "Echo",
        "DeleteTarget",
        "DeleteTargets",
        "CreateTarget",
        "SlowCount",
        "Nope",
    ]
)
ITEM_TYPES = st.sampled_from(["Target", "Scene", "Gadget", "Nope"]) | st.none() | values

filter_values = (
    values
    | st.fixed_dictionaries(
        {"kind": st.sampled_from(["eq", "in", "range", "contains", "startsWith", "x"])},
        optional={"value": values | st.lists(IDS, max_size=3)},
    )
    | IDS
)
params = st.dictionaries(
    st.sampled_from(
        [
            "ids",
            "id",
            "name",
            "category",
            "value",
            "label",
            "scene",
            "createdAt",
            "seq",
            "userToken",
            "serviceId",
        ]
    )
    | st.text(max_size=4),
    st.lists(IDS, max_size=3) | filter_values,
    max_size=3,
)
windows = (
    st.none()
    | st.fixed_dictionaries(
        {"limit": st.integers(-2, 5) | values}, optional={"offset": st.integers(-2, 5) | values}
    )
    | values
)


def _request(key: str, id_key: str, ids: st.SearchStrategy, type_key: str | None = None):
    data = {key: st.builds(lambda p, tx: {**p, "tx": tx}, params, TXS), id_key: ids}
    optional: dict[str, st.SearchStrategy] = {"window": windows}
    if type_key:
        optional[type_key] = ITEM_TYPES
    return st.fixed_dictionaries(data, optional=optional)


items = st.fixed_dictionaries(
    {"id": IDS | values}, optional={"name": values, "category": values, "label": values}
)
events = st.fixed_dictionaries(
    {"item": items | values, "changeType": st.sampled_from(["SET", "DEL", "PUT"]) | values},
    optional={"itemType": ITEM_TYPES, "tx": TXS, "createdAt": values, "sourceId": values},
)


def _envelope(event: str, data: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda d: {"event": event, "data": d}, data)


messages = st.one_of(
    _envelope(ev.QUERY, _request("query", "queryId", QUERY_IDS, "queryItemType")),
    _envelope(ev.VIEW, _request("view", "viewId", QUERY_IDS, "viewItemType")),
    _envelope(ev.REPORT, _request("report", "reportId", REPORT_IDS)),
    _envelope(ev.COMMAND, _request("command", "commandId", COMMAND_IDS)),
    st.sampled_from([ev.QUERY_WINDOW, ev.VIEW_WINDOW]).flatmap(
        lambda e: _envelope(e, st.fixed_dictionaries({"tx": TXS}, optional={"window": windows}))
    ),
    st.sampled_from([ev.QUERY_CANCEL, ev.VIEW_CANCEL, ev.REPORT_CANCEL]).flatmap(
        lambda e: _envelope(e, st.fixed_dictionaries({"tx": TXS}) | values)
    ),
    _envelope(ev.EVENT, events | values),
    _envelope(ev.EVENT_BATCH, st.lists(events | values, max_size=4) | values),
    _envelope(ev.PING, values),
    _envelope(ev.BENCHMARK, values),
    st.sampled_from(sorted(ev.SERVER_TO_CLIENT)).flatmap(lambda e: _envelope(e, values)),
    st.builds(lambda e, d: {"event": e, "data": d}, values, values),
    values,
)


def encode(message: Any, fmt: str) -> str | bytes | None:
    """One frame of `message` in `fmt`; None if that library cannot write it."""
    try:
        if fmt == "json":
            return json.dumps(message)  # NaN and Infinity as JSON's readers allow them
        if fmt == "msgpack":
            return msgpack.packb(message, use_bin_type=True)
        return cbor2.dumps(message)
    except (OverflowError, TypeError, ValueError):
        return None


FORMATS = st.sampled_from(["json", "msgpack", "cbor"])
junk = (
    st.binary(max_size=40)
    | st.text(max_size=40)
    | st.just(ev.SWITCH_TEXT)
    | st.sampled_from([b"\x81", b"\xa1", b"\xde\x00", b"\xd8\x1c\x80", "{", "[1,2]"])
)
frames = st.lists(
    st.tuples(messages, FORMATS).map(lambda mf: encode(*mf)).filter(lambda f: f is not None) | junk,
    min_size=1,
    max_size=8,
)

MSGPACK_MAPS = {*range(0x80, 0x90), 0xDE, 0xDF}
CBOR_MAPS = set(range(0xA0, 0xC0))
SERVER_EVENTS = ev.SERVER_TO_CLIENT | {ev.PING}


def _strict_constant(name: str) -> Any:
    raise AssertionError(f"the server wrote {name} in JSON")


def decode_reply(frame: str | bytes) -> Any:
    if isinstance(frame, str):
        return json.loads(frame, parse_constant=_strict_constant)
    assert isinstance(frame, bytes) and frame, frame
    if frame[0] in MSGPACK_MAPS:
        return msgpack.unpackb(frame, raw=False)
    assert frame[0] in CBOR_MAPS, f"binary reply is not a map: {frame[:20]!r}"
    return cbor2.loads(frame)


class Replies:
    """Checks every reply of one connection (see the module docstring)."""

    def __init__(self) -> None:
        self.sequences: dict[str, int] = {}
        self.pings: list[Any] = []

    def check(self, frame: str | bytes) -> dict:
        message = decode_reply(frame)
        assert isinstance(message, dict) and set(message) == {"event", "data"}, message
        event, data = message["event"], message["data"]
        assert event in SERVER_EVENTS, event
        if event == ev.PING:
            self.pings.append(data)
            return message
        assert isinstance(data, dict), message
        if event == ev.PROTOCOL_SWITCH:
            assert data == {"protocol": "msgpack"}
        elif event in (ev.QUERY_RESPONSE, ev.VIEW_RESPONSE):
            tx, sequence = data["tx"], data["sequence"]
            assert isinstance(tx, str) and isinstance(sequence, int), data
            expected = self.sequences.get(tx, -1) + 1
            assert sequence in (0, expected), (sequence, expected, data)
            self.sequences[tx] = sequence
            assert isinstance(data["totalCount"], int) and data["totalCount"] >= 0
            assert all(isinstance(i, str) for i in data["deletes"]), data
            for upsert in data["upserts"]:
                assert isinstance(upsert["itemType"], str), upsert
                assert isinstance(upsert["item"], dict), upsert
                assert isinstance(upsert["item"]["id"], str), upsert
        elif event in (ev.REPORT_RESPONSE, ev.COMMAND_RESPONSE):
            assert isinstance(data["tx"], str) and "response" in data, data
        else:  # the errors
            assert event.endswith("-error"), event
            assert isinstance(data["message"], str) and data["message"], data
            if event == ev.EVENT_ERROR:
                assert data["tx"] is None or isinstance(data["tx"], str), data
            else:
                assert isinstance(data["tx"], str), data
        return message
