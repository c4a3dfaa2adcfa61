"""The test suite's one WebSocket client: myko envelopes in JSON text frames or MessagePack /
CBOR binary frames, over one of three transports:

- `AsgiTransport`: the project's ASGI application in this process (Channels'
  WebsocketCommunicator): tests/asgi.
- `SocketTransport`: a real socket to a server (the websockets library): tests/system.
- `ConnectionTransport`: the per-connection protocol state `server.connection.Connection`
  with its hub and backend injected, no Django, no ASGI (tests/unit).

    c = await WsClient.asgi(asgi_app, "msgpack")          # in-process, no server
    c = await WsClient.socket(worker.url, "json")         # a real daphne
    c = WsClient(ConnectionTransport(hub, backend), "cbor")
    tx, snapshot = await c.subscribe("GetAllTargets", "Target")
    await c.event("SET", "Target", {"id": "t", "name": "a"})
    update = await c.expect("ws:m:query-response")
    await c.close()

In a binary format every message it sends is a binary frame (so the server's first reply
is already binary) and every frame it receives must be binary too; `send_raw` and
`recv_frame` bypass the format for tests of framing itself. Receiving waits `timeout`
seconds (the client's default unless given; None waits for ever) and raises TimeoutError
(`ConnectionTransport`: a number of event-loop turns instead, see there). Frames are
encoded and decoded with json, msgpack and cbor2 directly, not the package's codecs, so
the tests check the server's encoding independently. This is a test tool, not the
product's client (`myko_django.client`), which keeps state. Importing it imports neither
Django nor Channels (the ASGI transport imports Channels when used).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from types import EllipsisType
from typing import Any

import cbor2
import msgpack
import websockets

from myko_django.server.connection import Connection

FORMATS = ("json", "msgpack", "cbor")

MSGPACK_MAP = {bytes([b]) for b in (*range(0x80, 0x90), 0xDE, 0xDF)}
CBOR_MAP = {bytes([b]) for b in range(0xA0, 0xC0)}

# Seconds to wait; None waits for ever, ... (the default) means the client's own timeout.
Timeout = float | None | EllipsisType

_txs = itertools.count(1)


def new_tx(prefix: str = "tx") -> str:
    """A tx no other message of this test run uses."""
    return f"{prefix}-{next(_txs)}"


class AsgiTransport:
    """Frames to and from an ASGI application in this process (no server, no socket)."""

    def __init__(self, app: Any, path: str = "/myko", headers: list | None = None) -> None:
        from channels.testing import WebsocketCommunicator  # imports Django

        self.comm = WebsocketCommunicator(app, path, headers=headers)
        self.close_code: int | None = None

    async def connect(self) -> bool:
        """The handshake; False if the application refused it."""
        connected, _ = await self.comm.connect()
        return connected

    async def send(self, frame: str | bytes) -> None:
        key = "text" if isinstance(frame, str) else "bytes"
        await self.comm.send_input({"type": "websocket.receive", key: frame})

    async def recv(self, timeout: float | None) -> str | bytes:
        """The next frame; raises at once if the application crashed meanwhile."""
        app = self.comm.future
        get = asyncio.ensure_future(self.comm.output_queue.get())
        await asyncio.wait({get, app}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            if app.done():
                app.result()  # the application's exception
                raise AssertionError("the application ended without closing the socket")
            raise TimeoutError(f"no message within {timeout} s")
        out = get.result()
        assert out["type"] == "websocket.send", out
        frame = out.get("text")
        return out["bytes"] if frame is None else frame

    async def wait_closed(self, timeout: float | None) -> int | None:
        out = await self.comm.receive_output(timeout)
        assert out["type"] == "websocket.close", out
        await self.comm.wait(timeout)
        self.close_code = out.get("code")
        return self.close_code

    async def close(self) -> None:
        if self.comm.future.done():
            # The application already ended: a crash the test has seen (every receive
            # re-raises it) or our own receive timeout, which cancels it.
            return
        await self.comm.disconnect()


class SocketTransport:
    """Frames over a real WebSocket (websockets' asyncio client)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.ws: Any = None

    async def connect(self) -> bool:
        self.ws = await websockets.connect(self.url, **self.options)
        return True

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float | None) -> str | bytes:
        """The next frame; websockets.ConnectionClosed once the server has closed."""
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no message within {timeout} s") from None

    async def wait_closed(self, timeout: float | None) -> int | None:
        try:
            frame = await self.recv(timeout)
        except websockets.ConnectionClosed:
            return self.ws.close_code
        raise AssertionError(f"expected the close, got {frame!r:.200}")

    async def close(self) -> None:
        await self.ws.close()


class ConnectionTransport:
    """Frames to and from one `myko_django.server.connection.Connection` (the protocol state
    of one connection, its hub and backend injected), as the ASGI endpoint would pass them.

    Everything it will send in answer comes within a few turns of the event loop (the hub
    and backend test doubles do not sleep), so receiving waits up to `turns` loop turns,
    not seconds: a test that expects nothing does not have to wait.
    """

    def __init__(self, hub: Any, backend: Any, *, turns: int = 200, **options: Any) -> None:
        self.frames: list[str | bytes] = []
        self.turns = turns
        self.conn = Connection(hub, backend, self.frames.append, **options)
        self.close_code: int | None = None

    async def connect(self) -> bool:
        return True

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            await self.conn.receive_text(frame)
        else:
            await self.conn.receive_bytes(frame)

    async def recv(self, timeout: float | None) -> str | bytes:
        for _ in range(self.turns):
            if self.frames:
                return self.frames.pop(0)
            await asyncio.sleep(0)
        raise TimeoutError(f"no message within {self.turns} loop turns")

    async def wait_closed(self, timeout: float | None) -> int | None:
        raise NotImplementedError("a Connection is closed by its endpoint, not by itself")

    async def close(self) -> None:
        await self.conn.close()


class WsClient:
    """One connection speaking the myko protocol in one format (see the module docstring)."""

    def __init__(
        self,
        transport: AsgiTransport | SocketTransport | ConnectionTransport,
        fmt: str = "json",
        timeout: float = 5,
    ) -> None:
        assert fmt in FORMATS, fmt
        self.transport = transport
        self.fmt = fmt
        self.timeout = timeout

    @classmethod
    async def asgi(
        cls, app: Any, fmt: str = "json", path: str = "/myko", headers: list | None = None
    ) -> WsClient:
        """A connection to `app` in this process; the handshake must be accepted."""
        transport = AsgiTransport(app, path, headers)
        assert await transport.connect(), f"handshake refused: {path} {headers}"
        return cls(transport, fmt)

    @classmethod
    async def socket(
        cls, url: str, fmt: str = "json", *, timeout: float = 10, **options: Any
    ) -> WsClient:
        """A connection to a real server; `options` go to `websockets.connect`."""
        transport = SocketTransport(url, **options)
        await transport.connect()
        return cls(transport, fmt, timeout)

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def close_code(self) -> int | None:
        """The close code once the connection closed, else None."""
        return self.transport.close_code

    # ---- frames and messages -----------------------------------------------------------

    def encode(self, message: Any) -> str | bytes:
        if self.fmt == "json":
            return json.dumps(message)
        if self.fmt == "msgpack":
            return msgpack.packb(message, use_bin_type=True)
        return cbor2.dumps(message)

    def decode(self, frame: str | bytes) -> Any:
        """A received frame in this client's format: JSON needs a text frame, MessagePack
        and CBOR a binary one."""
        if self.fmt == "json":
            assert isinstance(frame, str), f"expected a text frame, got {frame!r:.200}"
            return json.loads(frame)
        assert isinstance(frame, bytes), f"expected a binary frame, got {frame!r:.200}"
        # Every envelope is a map: its first byte tells MessagePack from CBOR.
        if self.fmt == "msgpack":
            assert frame[:1] in MSGPACK_MAP, f"expected a MessagePack map, got {frame!r:.200}"
            return msgpack.unpackb(frame, raw=False)
        assert frame[:1] in CBOR_MAP, f"expected a CBOR map, got {frame!r:.200}"
        return cbor2.loads(frame)

    async def send_raw(self, frame: str | bytes) -> None:
        """One frame exactly as given: text for str, binary for bytes."""
        await self.transport.send(frame)

    async def send_message(self, message: Any) -> None:
        await self.send_raw(self.encode(message))

    async def send(self, event: str, data: Any) -> None:
        await self.send_message({"event": event, "data": data})

    async def recv_frame(self, timeout: Timeout = ...) -> str | bytes:
        """The next frame as received: str for a text frame, bytes for a binary one."""
        return await self.transport.recv(self.timeout if timeout is ... else timeout)

    async def recv(self, timeout: Timeout = ...) -> Any:
        """The next message, decoded in this client's format."""
        return self.decode(await self.recv_frame(timeout))

    async def expect(self, event: str, timeout: Timeout = ...) -> Any:
        """The next message, which must be `event`; returns its data."""
        message = await self.recv(timeout)
        assert message["event"] == event, message
        return message["data"]

    async def nothing(self, timeout: float = 0.2) -> None:
        """No message arrives within `timeout`."""
        try:
            frame = await self.recv_frame(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {frame!r:.300}")

    async def drain(self, timeout: Timeout = 0.2) -> list[Any]:
        """Every message that arrives until none comes within `timeout`, decoded."""
        messages = []
        while True:
            try:
                messages.append(await self.recv(timeout))
            except TimeoutError:
                return messages

    async def wait_closed(self, timeout: Timeout = ...) -> int | None:
        """The server closes the connection next (no message before); returns its code."""
        return await self.transport.wait_closed(self.timeout if timeout is ... else timeout)

    async def close(self) -> None:
        await self.transport.close()

    # ---- protocol shortcuts ----------------------------------------------------------

    async def query(
        self,
        query_id: str,
        item_type: str | None,
        params: dict | None = None,
        *,
        tx: str | None = None,
        window: Any = ...,
        event: str = "ws:m:query",
    ) -> str:
        """Send a query (or with event="ws:m:view" a view); returns its tx."""
        tx = tx or new_tx("q")
        key = "view" if event == "ws:m:view" else "query"
        data: dict[str, Any] = {
            key: {**(params or {}), "tx": tx},
            f"{key}Id": query_id,
            f"{key}ItemType": item_type,
        }
        if window is not ...:
            data["window"] = window
        await self.send(event, data)
        return tx

    async def subscribe(self, query_id: str, item_type: str, params=None, **kw) -> tuple:
        """Subscribe (a query, or a view with event="ws:m:view") and return (tx, its
        sequence-0 response)."""
        tx = await self.query(query_id, item_type, params, **kw)
        data = await self.expect(kw.get("event", "ws:m:query") + "-response")
        assert data["tx"] == tx and data["sequence"] == 0
        return tx, data

    async def report(self, report_id: str, params: dict | None = None, *, tx=None) -> str:
        tx = tx or new_tx("r")
        await self.send(
            "ws:m:report", {"report": {**(params or {}), "tx": tx}, "reportId": report_id}
        )
        return tx

    async def command(self, command_id: str, params: dict | None = None, *, tx=None) -> str:
        tx = tx or new_tx("c")
        await self.send(
            "ws:m:command", {"command": {**(params or {}), "tx": tx}, "commandId": command_id}
        )
        return tx

    async def event(self, change_type: str, item_type: str, item: dict, **extra) -> None:
        await self.send(
            "ws:m:event", {"changeType": change_type, "itemType": item_type, "item": item, **extra}
        )

    async def barrier(self) -> None:
        """Wait until the events sent before are applied: commands and events run in
        arrival order, and a command's response comes after the updates it follows."""
        tx = await self.command("DeleteTargets", {"ids": []})
        assert await self.expect("ws:m:command-response") == {
            "response": {"deletedCount": 0},
            "tx": tx,
        }

    async def ping(self, ping_id: str = "p") -> None:
        """Send a ping and require the echo as the very next message."""
        data = {"id": ping_id, "timestamp": 1700000000000}
        await self.send("ws:m:ping", data)
        assert await self.recv() == {"event": "ws:m:ping", "data": data}
