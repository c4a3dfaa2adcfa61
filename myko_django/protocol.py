"""One connection's side of the myko protocol (PROTOCOL.md), without a socket.

The consumer hands it frames and gives it a `send(frame)` callable; everything else
(format switching, subscriptions, the command queue, bad input) happens here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__, conf, wire
from .commands import CommandError, run_command
from .engine import QueryUpdate, ReportUpdate, Update, WindowError
from .operations import OperationError, resolve_query, resolve_report
from .registry import ItemError
from .runtime import Runtime
from .writepath import apply_events

logger = logging.getLogger(__name__)

_ids = itertools.count(1)
STARTED_AT = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
SERVER_ID = f"{socket.gethostname()}-{os.getpid()}"

# Query-like subscriptions: (request event, id key, item type key, response, error).
_KINDS = {
    "ws:m:query": ("query", "queryId", "queryItemType", "ws:m:query-response", "ws:m:query-error"),
    "ws:m:view": ("view", "viewId", "viewItemType", "ws:m:view-response", "ws:m:view-error"),
}
_CLIENT_BOUND = {
    "ws:m:query-response",
    "ws:m:query-error",
    "ws:m:view-response",
    "ws:m:view-error",
    "ws:m:report-response",
    "ws:m:report-error",
    "ws:m:command-response",
    "ws:m:command-error",
    "ws:m:event-error",
    "ws:m:protocol-switch",
}

Frame = str | bytes


@dataclass
class _Pending:
    """A query subscription accepted while its store loads."""

    item_type: str
    flt: Any
    window: Any
    error: str
    id_key: str
    op_id: str


class Session:
    """The protocol state of one WebSocket connection."""

    def __init__(
        self,
        runtime: Runtime,
        send: Callable[[Frame], None],
        *,
        user: Any = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        self.id = f"c{next(_ids)}"
        self.runtime = runtime
        self.send_frame = send
        self.user = user
        self.address = address
        self.fmt = wire.JSON  # outgoing format
        self.binary_fmt: str | None = None  # fixed by the first binary frame that decodes
        self.kinds: dict[str, str] = {}  # tx -> response event of its query/view/static sub
        self.op_ids: dict[str, Any] = {}  # tx -> the queryId/viewId it subscribed with
        self.loading: dict[str, _Pending] = {}  # subscriptions waiting for their store
        self._loads: set[asyncio.Task] = set()
        self.bad_frames = 0
        self.benchmarks = 0
        self._work: asyncio.Queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run_work())
        runtime.attach(self, self._deliver)

    async def close(self) -> None:
        """The client went away: drop subscriptions; a running command still finishes."""
        self.loading.clear()  # stores still loading must not subscribe a closed connection
        self.runtime.detach(self)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass

    # ---- outgoing -------------------------------------------------------------------

    def send(self, event: str, data: Any) -> bool:
        """Encode and queue one message; False (logged) if the format cannot carry it."""
        try:
            frame = wire.encode({"event": event, "data": data}, self.fmt)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # NaN echoed to JSON, a 65-bit integer to MessagePack, a command's result that
            # no format carries: the sender is told where it can be, nothing else breaks.
            logger.warning("myko: connection %s: could not encode %s: %s", self.id, event, exc)
            return False
        self.send_frame(frame)
        return True

    def _deliver(self, update: Update) -> None:
        if isinstance(update, QueryUpdate):
            event = self.kinds.get(update.tx, "ws:m:query-response")
            try:
                frame = wire.encode_query_response(update, self.fmt, event)
            except Exception as exc:
                # E.g. a JSON field holding a 65-bit integer written through the ORM, sent
                # to a MessagePack client: end this subscription with an error, not a gap.
                logger.exception("myko: connection %s: could not encode %s", self.id, event)
                kind = "view" if event == "ws:m:view-response" else "query"
                self.send(
                    f"ws:m:{kind}-error",
                    {
                        "tx": update.tx,
                        f"{kind}Id": self.op_ids.get(update.tx),
                        "message": f"the result cannot be sent as {self.fmt}: {exc}",
                    },
                )
                self._forget(update.tx)
                self.runtime.engine.cancel(self, update.tx)
                return
            self.send_frame(frame)
        elif isinstance(update, ReportUpdate):
            self.send("ws:m:report-response", {"response": update.value, "tx": update.tx})

    def _forget(self, tx: str) -> None:
        """This connection no longer has a query or view under `tx`."""
        self.kinds.pop(tx, None)
        self.op_ids.pop(tx, None)

    # ---- incoming -------------------------------------------------------------------

    async def receive_text(self, text: str) -> None:
        if text == wire.SWITCH_TEXT:
            self.send_frame(wire.SWITCH_REPLY)
            self.fmt = self.binary_fmt or wire.MSGPACK
            self.binary_fmt = self.binary_fmt or wire.MSGPACK
            return
        try:
            message = wire.decode_text(text)
        except wire.WireError as exc:
            return self._bad(str(exc))
        await self._handle_safely(message)

    async def receive_bytes(self, data: bytes) -> None:
        try:
            fmt = self.binary_fmt or wire.detect_binary(data)
            message = wire.decode_binary(data, fmt)
        except wire.WireError as exc:
            return self._bad(str(exc))
        if self.binary_fmt is None:
            self.binary_fmt = fmt
        self.fmt = self.binary_fmt
        await self._handle_safely(message)

    async def _handle_safely(self, message: Any) -> None:
        """A message that breaks something unforeseen costs that message, not the
        connection (PROTOCOL.md §8)."""
        try:
            await self.handle(message)
        except Exception as exc:
            logger.exception("myko: connection %s: a message failed", self.id)
            self._bad(f"failed: {exc!r:.200}")

    def _bad(self, reason: str) -> None:
        self.bad_frames += 1
        logger.warning("myko: connection %s: ignored a bad message: %s", self.id, reason)

    async def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            return self._bad("not an envelope {event, data}")
        event, data = message["event"], message.get("data")
        if event in _KINDS:
            return await self._subscribe(event, data)
        if event == "ws:m:report":
            return await self._report(data)
        if event in ("ws:m:command", "ws:m:event", "ws:m:event-batch"):
            return self._work.put_nowait((event, data))
        if event in ("ws:m:query-cancel", "ws:m:view-cancel", "ws:m:report-cancel"):
            tx = data.get("tx") if isinstance(data, dict) else None
            if not isinstance(tx, str):
                return self._bad(f"{event} without a string tx")
            self._forget(tx)
            self.loading.pop(tx, None)
            self.runtime.engine.cancel(self, tx)
            return
        if event in ("ws:m:query-window", "ws:m:view-window"):
            return self._window(event, data)
        if event == "ws:m:ping":
            return self.send("ws:m:ping", data)
        if event == "ws:m:benchmark":
            self.benchmarks += 1
            return
        if event in _CLIENT_BOUND:
            return self._bad(f"{event} is sent by servers, not clients")
        return self._bad(f"unknown event {event!r:.60}")

    # ---- queries, views, reports ------------------------------------------------------

    async def _subscribe(self, event: str, data: Any) -> None:
        key, id_key, type_key, response, error = _KINDS[event]
        request = data.get(key) if isinstance(data, dict) else None
        tx = request.get("tx") if isinstance(request, dict) else None
        op_id = data.get(id_key) if isinstance(data, dict) else None
        if not isinstance(tx, str):
            return self._bad(f"{event} without {key}.tx")
        if tx in self.kinds:
            return  # duplicate subscribe with an active tx: ignored (PROTOCOL §3.1)
        if op_id in ("GetConnectedServer", "GetPeerServers"):
            self.kinds[tx] = response
            return self._static_servers(op_id, tx, response)
        try:
            item_type, flt = resolve_query(op_id, data.get(type_key), request)
        except (OperationError, ItemError) as exc:
            return self.send(error, {"tx": tx, id_key: op_id, "message": str(exc)})
        self.kinds[tx] = response
        self.op_ids[tx] = sys.intern(op_id) if isinstance(op_id, str) else op_id
        pending = _Pending(item_type, flt, data.get("window"), error, id_key, op_id)
        if self.runtime.engine.has_store(item_type):
            return self._start(tx, pending)
        # Load the store without holding up this connection's later messages (pings,
        # cancels); a cancel or window update meanwhile is applied to `pending`.
        self.loading[tx] = pending
        task = asyncio.get_running_loop().create_task(self._load_then_start(tx, pending))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load_then_start(self, tx: str, pending: _Pending) -> None:
        try:
            await self.runtime.ensure_store(pending.item_type)
        except Exception as exc:
            logger.exception("myko: loading %s failed", pending.item_type)
            if self.loading.get(tx) is pending:
                del self.loading[tx]
                self._forget(tx)
                self.send(
                    pending.error,
                    {
                        "tx": tx,
                        pending.id_key: pending.op_id,
                        "message": f"Could not load {pending.item_type}: {exc}",
                    },
                )
            return
        if self.loading.get(tx) is pending:  # not cancelled (or replaced) while loading
            del self.loading[tx]
            self._start(tx, pending)

    def _start(self, tx: str, pending: _Pending) -> None:
        try:
            update = self.runtime.engine.subscribe_query(
                self, tx, pending.item_type, pending.flt, pending.window
            )
        except WindowError as exc:
            self._forget(tx)
            return self.send(
                pending.error, {"tx": tx, pending.id_key: pending.op_id, "message": str(exc)}
            )
        self.runtime.deliver([update])

    def _static_servers(self, op_id: str, tx: str, response: str) -> None:
        if op_id == "GetConnectedServer":
            host, port = self.address or ("", 0)
            items = [
                {
                    "id": SERVER_ID,
                    "version": __version__,
                    "address": host,
                    "port": port,
                    "startedAt": STARTED_AT,
                }
            ]
        else:
            items = list(conf.get("PEER_SERVERS"))
        self.send(
            response,
            {
                "tx": tx,
                "sequence": 0,
                "deletes": [],
                "totalCount": len(items),
                "upserts": [{"item": i, "itemType": "Server"} for i in items],
            },
        )

    def _window(self, event: str, data: Any) -> None:
        tx = data.get("tx") if isinstance(data, dict) else None
        if not isinstance(tx, str) or "window" not in data:
            return self._bad(f"{event} needs {{tx, window}}")
        if tx in self.loading:
            self.loading[tx].window = data["window"]
            return
        try:
            update = self.runtime.engine.set_window(self, tx, data["window"])
        except WindowError as exc:
            kind = "view" if event == "ws:m:view-window" else "query"
            return self.send(
                f"ws:m:{kind}-error",
                {"tx": tx, f"{kind}Id": self.op_ids.get(tx), "message": str(exc)},
            )
        self.runtime.deliver([update])

    async def _report(self, data: Any) -> None:
        request = data.get("report") if isinstance(data, dict) else None
        tx = request.get("tx") if isinstance(request, dict) else None
        report_id = data.get("reportId") if isinstance(data, dict) else None
        if not isinstance(tx, str):
            return self._bad("ws:m:report without report.tx")
        try:
            spec = resolve_report(report_id, request)
            for item_type in spec.item_types:
                await self.runtime.ensure_store(item_type)
            self._forget(tx)
            update = self.runtime.engine.subscribe_report(self, tx, spec)
        except (OperationError, ItemError) as exc:
            message = str(exc)
        except Exception as exc:  # a user report that raises on first computation
            logger.exception("myko: report %s failed", report_id)
            message = f"{report_id} failed: {exc}"
        else:
            return self.runtime.deliver([update])
        self.send("ws:m:report-error", {"tx": tx, "reportId": report_id, "message": message})

    # ---- commands and client events, one at a time in arrival order --------------------

    async def _run_work(self) -> None:
        while True:
            event, data = await self._work.get()
            try:
                if event == "ws:m:command":
                    await self._command(data)
                else:
                    await self._events(event, data)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("myko: connection %s: %s failed", self.id, event)

    async def _command(self, data: Any) -> None:
        request = data.get("command") if isinstance(data, dict) else None
        tx = request.get("tx") if isinstance(request, dict) else None
        command_id = data.get("commandId") if isinstance(data, dict) else None
        if not isinstance(tx, str):
            return self._bad("ws:m:command without command.tx")
        # Shielded: a client that vanishes mid-command does not cancel the transaction.
        job = self.runtime.db(
            run_command, command_id, request, tx=tx, user=self.user, source_id=self.id
        )
        try:
            outcome = await asyncio.shield(asyncio.ensure_future(job))
        except CommandError as exc:
            return self.send(
                "ws:m:command-error", {"tx": tx, "commandId": command_id, "message": str(exc)}
            )
        # Updates first (PROTOCOL §3.4), also to subscriptions whose snapshot is still loading.
        await self.runtime.catch_up(outcome.position)
        if self._loads:
            await asyncio.wait(list(self._loads))
        if not self.send("ws:m:command-response", {"response": outcome.response, "tx": tx}):
            message = f"{command_id} returned a value that cannot be sent as {self.fmt}"
            self.send("ws:m:command-error", {"tx": tx, "commandId": command_id, "message": message})

    async def _events(self, event: str, data: Any) -> None:
        batch = data if event == "ws:m:event-batch" else [data]
        if not isinstance(batch, list):
            return self._bad("ws:m:event-batch data must be a list")
        if not conf.get("ALLOW_CLIENT_EVENTS"):
            for e in batch:
                self._event_error(e, "This server does not accept events from clients")
            return
        position, rejected = await self.runtime.db(apply_events, batch, source_id=self.id)
        for _, e, message in rejected:
            logger.info("myko: connection %s: rejected event: %s", self.id, message)
            self._event_error(e, message)
        await self.runtime.catch_up(position)

    def _event_error(self, event: Any, message: str) -> None:
        event = event if isinstance(event, dict) else {}
        tx = event.get("tx") if isinstance(event.get("tx"), str) else None
        self.send(
            "ws:m:event-error", {"tx": tx, "itemType": event.get("itemType"), "message": message}
        )
