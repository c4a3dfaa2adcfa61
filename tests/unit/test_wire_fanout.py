"""Query responses of one batch share everything but tx and sequence (encoded once); each
subscriber's message must still decode to exactly its own response, in every format."""

import json

import cbor2
import msgpack
import pytest

from myko_django.live.updates import QueryUpdate, SharedItems
from myko_django.server.fanout import encode_query_response
from myko_django.wire import codecs as wire

TXS = ["s1", 'with "quote"', "back\\slash", "ctl\x01", "é-unicode", "x" * 31, "y" * 300, ""]
SEQUENCES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40]


def decode(frame, fmt):
    if fmt == wire.JSON:
        return json.loads(frame)
    if fmt == wire.MSGPACK:
        return msgpack.unpackb(frame, raw=False)
    return cbor2.loads(frame)


@pytest.mark.parametrize("fmt", [wire.JSON, wire.MSGPACK, wire.CBOR])
@pytest.mark.parametrize("windowed", [False, True])
def test_subscribers_of_one_batch_each_get_their_own_tx_and_sequence(fmt, windowed):
    items = SharedItems("Target", ({"id": "t1", "name": "n", "sceneId": None},))
    deletes = ["t0"]
    window = {"offset": 0, "limit": 5} if windowed else None
    changes = (
        [{"kind": "windowOrder", "ids": ["t1"], "total_count": 1, "window": window}]
        if windowed
        else None
    )
    for event in ("ws:m:query-response", "ws:m:view-response"):
        for tx in TXS:
            for sequence in SEQUENCES:
                update = QueryUpdate("c", tx, sequence, items, deletes, 7, window, changes)
                message = decode(encode_query_response(update, fmt, event), fmt)
                assert message == {"event": event, "data": update.to_wire()}


def test_the_shared_part_is_encoded_once_per_batch():
    items = SharedItems("Target", ({"id": "t1"},))
    deletes: list[str] = []
    a = QueryUpdate("c1", "a", 3, items, deletes, 1)
    b = QueryUpdate("c2", "b", 9, items, deletes, 1)
    encode_query_response(a, wire.JSON)
    cached = len(items.cache)
    encode_query_response(b, wire.JSON)
    assert len(items.cache) == cached  # nothing new for the second subscriber
    c = QueryUpdate("c3", "c", 1, items, ["t9"], 0)  # other deletes and total: their own part
    assert json.loads(encode_query_response(c, wire.JSON))["data"]["deletes"] == ["t9"]
