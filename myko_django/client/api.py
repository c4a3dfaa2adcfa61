"""An asyncio client for the myko protocol (docs/protocol.md) on `websockets`: live queries and
reports, commands, events and pings over one WebSocket that reconnects by itself.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from myko_django.wire import codecs as wire
from myko_django.wire import envelope as ev
from myko_django.wire.envelope import RESERVED_KEYS, parse_window

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 16 * 1024 * 1024  # the server's default MAX_MESSAGE_SIZE


class MykoError(Exception):
    """Base of the errors this client raises."""


class CommandFailed(MykoError):
    """The server answered a command with `ws:m:command-error`."""

    def __init__(self, message: str, *, command_id: str | None = None, tx: str | None = None):
        super().__init__(message)
        self.message, self.command_id, self.tx = message, command_id, tx


class QueryFailed(MykoError):
    """The server answered a query (or a window update) with `ws:m:query-error`."""

    def __init__(self, message: str, *, query_id: str | None = None, tx: str | None = None):
        super().__init__(message)
        self.message, self.query_id, self.tx = message, query_id, tx


class ReportFailed(MykoError):
    """The server answered a report with `ws:m:report-error`."""

    def __init__(self, message: str, *, report_id: str | None = None, tx: str | None = None):
        super().__init__(message)
        self.message, self.report_id, self.tx = message, report_id, tx


class ClientClosed(MykoError):
    """The client was closed by its user while this operation waited."""


class ConnectionLost(MykoError, ConnectionError):
    """The socket dropped and the client does not reconnect (or a ping was in flight)."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(params or {})
    reserved = sorted(key for key in RESERVED_KEYS if key in params)
    if reserved:
        raise ValueError(f"{', '.join(reserved)} is reserved by the protocol, not a parameter")
    return params


class _Outgoing:
    """One queued frame. On reconnect, unsent events (`keep`) and unsent commands that
    still wait (`command_tx`) stay queued in order; the rest is regenerated or moot."""

    __slots__ = ("command_tx", "frame", "keep", "sent")

    def __init__(
        self,
        frame: str | bytes,
        keep: bool = False,
        sent: asyncio.Future | None = None,
        command_tx: str | None = None,
    ) -> None:
        self.frame, self.keep, self.sent, self.command_tx = frame, keep, sent, command_tx

    def resolve(self, exc: BaseException | None = None) -> None:
        if self.sent is not None and not self.sent.done():
            if exc is None:
                self.sent.set_result(None)
            else:
                self.sent.set_exception(exc)


class _Subscription:
    """What queries and reports share: a tx, a version counter that the reader bumps on
    every response, and an event swapped on each bump so any number of waiters wake."""

    kind = ""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.tx = str(uuid.uuid4())
        self.error: MykoError | None = None
        self._ended = False  # cancelled or client closed: iteration stops
        self._received = False  # the first response arrived
        self._version = 0
        self._changed = asyncio.Event()

    def _message(self) -> dict:
        raise NotImplementedError

    def _snapshot(self) -> Any:
        raise NotImplementedError

    def _notify(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _fail(self, error: MykoError) -> None:
        self.error = error
        self._notify()

    def _end(self) -> None:
        self._ended = True
        self._notify()

    async def _wait(self, done: Callable[[], bool]) -> None:
        while not done() and self.error is None and not self._ended:
            await self._changed.wait()

    async def _ready(self) -> None:
        await self._wait(lambda: self._received)
        if self.error is not None:
            raise self.error
        if not self._received:
            error = self._client._closed or MykoError(f"{self.kind} {self.tx} was cancelled")
            raise error

    def _news_since(self, seen: int) -> bool:
        return self._received and self._version != seen

    async def __aiter__(self) -> AsyncIterator[Any]:
        """The current result once it is there, then again after each change. A slow
        consumer skips intermediate states, never the latest one."""
        seen = 0
        while True:
            await self._wait(functools.partial(self._news_since, seen))
            if self.error is not None:
                raise self.error
            if self._ended:
                return
            seen = self._version
            yield self._snapshot()

    async def cancel(self) -> None:
        """Stop the subscription here and on the server; iterators finish."""
        if self._ended:
            return
        self._client._subs.pop(self.tx, None)
        self._end()
        if self._client._closed is None:  # a closed socket already dropped it
            self._client._enqueue({"event": f"ws:m:{self.kind}-cancel", "data": {"tx": self.tx}})


class Query(_Subscription):
    """A live query: `.items` is the current result by id, kept by applying each response."""

    kind = "query"

    def __init__(
        self,
        client: Client,
        query_id: str,
        item_type: str,
        params: Mapping[str, Any] | None,
        window: Mapping[str, int] | None,
        history: int | None,
    ) -> None:
        super().__init__(client)
        self.query_id, self.item_type = query_id, item_type
        self.params = _check_params(params)
        parse_window(window)
        self.window = dict(window) if window is not None else None
        self.items: dict[str, dict] = {}
        self.responses: collections.deque[dict] = collections.deque(maxlen=history)
        self.total_count: int | None = None
        self.sequence: int | None = None  # last applied, per connection
        self.order: list[str] | None = None  # page ids in order, for a windowed query

    def __repr__(self) -> str:
        return f"<Query {self.query_id} {self.item_type} tx={self.tx} items={len(self.items)}>"

    def _message(self) -> dict:
        data: dict[str, Any] = {
            "query": {**self.params, "tx": self.tx, "createdAt": _now()},
            "queryId": self.query_id,
            "queryItemType": self.item_type,
        }
        if self.window is not None:
            data["window"] = self.window
        return {"event": ev.QUERY, "data": data}

    def _snapshot(self) -> dict[str, dict]:
        return dict(self.items)

    def _apply(self, data: dict) -> None:
        self.responses.append(data)
        sequence = data.get("sequence")
        if sequence == 0:
            self.items = {}
        elif self.sequence is None or sequence != self.sequence + 1:
            logger.warning(
                "myko: query %s (%s): sequence %r after %r",
                self.tx,
                self.query_id,
                sequence,
                self.sequence,
            )
        self.sequence = sequence
        for item_id in data.get("deletes") or ():
            self.items.pop(item_id, None)
        for upsert in data.get("upserts") or ():
            item = upsert["item"]
            self.items[str(item["id"])] = item
        if data.get("window") is None:
            self.order = None
        for change in data.get("changes") or ():
            if isinstance(change, dict) and change.get("kind") == "windowOrder":
                self.order = list(change.get("ids") or [])
                ordered = {i: self.items[i] for i in self.order if i in self.items}
                ordered.update(self.items)
                self.items = ordered
        if "totalCount" in data:
            self.total_count = data["totalCount"]
        if data.get("more"):
            return  # a part of a split response: ready and notified after its last part
        self._received = True
        self._notify()

    async def ready(self) -> dict[str, dict]:
        """Wait for the first complete result (sequence 0); raises QueryFailed."""
        await self._ready()
        return self._snapshot()

    async def set_window(self, window: Mapping[str, int] | None) -> None:
        """Move (or with None remove) the window; reconnects re-subscribe with it."""
        parse_window(window)
        if self.error is not None or self._ended:
            raise self.error or MykoError(f"query {self.tx} was cancelled")
        self.window = dict(window) if window is not None else None
        self._client._enqueue(
            {"event": ev.QUERY_WINDOW, "data": {"tx": self.tx, "window": self.window}}
        )


class Report(_Subscription):
    """A live report: `.value` is its latest value."""

    kind = "report"

    def __init__(self, client: Client, report_id: str, params: Mapping[str, Any] | None) -> None:
        super().__init__(client)
        self.report_id = report_id
        self.params = _check_params(params)
        self.value: Any = None

    def __repr__(self) -> str:
        return f"<Report {self.report_id} tx={self.tx} value={self.value!r:.60}>"

    def _message(self) -> dict:
        report = {**self.params, "tx": self.tx}
        return {"event": ev.REPORT, "data": {"report": report, "reportId": self.report_id}}

    def _snapshot(self) -> Any:
        return self.value

    def _apply(self, data: dict) -> None:
        self.value = data.get("response")
        self._received = True
        self._notify()

    async def ready(self) -> Any:
        """Wait for the first value; raises ReportFailed."""
        await self._ready()
        return self.value


class _PendingCommand:
    __slots__ = ("command_id", "future", "message")

    def __init__(self, command_id: str, message: dict, future: asyncio.Future) -> None:
        self.command_id, self.message, self.future = command_id, message, future


class Client:
    """One logical connection to a myko server; make it with `connect()`.

    A background task reads and dispatches every frame, so a slow consumer never makes
    the client drop a message; one writer task sends queued frames in call order.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        protocol: str = wire.MSGPACK,
        *,
        max_size: int | None = DEFAULT_MAX_SIZE,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.1, 5.0),
        on_event_error: Callable[[dict], Any] | None = None,
        token: str | None = None,
        **options: Any,
    ) -> None:
        if protocol not in (wire.JSON, wire.MSGPACK, wire.CBOR):
            raise ValueError(f"protocol must be 'json', 'msgpack' or 'cbor', not {protocol!r}")
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("connect() needs at least one URL")
        self._url_index = 0
        self.protocol = protocol
        self.reconnect, self.backoff = reconnect, backoff
        self.on_event_error = on_event_error
        self.event_errors: list[dict] = []
        self.reconnects = 0  # successful reconnects so far
        self._options = {**options, "max_size": max_size}
        # Sent as `Authorization: Bearer <token>` on every (re)connect; set it to a fresh
        # token before the old one expires and the next reconnect uses that.
        self.token = token
        self._ws: ClientConnection | None = None
        self._subs: dict[str, Query | Report] = {}
        self._commands: dict[str, _PendingCommand] = {}
        self._pings: dict[str, tuple[float, asyncio.Future]] = {}
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._connected = asyncio.Event()
        self._state = asyncio.Event()  # swapped on every connect, loss and close
        self._closing = False  # the user called close()
        self._closed: MykoError | None = None  # set once the client is done for good
        self._runner: asyncio.Task | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "reconnecting"
        return f"<myko Client {self.url} {self.protocol} {state}>"

    @property
    def url(self) -> str:
        """The server this client talks to now (reconnects go round the URLs it was given)."""
        return self.urls[self._url_index]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _connect_options(self) -> dict[str, Any]:
        """websockets' options for the next connection: the token as a bearer header."""
        if self.token is None:
            return self._options
        headers = Headers(self._options.get("additional_headers") or ())
        if "Authorization" in headers:
            del headers["Authorization"]
        headers["Authorization"] = f"Bearer {self.token}"
        return {**self._options, "additional_headers": headers}

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> Client:
        """Connect once (errors propagate: a wrong URL fails fast) and start the tasks."""
        if self._runner is not None:
            raise RuntimeError("client already opened")
        ws = await ws_connect(self.url, **self._connect_options())
        self._set_state(True)
        self._runner = asyncio.get_running_loop().create_task(self._run(ws))
        return self

    async def close(self) -> None:
        """Close for good: no reconnect; waiting commands, pings and readies raise
        ClientClosed, subscription iterators finish."""
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        self._finish(ClientClosed("client closed"))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _set_state(self, connected: bool) -> None:
        if connected:
            self._connected.set()
        else:
            self._connected.clear()
        self._state.set()
        self._state = asyncio.Event()

    async def _until_connected(self) -> None:
        while not self.connected:
            if self._closed is not None:
                raise self._closed
            await self._state.wait()

    def _finish(self, error: MykoError) -> None:
        """Done for good: fail everything waiting. Subscriptions end quietly when the
        user closed the client, and raise `error` when the connection was lost."""
        if self._closed is not None:
            return
        self._closed = error
        self._set_state(False)
        for pending in self._commands.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._commands.clear()
        self._fail_pings(error)
        for sub in self._subs.values():
            if isinstance(error, ClientClosed):
                sub._end()
            else:
                sub._fail(error)
        self._subs.clear()
        while self._outbox:
            self._outbox.popleft().resolve(error)

    def _fail_pings(self, error: MykoError) -> None:
        for _, future in self._pings.values():
            if not future.done():
                future.set_exception(error)
        self._pings.clear()

    # ---- the connection loop ------------------------------------------------------------

    async def _run(self, ws: ClientConnection | None) -> None:
        try:
            while ws is not None:
                await self._serve(ws)
                ws = None
                if self._closing:
                    return
                if not self.reconnect:
                    self._finish(ConnectionLost(f"connection to {self.url} lost"))
                    return
                self._fail_pings(ConnectionLost("connection lost during ping"))
                ws = await self._reconnect()
                self.reconnects += 1
                self._replay()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("myko: client for %s stopped", self.url)
            self._finish(ConnectionLost(f"client stopped: {exc}"))
        finally:
            if ws is not None:
                await ws.close()

    async def _serve(self, ws: ClientConnection) -> None:
        """One connection's life: a writer task and this reader, until the socket closes."""
        self._set_state(True)
        writer = asyncio.get_running_loop().create_task(self._write(ws))
        try:
            await self._read(ws)
        finally:
            self._set_state(False)
            writer.cancel()
            await ws.close()
        logger.warning("myko: connection to %s lost (code %s)", self.url, ws.close_code)

    async def _reconnect(self) -> ClientConnection:
        initial, maximum = self.backoff
        delay = initial
        while True:
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter spreads a herd
            self._url_index = (self._url_index + 1) % len(self.urls)  # another worker first
            try:
                ws = await ws_connect(self.url, **self._connect_options())
            except Exception as exc:  # refused, timed out, 5xx while the server restarts...
                logger.info("myko: reconnect to %s failed: %s", self.url, exc)
                delay = min(delay * 2, maximum)
                continue
            logger.info("myko: reconnected to %s", self.url)
            return ws

    def _replay(self) -> None:
        """The new connection has none of our state. First the subscriptions (same tx, so
        a fresh sequence 0 replaces ours), then commands sent but not answered (same tx:
        the server's idempotency makes a re-run safe), then what was still queued, in call
        order (so an event and a command that needs it stay in that order)."""
        kept, queued = [], set()
        for entry in self._outbox:
            if entry.keep or entry.command_tx in self._commands:
                kept.append(entry)
                queued.add(entry.command_tx)
            else:
                entry.resolve()  # a subscribe, window, cancel or ping: regenerated or moot
        replay = [sub._message() for sub in self._subs.values()]
        replay += [p.message for tx, p in self._commands.items() if tx not in queued]
        self._outbox = collections.deque([_Outgoing(self._encode(m)) for m in replay] + kept)
        if self._outbox:
            self._outbox_ready.set()

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            entry = self._outbox[0]
            try:
                await ws.send(entry.frame)
            except ConnectionClosed:
                return  # the entry stays queued; the reader sees the close and reconnects
            if self._outbox and self._outbox[0] is entry:
                self._outbox.popleft()
            entry.resolve()

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                return
            try:
                if isinstance(frame, str):
                    message = wire.decode_text(frame)
                else:
                    message = wire.decode_binary(frame, self._binary_format(frame))
                self._dispatch(message)
            except Exception:
                logger.exception("myko: could not handle a frame from %s", self.url)

    def _binary_format(self, frame: bytes) -> str:
        return self.protocol if self.protocol != wire.JSON else wire.detect_binary(frame)

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("data"), dict | list):
            logger.warning("myko: ignored a message that is not an envelope: %r", message)
            return
        event, data = message.get("event"), message["data"]
        tx = data.get("tx") if isinstance(data, dict) else None
        if event in (ev.QUERY_RESPONSE, ev.REPORT_RESPONSE):
            sub = self._subs.get(tx)
            kind = "query" if event == ev.QUERY_RESPONSE else "report"
            if sub is not None and sub.kind == kind:
                sub._apply(data)
        elif event in (ev.QUERY_ERROR, ev.REPORT_ERROR):
            self._subscription_error(event, data)
        elif event in (ev.COMMAND_RESPONSE, ev.COMMAND_ERROR):
            pending = self._commands.pop(tx, None)
            if pending is None or pending.future.done():
                return  # a replayed command answered twice, or its caller gave up
            if event == ev.COMMAND_RESPONSE:
                pending.future.set_result(data.get("response"))
            else:
                message = data.get("message") or "command failed"
                error = CommandFailed(message, command_id=data.get("commandId"), tx=tx)
                pending.future.set_exception(error)
        elif event == ev.EVENT_ERROR:
            self.event_errors.append(data)
            logger.info("myko: event rejected: %s", data.get("message"))
            if self.on_event_error is not None:
                try:
                    self.on_event_error(data)
                except Exception:
                    logger.exception("myko: on_event_error callback failed")
        elif event == ev.PING:
            started, future = self._pings.pop(data.get("id"), (0.0, None))
            if future is not None and not future.done():
                future.set_result(asyncio.get_running_loop().time() - started)
        elif event != ev.PROTOCOL_SWITCH:
            logger.debug("myko: ignored %s", event)

    def _subscription_error(self, event: str, data: dict) -> None:
        tx = data.get("tx")
        sub = self._subs.pop(tx, None)
        if sub is None:
            return
        message = data.get("message") or f"{sub.kind} failed"
        if isinstance(sub, Query):
            sub._fail(QueryFailed(message, query_id=data.get("queryId"), tx=tx))
        else:
            sub._fail(ReportFailed(message, report_id=data.get("reportId"), tx=tx))
        # After an error (a bad window leaves it alive) make sure the server forgets it too.
        self._enqueue({"event": f"ws:m:{sub.kind}-cancel", "data": {"tx": tx}})

    # ---- sending ------------------------------------------------------------------------

    def _encode(self, message: dict) -> str | bytes:
        return wire.encode(message, self.protocol)

    def _enqueue(
        self,
        message: dict,
        *,
        keep: bool = False,
        sent: asyncio.Future | None = None,
        command_tx: str | None = None,
    ) -> None:
        if self._closed is not None:
            raise self._closed
        self._outbox.append(_Outgoing(self._encode(message), keep, sent, command_tx))
        self._outbox_ready.set()

    async def _send(self, message: dict, *, keep: bool = False) -> None:
        """Queue a frame and wait until it is handed to the socket."""
        sent = asyncio.get_running_loop().create_future()
        self._enqueue(message, keep=keep, sent=sent)
        await sent

    # ---- the API ----------------------------------------------------------------------------

    async def command(
        self,
        command_id: str,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        tx: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a command and return its response; raises CommandFailed. Survives a
        reconnect: it is re-sent with the same tx until answered."""
        tx = tx or str(uuid.uuid4())
        if tx in self._commands:
            raise ValueError(f"a command with tx {tx!r} is already waiting")
        request = {**_check_params({**(params or {}), **kwargs}), "tx": tx, "createdAt": _now()}
        message = {"event": ev.COMMAND, "data": {"command": request, "commandId": command_id}}
        future = asyncio.get_running_loop().create_future()
        self._enqueue(message, command_tx=tx)
        self._commands[tx] = _PendingCommand(command_id, message, future)
        try:
            return await future
        finally:
            self._commands.pop(tx, None)

    def query(
        self,
        query_id: str,
        item_type: str,
        params: Mapping[str, Any] | None = None,
        window: Mapping[str, int] | None = None,
        *,
        history: int | None = 1000,
    ) -> Query:
        """Subscribe to a live query; `history` bounds `.responses` (None keeps all)."""
        sub = Query(self, query_id, item_type, params, window, history)
        self._subscribe(sub)
        return sub

    def report(self, report_id: str, params: Mapping[str, Any] | None = None) -> Report:
        """Subscribe to a live report."""
        sub = Report(self, report_id, params)
        self._subscribe(sub)
        return sub

    def _subscribe(self, sub: Query | Report) -> None:
        self._enqueue(sub._message())
        self._subs[sub.tx] = sub

    async def send_event(
        self,
        item_type: str,
        item: Mapping[str, Any],
        change_type: str = "SET",
        *,
        tx: str | None = None,
    ) -> str:
        """Publish one SET/DEL event; returns its tx, which a rejection in
        `event_errors` carries. Not acknowledged by the protocol: use commands for
        writes that must be confirmed."""
        tx = tx or str(uuid.uuid4())
        event = {
            "item": dict(item),
            "changeType": change_type,
            "itemType": item_type,
            "createdAt": _now(),
            "tx": tx,
        }
        await self._send({"event": ev.EVENT, "data": event}, keep=True)
        return tx

    async def send_events(self, events: list[Mapping[str, Any]]) -> None:
        """Publish MEvent dicts as one `ws:m:event-batch` (the valid ones commit together)."""
        await self._send({"event": ev.EVENT_BATCH, "data": [dict(e) for e in events]}, keep=True)

    async def ping(self) -> float:
        """Round trip to the server in seconds, measured with `ws:m:ping`."""
        await self._until_connected()
        loop = asyncio.get_running_loop()
        ping_id = str(uuid.uuid4())
        future = loop.create_future()
        self._pings[ping_id] = (loop.time(), future)
        timestamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        try:
            self._enqueue({"event": ev.PING, "data": {"id": ping_id, "timestamp": timestamp}})
            return await future
        finally:
            self._pings.pop(ping_id, None)


class Connecting:
    """What `connect()` returns: await it for a Client, or use it with `async with`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._client.open().__await__()

    async def __aenter__(self) -> Client:
        return await self._client.open()

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


def connect(
    url: str | Sequence[str],
    protocol: str = wire.MSGPACK,
    *,
    max_size: int | None = DEFAULT_MAX_SIZE,
    reconnect: bool = True,
    backoff: tuple[float, float] = (0.1, 5.0),
    on_event_error: Callable[[dict], Any] | None = None,
    token: str | None = None,
    **options: Any,
) -> Connecting:
    """Connect to a myko server: `client = await connect(url)` or
    `async with connect(url) as client`. With several URLs (workers of one deployment),
    reconnects try the next one. `token` (from `manage.py myko_token` or
    `myko_django.auth.issue_token`) is sent as `Authorization: Bearer <token>` on the first
    connection and every reconnect (`client.token` may be replaced meanwhile). Extra
    options go to websockets' `connect`."""
    return Connecting(
        Client(
            url,
            protocol,
            max_size=max_size,
            reconnect=reconnect,
            backoff=backoff,
            on_event_error=on_event_error,
            token=token,
            **options,
        )
    )
