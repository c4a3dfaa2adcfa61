"""Fuzzing the protocol (issue 13): hypothesis sends `Connection` (in-memory backend,
tests/support/memory.py) lists of frames in JSON, MessagePack and CBOR, of every message
shape of docs/protocol.md and garbage. Nothing raises out of the connection or fails
inside it unexpectedly, every reply is a well-formed server message, and afterwards the
connection still answers a ping. The same against the real ASGI stack:
tests/asgi/test_fuzz_protocol.py."""

from __future__ import annotations

import asyncio
import logging

from hypothesis import HealthCheck, given, settings

from myko_django.server.connection import Connection
from tests.support import fuzz
from tests.support.memory import MemoryBackend, MemoryDatabase, MemoryHub, target

# What Connection logs when a message failed in a way nobody foresaw (a report function
# that raises, say, is foreseen: it is answered with report-error).
UNEXPECTED = {"myko: connection %s: a message failed", "myko: connection %s: %s failed"}
ALIVE = '{"event":"ws:m:ping","data":{"id":"alive"}}'


class Failures(logging.Handler):
    """Records of a message that failed unexpectedly (Connection._handle_safely and its
    command/event worker log those with a traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _serve(frames: list[str | bytes]) -> None:
    db = MemoryDatabase()
    db.commit([("SET", "Target", target("a")), ("SET", "Target", target("b", category="x"))])
    hub = MemoryHub(db)
    sent: list[str | bytes] = []
    conn = Connection(hub, MemoryBackend(db), sent.append)
    replies = fuzz.Replies()
    try:
        for frame in frames:
            if isinstance(frame, str):
                await conn.receive_text(frame)
            else:
                await conn.receive_bytes(frame)
            for _ in range(5):
                await asyncio.sleep(0)
        for _ in range(50):  # commands, events and store loads finish
            await asyncio.sleep(0)
        await conn.receive_text(ALIVE)
        for _ in range(50):
            if {"id": "alive"} in replies.pings:
                break
            while sent:
                replies.check(sent.pop(0))
            await asyncio.sleep(0)
        assert {"id": "alive"} in replies.pings, "the connection stopped answering"
        assert conn.close_code is None
    finally:
        await conn.close()
        hub.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=fuzz.frames)
def test_no_frame_breaks_a_connection(frames):
    failures = Failures()
    logger = logging.getLogger("myko_django")
    logger.addHandler(failures)
    try:
        asyncio.run(_serve(frames))
    finally:
        logger.removeHandler(failures)
    unexpected = [r.getMessage() for r in failures.records if r.msg in UNEXPECTED]
    assert unexpected == []
