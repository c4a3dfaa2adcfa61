"""Fuzzing the protocol through the project's real ASGI application (issue 13): a few
hundred hypothesis examples of frames in JSON, MessagePack and CBOR (tests/support/
fuzz.py; the in-memory run with more is tests/unit/test_fuzz_protocol.py), each on a new
connection. The application never crashes, every reply is a well-formed server message,
and the connection answers a ping afterwards."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings

from myko_django.server import hub
from tests.support import fuzz
from tests.support.wsclient import AsgiTransport

pytestmark = [pytest.mark.django_db(transaction=True)]

ALIVE = '{"event":"ws:m:ping","data":{"id":"alive"}}'


async def _serve(app, frames: list[str | bytes]) -> None:
    transport = AsgiTransport(app)
    assert await transport.connect()
    replies = fuzz.Replies()
    try:
        for frame in frames:
            await transport.send(frame)
        await transport.send(ALIVE)
        while {"id": "alive"} not in replies.pings:
            replies.check(await transport.recv(10))
    finally:
        await transport.close()


@pytest.fixture
def loop():
    """One event loop for every example: the worker's hub lives as long as its loop."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(asyncio.sleep(0))
    hub.reset()
    loop.close()


def test_no_frame_breaks_the_asgi_application(asgi_app, loop):
    served: list[int] = []

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(frames=fuzz.frames)
    def serve(frames):
        loop.run_until_complete(asyncio.wait_for(_serve(asgi_app, frames), 30))
        served.append(len(frames))

    serve()
    assert len(served) >= 200
