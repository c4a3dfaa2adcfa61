"""CBOR frames that abuse shared-value tags (28/29), as found in issue 13 item 1: a few
bytes that decode to an exponentially large value, or a ping that echoes 100x its size."""

from __future__ import annotations

import cbor2


def shared_dag(levels: int) -> bytes:
    """CBOR for a list nested `levels` deep whose two elements at each level are the same
    list, written once and referenced (tag 28 marks it, tag 29 n refers to the n-th marked
    one, counted from the outside): 2^levels leaves in ~6 bytes per level."""
    body = b"\xd8\x1c\x82\x00\x00"
    for j in range(levels - 2, -1, -1):
        body = b"\xd8\x1c\x82" + body + b"\xd8\x1d" + cbor2.dumps(j + 1)
    return body


def envelope(event: str, data_cbor: bytes) -> bytes:
    return b"\xa2" + cbor2.dumps("event") + cbor2.dumps(event) + cbor2.dumps("data") + data_cbor


def amplifier_ping() -> bytes:
    """A ~10 kB ping whose data refers 99 times to one 10 kB string (1 MB when echoed)."""
    shared = b"\xd8\x1c" + cbor2.dumps("x" * 10_000)
    refs = b"\xd8\x1d\x00" * 99
    data = b"\xa2" + cbor2.dumps("id") + cbor2.dumps("p") + cbor2.dumps("pad")
    data += b"\x98\x64" + shared + refs  # an array of 100
    return envelope("ws:m:ping", data)


ATTACKS = {
    "dag-30-levels": envelope("ws:m:query", shared_dag(30)),
    "dag-40-levels": envelope("ws:m:query", shared_dag(40)),
    "ping-dag": envelope("ws:m:ping", b"\xa2\x62id\x61p\x61x" + shared_dag(30)),
    "ping-amplifier": amplifier_ping(),
}
