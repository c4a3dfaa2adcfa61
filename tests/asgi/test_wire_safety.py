"""A CBOR frame built on shared-value tags costs its connection one logged bad frame and
nothing else; other connections keep being served (issue 13, item 1; the decoder's side is
tests/unit/test_wire_safety.py)."""

from __future__ import annotations

import logging
import time

import pytest

from tests.support.cbor_attacks import ATTACKS
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_shared_value_frames_are_one_bad_frame_each(asgi_app, caplog):
    caplog.set_level(logging.WARNING, logger="myko_django")
    attacker = await WsClient.asgi(asgi_app, "cbor")
    other = await WsClient.asgi(asgi_app, "json")
    try:
        tx, first = await other.subscribe("GetAllTargets", "Target")
        assert first["sequence"] == 0
        await attacker.ping("before")  # a text frame: the connection has no binary format yet
        for name, frame in ATTACKS.items():
            start = time.perf_counter()
            await attacker.send_raw(frame)
            await attacker.nothing(0.05)  # no echo of the amplifier ping, no error reply
            await other.ping(name)
            assert time.perf_counter() - start < 1, name
        # The attacker's connection still works, in CBOR (its first good binary frame).
        await attacker.send("ws:m:ping", {"id": "after", "timestamp": 1})
        assert await attacker.recv() == {
            "event": "ws:m:ping",
            "data": {"id": "after", "timestamp": 1},
        }
        await other.event("SET", "Target", {"id": "t", "name": "a"})
        update = await other.expect("ws:m:query-response")
        assert (update["tx"], update["sequence"]) == (tx, 1)
    finally:
        await attacker.close()
        await other.close()
    bad = [r.getMessage() for r in caplog.records if "ignored a bad message" in r.getMessage()]
    assert len(bad) == len(ATTACKS)
    assert all("CBOR tag 28 (shared value) is not accepted" in m for m in bad), bad
