"""The ASGI WebSocket endpoint for /myko: translates socket events to a protocol Session.

A bare ASGI app rather than a Channels consumer: it never joins the channel layer (only
the hub does) and skips the per-message thread hop of `AsyncConsumer.dispatch`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from . import conf
from .protocol import Session
from .runtime import get_runtime

logger = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009


class MykoConsumer:
    """One instance per connection (`MykoConsumer.as_asgi()` in the router)."""

    @classmethod
    def as_asgi(cls):
        async def app(scope: dict, receive: Any, send: Any) -> None:
            await cls().__call__(scope, receive, send)

        return app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        runtime = await get_runtime()
        outbox: asyncio.Queue = asyncio.Queue()
        session = Session(
            runtime,
            outbox.put_nowait,
            user=scope.get("user"),
            address=tuple(scope.get("server") or ("", 0)),
        )
        await send({"type": "websocket.accept"})
        writer = asyncio.create_task(self._write(outbox, send))
        limit = conf.get("MAX_MESSAGE_SIZE")
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    break
                if kind != "websocket.receive":
                    continue
                text, data = message.get("text"), message.get("bytes")
                size = _size(text, data)
                if size > limit:
                    logger.warning(
                        "myko: connection %s sent %d bytes (limit %d): closing",
                        session.id,
                        size,
                        limit,
                    )
                    await send({"type": "websocket.close", "code": CLOSE_TOO_BIG})
                    break
                if text is not None:
                    await session.receive_text(text)
                elif data is not None:
                    await session.receive_bytes(data)
        finally:
            await session.close()
            writer.cancel()

    @staticmethod
    async def _write(outbox: asyncio.Queue, send: Any) -> None:
        while True:
            frame = await outbox.get()
            key = "text" if isinstance(frame, str) else "bytes"
            try:
                await send({"type": "websocket.send", key: frame})
            except Exception:  # one unsendable frame must not silence the connection
                logger.exception("myko: sending a %d-byte frame failed", len(frame))


def _size(text: str | None, data: bytes | None) -> int:
    """Bytes on the wire; a text frame's characters are up to 4 bytes each in UTF-8."""
    if data is not None:
        return len(data)
    if text is None:
        return 0
    return len(text.encode("utf-8", "surrogatepass")) if not text.isascii() else len(text)


class OriginValidator:
    """PROTOCOL.md §1: no Origin header passes (non-browser clients); an Origin must match
    ALLOWED_HOSTS. Channels' AllowedHostsOriginValidator would refuse the former."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        origin = dict(scope.get("headers") or []).get(b"origin")
        if origin is not None and not self.allowed(origin.decode("latin1")):
            logger.warning("myko: refused a WebSocket from origin %r", origin)
            await receive()  # the connect event
            return await send({"type": "websocket.close", "code": 403})
        return await self.app(scope, receive, send)

    @staticmethod
    def allowed(origin: str) -> bool:
        host = urlsplit(origin).netloc
        if not host:
            return False
        domain, _port = split_domain_port(host)
        hosts = settings.ALLOWED_HOSTS or (
            ["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else []
        )
        return bool(domain) and validate_host(domain, hosts)
