"""SIGTERM drains a worker instead of dropping its sockets.

daphne (Twisted) stops on SIGTERM at once: it cancels every connection's application and
drops the TCP connections without a close frame, so clients see 1006 and a command that was
running loses its response. When the first hub of a process starts under a server that
handles SIGTERM itself (daphne does, from the main thread), this module puts its own
handler in front of the server's:

1. The worker stops accepting: new handshakes are answered with close code 1012 (service
   restart, docs/protocol.md "Connecting"), and `/readyz` answers 503, so a load balancer
   and the clients go elsewhere.
2. Each open socket is closed with 1012 as soon as the commands and events it sent have
   finished (their responses sent), at the latest after MYKO["DRAIN_TIMEOUT"] seconds.
   Until then it is served as usual, live updates included.
3. Once the sockets are closed (or a short grace after the deadline), the server's own
   handler runs: daphne stops. A command still running then is not cut off: its database
   thread finishes it before the process exits (its client, reconnected elsewhere,
   re-sends it and gets the stored response: commands are idempotent).

A second SIGTERM skips what is left of the drain. Without a server handler to chain to
(SIG_DFL, e.g. under pytest), nothing is installed and SIGTERM behaves as before.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from myko_django import conf

logger = logging.getLogger(__name__)

CLOSE_RESTART = 1012  # RFC 6455 "service restart": reconnect, to another server if need be
GRACE = 1.0  # seconds the clients get to answer the close frames, after the deadline
POLL = 0.02  # seconds between looks at a busy socket


class Drain:
    """The drain state of one process: the open sockets and whether it is draining."""

    def __init__(self) -> None:
        self.draining = False
        # connection -> coroutine function that closes its socket with CLOSE_RESTART.
        self.sockets: dict[Any, Callable[[], Awaitable[None]]] = {}
        self.task: asyncio.Task | None = None
        self.installed = False
        self.stopped = False  # the server's handler was called
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- sockets ------------------------------------------------------------------------

    def track(self, connection: Any, close: Callable[[], Awaitable[None]]) -> None:
        """An open socket; `connection.busy` says whether it has commands or events to
        finish, `close()` closes it with CLOSE_RESTART."""
        self.sockets[connection] = close

    def forget(self, connection: Any) -> None:
        self.sockets.pop(connection, None)

    async def run(self, timeout: float) -> None:
        """Close every socket once idle, by `timeout` seconds at the latest, and wait (a
        GRACE more) for them to go. Sockets that open meanwhile are closed too."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        logger.info("myko: draining %d connection(s), at most %.1fs", len(self.sockets), timeout)
        closed: set[Any] = set()
        while True:
            now = loop.time()
            for connection, close in list(self.sockets.items()):
                if connection in closed or (getattr(connection, "busy", False) and now < deadline):
                    continue
                closed.add(connection)
                try:
                    await close()
                except Exception:
                    logger.warning("myko: closing a socket while draining failed", exc_info=True)
            if not self.sockets or now >= deadline + GRACE:
                break
            await asyncio.sleep(POLL)
        if self.sockets:
            logger.warning(
                "myko: %d connection(s) still open after the drain; stopping anyway",
                len(self.sockets),
            )
        else:
            logger.info("myko: drained")

    # ---- the signal -----------------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Put the drain in front of the server's SIGTERM handler (once per process, from
        the main thread); False where there is none to chain to."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # SIG_DFL, SIG_IGN, or not set from Python
            return False
        self.installed, self._previous, self._loop = True, previous, loop
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        loop = self._loop
        if self.task is not None or loop is None or loop.is_closed():
            self._stop_server(signum, frame)  # the second SIGTERM: stop now
            return
        logger.info("myko: SIGTERM: draining before the server stops")
        loop.call_soon_threadsafe(self._start, signum, frame)

    def _start(self, signum: int, frame: Any) -> None:
        self.task = self._loop.create_task(self._drain_then_stop(signum, frame))

    async def _drain_then_stop(self, signum: int, frame: Any) -> None:
        try:
            await self.run(conf.get("DRAIN_TIMEOUT"))
        except Exception:
            logger.exception("myko: draining failed")
        finally:
            self._stop_server(signum, frame)

    def _stop_server(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if callable(previous) and not self.stopped:
            self.stopped = True
            previous(signum, frame)


DRAIN = Drain()


def draining() -> bool:
    """Whether this process is draining (SIGTERM): no new sockets, /readyz answers 503."""
    return DRAIN.draining


def install(loop: asyncio.AbstractEventLoop) -> bool:
    return DRAIN.install(loop)


def track(connection: Any, close: Callable[[], Awaitable[None]]) -> None:
    DRAIN.track(connection, close)


def forget(connection: Any) -> None:
    DRAIN.forget(connection)
