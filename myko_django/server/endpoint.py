"""The ASGI WebSocket endpoint for /myko: socket events in, a protocol Connection per
socket, frames out; plus the two middlewares it is served with.

A bare ASGI app rather than a Channels consumer: it never joins the channel layer (only
the hub does) and skips the per-message thread hop of `AsyncConsumer.dispatch`.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import sys
import types
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from myko_django import conf
from myko_django.server import authentication, drain, metrics, outgoing
from myko_django.server.backend import DatabaseBackend
from myko_django.server.connection import Connection
from myko_django.server.hub import get_hub

logger = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
CLOSE_SLOW = 1013  # the client reads too slowly (docs/protocol.md, "Slow readers")
_COUNTS = metrics.COUNTS


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
        if not _close_codes_fixed:
            fix_daphne_close_codes()
        hub = await get_hub()
        if drain.draining():
            return await _refuse_while_draining(send)
        identity = await authentication.identify(hub, scope)  # MYKO["AUTHENTICATORS"]
        if drain.draining():
            return await _refuse_while_draining(send)
        outbox = Outbox(send, conf.get("MAX_QUEUED_BYTES"))
        connection = Connection(
            hub,
            DatabaseBackend(hub),
            outbox.put,
            user=identity.user,
            address=tuple(scope.get("server") or ("", 0)),
        )
        await send({"type": "websocket.accept"})
        _COUNTS.connections_opened += 1
        # Frames wait in the Outbox while the socket's buffer is full; too many: 1013.
        watched = outgoing.watch(send, outbox.pause, outbox.resume)
        outbox.on_overflow = lambda: _close_later(send, CLOSE_SLOW)

        async def close_for_restart() -> None:
            await send({"type": "websocket.close", "code": drain.CLOSE_RESTART})

        drain.track(connection, close_for_restart)  # a SIGTERM closes it with 1012
        watcher = authentication.watcher(hub)
        watcher.watch(connection, identity)  # its user is rechecked while it is open
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
                        connection.id,
                        size,
                        limit,
                    )
                    await send({"type": "websocket.close", "code": CLOSE_TOO_BIG})
                    break
                if text is not None:
                    await connection.receive_text(text)
                elif data is not None:
                    await connection.receive_bytes(data)
                if connection.close_code is not None:  # sustained abuse of the limits
                    await send({"type": "websocket.close", "code": connection.close_code})
                    break
        finally:
            drain.forget(connection)
            watcher.forget(connection)
            await connection.close()
            outbox.close()
            if watched:
                outgoing.unwatch(send)


# The close codes of RFC 6455 and IANA's registry that this endpoint closes with.
SERVER_CLOSE_CODES = frozenset({1008, 1009, 1011, 1012, 1013})
_close_codes_fixed = False


def fix_daphne_close_codes() -> bool:
    """Let daphne send the close codes of the protocol (1008, 1009, 1012; docs/protocol.md).

    daphne closes a socket with autobahn's `sendClose`, which takes only 1000 and
    3000-4999 from an application and raises for anything else: no close frame is sent,
    the exception ends the application, and the client sees 1011 or a dropped connection.
    For SERVER_CLOSE_CODES daphne's `serverClose` sends the frame with autobahn's
    `sendCloseFrame` instead, as daphne itself does for 1011.

    And what autobahn refuses before the application sees it (a message over daphne's
    `--websocket-max-message-size`, a text frame that is not UTF-8) it answers by dropping
    the TCP connection (its `failByDrop` option, on by default; the client sees 1006).
    Each socket turns it off in daphne's `onConnect`, so autobahn closes with 1009 or
    1007 and the closing handshake instead, and reads nothing more of the message.

    Done once per process, only where daphne serves (its WebSocket module is loaded); True
    if done. `routing.websocket_application()` calls it when the application is built,
    before daphne accepts a socket. Pinned by tests/system/test_close_codes.py and
    tests/system/test_operations.py."""
    global _close_codes_fixed
    _close_codes_fixed = True
    module = sys.modules.get("daphne.ws_protocol")
    protocol = getattr(module, "WebSocketProtocol", None)
    original = getattr(protocol, "serverClose", None)
    on_connect = getattr(protocol, "onConnect", None)
    if original is None or on_connect is None or getattr(original, "myko_fixed", False):
        return False

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code)
        else:
            original(self, code=code)

    def close_instead_of_drop(self: Any, request: Any) -> Any:
        self.failByDrop = False  # autobahn's own option, read per connection
        return on_connect(self, request)

    server_close.myko_fixed = True  # type: ignore[attr-defined]
    protocol.serverClose = server_close
    protocol.onConnect = close_instead_of_drop
    return True


_closing: set[asyncio.Task] = set()  # close tasks started outside the receive loop


def _close_later(send: Any, code: int) -> None:
    """Close the socket with `code` from a synchronous path (the Outbox's `put`)."""
    task = asyncio.get_running_loop().create_task(send({"type": "websocket.close", "code": code}))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _refuse_while_draining(send: Any) -> None:
    """A handshake while this worker drains: accepted and closed at once with 1012, so the
    client reconnects, to another worker (a refused handshake would look like a 403)."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": drain.CLOSE_RESTART})


def _frame_message(frame: str | bytes) -> dict:
    if isinstance(frame, str):
        return {"type": "websocket.send", "text": frame}
    return {"type": "websocket.send", "bytes": frame}


# Exceptions of ASGI servers for a send to a socket that is closing or closed, by name (the
# server's packages are not imported here): autobahn (daphne), uvicorn, websockets.
_SOCKET_GONE = frozenset(
    {
        "Disconnected",
        "ClientDisconnected",
        "ConnectionClosed",
        "ConnectionClosedOK",
        "ConnectionClosedError",
    }
)


class Outbox:
    """The frames of one connection, sent in order without a task switch per frame.

    A fan-out sends one frame to each of thousands of connections per batch; waking a
    writer task per frame cost more than the frame. daphne's `send` completes without
    suspending (it hands the frame to Twisted), so `put` steps the send coroutine once on
    the spot. Only a send that does suspend (a server applying backpressure) gets a task,
    which finishes it and then sends, in order, whatever was put meanwhile. Nothing keeps
    a frame once it is sent (an idle connection holds no old snapshot).

    Slow readers (docs/protocol.md, "Slow readers"): while the socket's write buffer is
    full (`pause`, told by server/outgoing.py's Backpressure) frames wait here, counted
    in bytes; `resume` sends them. Over `limit` bytes waiting, the frames are dropped, the
    Outbox takes no more and `on_overflow` runs (the endpoint closes with 1013).
    """

    __slots__ = ("send", "queue", "task", "limit", "queued", "paused", "closed", "on_overflow")
    suspended = 0  # sends in this process that did not complete on the spot

    def __init__(self, send: Any, limit: int | None = None) -> None:
        self.send = send
        self.queue: collections.deque[str | bytes] = collections.deque()
        self.task: asyncio.Task | None = None
        self.limit = limit
        self.queued = 0  # bytes of the frames in `queue`
        self.paused = False
        self.closed = False
        self.on_overflow: Any = None

    def put(self, frame: str | bytes) -> None:
        if self.closed:
            return
        counts = _COUNTS  # every frame sent comes through here
        counts.frames_out += 1
        counts.bytes_out += len(frame)
        if self.task is not None or self.paused:
            return self._hold(frame)
        self._send_now(frame)

    def _hold(self, frame: str | bytes) -> None:
        self.queue.append(frame)
        self.queued += len(frame)
        _COUNTS.queued_bytes += len(frame)
        if self.limit is not None and self.queued > self.limit:
            _COUNTS.slow_reader_closes += 1
            logger.warning(
                "myko: a connection's client reads too slowly: %d bytes waiting (limit %d, "
                "MAX_QUEUED_BYTES): closing with %d",
                self.queued,
                self.limit,
                CLOSE_SLOW,
            )
            on_overflow = self.on_overflow
            self.close()
            if on_overflow is not None:
                on_overflow()

    def _next(self) -> str | bytes:
        frame = self.queue.popleft()
        self.queued -= len(frame)
        _COUNTS.queued_bytes -= len(frame)
        return frame

    def pause(self) -> None:
        """The socket's write buffer is full: hold frames here."""
        self.paused = True

    def resume(self) -> None:
        """The socket's write buffer drained: send what waits, until it fills again."""
        self.paused = False
        while self.queue and not self.paused and self.task is None:
            self._send_now(self._next())

    def _send_now(self, frame: str | bytes) -> None:
        sending = self.send(_frame_message(frame))
        if not inspect.iscoroutine(sending):
            # Not a plain coroutine (another awaitable): no stepping by hand, await it.
            self.task = asyncio.get_running_loop().create_task(self._finish(sending, None))
            return
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return
        except Exception as exc:  # one unsendable frame must not silence the connection
            self._failed(exc, len(frame))
            return
        Outbox.suspended += 1
        if Outbox.suspended == 1:
            logger.info("myko: the server's send suspended; such sends finish in a task")
        self.task = asyncio.get_running_loop().create_task(self._finish(sending, waiting_on))

    async def _finish(self, sending: Any, waiting_on: Any) -> None:
        try:
            try:
                if inspect.iscoroutine(sending):
                    await _resume(sending, waiting_on)
                else:
                    await sending
            except Exception as exc:
                self._failed(exc)
            while self.queue and not self.paused:
                message = _frame_message(self._next())
                try:
                    await self.send(message)
                except Exception as exc:
                    self._failed(exc)
                message = None
        finally:
            self.task = None

    def _failed(self, exc: Exception, size: int | None = None) -> None:
        """A send that raised. Sent to a socket that is closing or gone (daphne's autobahn
        raises `Disconnected`, other servers their own `...Disconnected` or
        `ConnectionClosed`): one line, and nothing more is sent on it, instead of a
        traceback per reply. Anything else is a bug: its traceback, and the next frame
        still goes."""
        if type(exc).__name__ in _SOCKET_GONE:
            logger.info("myko: the client's socket is closing; no more frames for it (%s)", exc)
            self.close()
            return
        if size is None:
            logger.exception("myko: sending a frame failed")
        else:
            logger.exception("myko: sending a %d-byte frame failed", size)

    def close(self) -> None:
        self.closed = True
        self.on_overflow = None
        _COUNTS.queued_bytes -= self.queued
        self.queued = 0
        self.queue.clear()
        # Forget the task here: one cancelled before its first step never runs the
        # `finally` of `_finish`, and would then hold every later frame in the queue.
        task, self.task = self.task, None
        if task is not None:
            task.cancel()


@types.coroutine
def _resume(coroutine: Any, waiting_on: Any) -> Any:
    """Finish, in the running Task, a coroutine that was stepped by hand and suspended on
    `waiting_on` (a future, or None: a bare yield to the loop).

    It yields `waiting_on` to the Task exactly as the coroutine would have had a Task stepped
    it, so the Task waits for it the usual way (and takes the future's "blocking" mark
    off: a future left marked cannot be awaited by anyone else while pending). What the
    Task throws in (a cancel, the future's exception) goes on to the coroutine; the rest
    runs by `yield from`. Generators, coroutines and Tasks only, by their public protocol.
    (So the mark stays on for one turn of the loop, until the Task's first step: taking it
    off at once would mean writing asyncio's private `_asyncio_future_blocking`.)
    """
    while True:
        try:
            yield waiting_on
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            return (yield from coroutine)


def _size(text: str | None, data: bytes | None) -> int:
    """Bytes on the wire; a text frame's characters are up to 4 bytes each in UTF-8."""
    if data is not None:
        return len(data)
    if text is None:
        return 0
    return len(text.encode("utf-8", "surrogatepass")) if not text.isascii() else len(text)


class OriginValidator:
    """docs/protocol.md, "Connecting": no Origin header passes (non-browser clients send
    none). An Origin passes when it is the site's own, scheme, host and port, as Django's
    CSRF check judges a POST: the host of the handshake's `Host` header, which must pass
    ALLOWED_HOSTS, and its scheme; or when CSRF_TRUSTED_ORIGINS lists it. Channels'
    AllowedHostsOriginValidator would refuse the no-Origin case, and compares hosts only.

    A browser sets `Origin`, `Host` and never `X-Forwarded-Proto` on a WebSocket handshake
    itself, so the scheme is taken from the scope or that header (a proxy's), as is."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if origin is not None and not self.allowed(origin.decode("latin1"), scope):
            logger.warning("myko: refused a WebSocket from origin %r", origin)
            await receive()  # the connect event
            return await send({"type": "websocket.close", "code": 403})
        return await self.app(scope, receive, send)

    @staticmethod
    def allowed(origin: str, scope: dict | None = None) -> bool:
        """Whether a handshake with this `Origin` (and `scope`) may open a socket."""
        try:
            parts = urlsplit(origin)
            scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return False
        if scheme not in ("http", "https") or not netloc:
            return False
        if _trusted_origin(scheme, netloc):
            return True
        headers = dict((scope or {}).get("headers") or [])
        host = headers.get(b"host", b"").decode("latin1").lower()
        domain, _port = split_domain_port(host)
        hosts = settings.ALLOWED_HOSTS or (
            ["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else []
        )
        if not domain or not validate_host(domain, hosts):
            return False
        own_schemes = _request_schemes(scope or {}, headers)
        return scheme in own_schemes and _with_port(scheme, netloc) == _with_port(scheme, host)


def _with_port(scheme: str, netloc: str) -> str:
    """`host:port` with the scheme's default port written out, so that `example.com` and
    `example.com:443` compare equal for https."""
    domain, port = split_domain_port(netloc)
    if not port:
        port = "443" if scheme == "https" else "80"
    return f"{domain}:{port}"


def _request_schemes(scope: dict, headers: dict) -> tuple[str, ...]:
    """The page schemes that are the handshake's own: from the scope (`wss` is https), else
    from a proxy's `X-Forwarded-Proto`, else unknown (daphne's scope says nothing): both."""
    scheme = scope.get("scheme")
    if scheme in ("wss", "https"):
        return ("https",)
    forwarded = headers.get(b"x-forwarded-proto")
    if forwarded:
        first = forwarded.decode("latin1").split(",")[0].strip().lower()
        return ("https",) if first in ("https", "wss") else ("http",)
    if scheme in ("ws", "http"):
        return ("http",)
    return ("http", "https")


def _trusted_origin(scheme: str, netloc: str) -> bool:
    """CSRF_TRUSTED_ORIGINS, as Django reads it: `https://app.example.com:8443` exactly,
    or `https://*.example.com` for its subdomains, scheme included."""
    for trusted in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        parts = urlsplit(str(trusted))
        if parts.scheme.lower() != scheme:
            continue
        pattern = parts.netloc.lower()
        if pattern == netloc:
            return True
        if pattern.startswith("*") and is_same_domain(netloc, pattern[1:]):
            return True
    return False


class SessionFromCookie:
    """Puts the Django session named by the session cookie in the scope, for Channels'
    `AuthMiddleware` below it (under Channels' `CookieMiddleware`).

    Channels' own `SessionMiddleware` wraps `send` to save the session on HTTP responses;
    on a WebSocket it has nothing to save, but still reads two session attributes per
    frame, which cost more than the rest of the send path. A WebSocket never sets a
    cookie, so this one passes `send` through untouched.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if "session" not in scope:
            key = scope.get("cookies", {}).get(settings.SESSION_COOKIE_NAME)
            scope = {**scope, "session": self.store(key)}  # loaded when first read
        return await self.app(scope, receive, send)
