"""Connections to the project's ASGI application in this process (no server, no socket),
in the test's format (`fmt`: JSON and MessagePack)."""

import pytest

from tests.support.wsclient import WsClient


@pytest.fixture
async def client(asgi_app, fmt):
    c = await WsClient.asgi(asgi_app, fmt)
    yield c
    await c.close()


@pytest.fixture
async def connect(asgi_app, fmt):
    """Open more connections (in the test's format unless told), closed at the end."""
    opened: list[WsClient] = []

    async def open_one(f: str | None = None, path: str = "/myko") -> WsClient:
        c = await WsClient.asgi(asgi_app, f or fmt, path)
        opened.append(c)
        return c

    yield open_one
    for c in opened:
        await c.close()
