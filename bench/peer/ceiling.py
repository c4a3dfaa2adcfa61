"""The ceiling: a bare ASGI WebSocket app that pushes one pre-encoded frame to every
connected socket from inside the process, with no layer, no database and no per-socket
state. Whatever a fan-out server does on top of this costs delivered messages/s.

Subscribers connect to /ceiling?fmt=json (or msgpack); the writer connects to
/ceiling?role=writer&fmt=... and sends one item per trigger as a JSON text frame. Each
trigger becomes one `ws:m:query-response`-shaped frame, encoded once and sent to all.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import msgpack

_subscribers: dict[int, Any] = {}


def _frame(item: dict, sequence: int, fmt: str) -> dict:
    message = {
        "event": "ws:m:query-response",
        "data": {
            "tx": "ceiling",
            "sequence": sequence,
            "deletes": [],
            "totalCount": 1,
            "upserts": [{"item": item, "itemType": "Target"}],
        },
    }
    if fmt == "msgpack":
        return {"type": "websocket.send", "bytes": msgpack.packb(message)}
    return {"type": "websocket.send", "text": json.dumps(message, separators=(",", ":"))}


async def ceiling_app(scope: dict, receive: Any, send: Any) -> None:
    """One connection: a subscriber waits; the writer's every frame is broadcast."""
    query = parse_qs(scope.get("query_string", b"").decode())
    writer = query.get("role") == ["writer"]
    fmt = (query.get("fmt") or ["json"])[0]
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    key = id(send)
    if not writer:
        _subscribers[key] = send
    sequence = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            if not writer or message["type"] != "websocket.receive":
                continue
            sequence += 1
            frame = _frame(json.loads(message.get("text") or message["bytes"]), sequence, fmt)
            for subscriber in list(_subscribers.values()):
                await subscriber(frame)
    finally:
        _subscribers.pop(key, None)
