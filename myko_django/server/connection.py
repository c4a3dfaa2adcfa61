"""One connection's side of the myko protocol (docs/protocol.md), without a socket.

The endpoint hands it frames and gives it a `send(frame)` callable; everything else
(format switching, subscriptions, the command queue, bad input) happens here. What needs
the database comes in through a `Backend` (server/backend.py has the real one), so the
protocol runs in a unit test with no Django, no database and no socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from myko_django.items.errors import ItemError, OperationError
from myko_django.live.engine import Engine
from myko_django.live.filters import Filter
from myko_django.live.updates import QueryUpdate, ReportSpec, ReportUpdate, Update
from myko_django.server import outgoing
from myko_django.wire import codecs
from myko_django.wire import envelope as ev
from myko_django.wire.envelope import WindowError, parse_window

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

# Query-like subscriptions: (request event, id key, item type key, response, error).
_KINDS = {
    ev.QUERY: ("query", "queryId", "queryItemType", ev.QUERY_RESPONSE, ev.QUERY_ERROR),
    ev.VIEW: ("view", "viewId", "viewItemType", ev.VIEW_RESPONSE, ev.VIEW_ERROR),
}

# Requests with an error reply: event -> (request key, id key, error event).
_REQUESTS = {
    **{event: (key, id_key, error) for event, (key, id_key, _, _, error) in _KINDS.items()},
    ev.REPORT: ("report", "reportId", ev.REPORT_ERROR),
    ev.COMMAND: ("command", "commandId", ev.COMMAND_ERROR),
}

Frame = str | bytes


class CommandRejected(Exception):
    """A command that failed; its message goes to the client as ws:m:command-error."""


CLOSE_POLICY = 1008  # sustained abuse of the limits (docs/protocol.md, "Limits")

# Sustained abuse: refused messages (over any limit) add up to this many seconds' worth of
# MAX_MESSAGES_PER_SECOND, and are forgiven at 1/ABUSE_SECONDS of that rate per second. A
# client sending at twice the rate is closed after about 12 s (its first second is the
# bucket's burst), at 11 times after about 1 s, at 1.1 times never; one that backs off after
# its error replies is never closed.
ABUSE_SECONDS = 10
_CANCELS = frozenset({ev.QUERY_CANCEL, ev.VIEW_CANCEL, ev.REPORT_CANCEL})


@dataclass(frozen=True)
class Limits:
    """Per-connection abuse limits (the MYKO settings MAX_*; server/backend.py reads them).
    The defaults here are the settings' defaults."""

    subscriptions: int = 10_000  # live queries, views and reports
    commands_in_flight: int = 1_000  # commands, events and event batches waiting or running
    messages_per_second: int = 5_000  # sustained; bursts up to the same number
    batch_items: int = 10_000  # events in one ws:m:event-batch
    ids: int = 10_000  # in one "ids" parameter or one "in" filter's value
    message_size: int = 16 * 1024 * 1024  # bytes of one message, in or out (MAX_MESSAGE_SIZE)


class Backend(Protocol):
    """The database side of a connection. Resolving names is quick and runs on the loop;
    commands and events are awaited (the real backend runs them on the hub's pool)."""

    allow_client_events: bool
    limits: Limits

    def resolve_query(
        self, query_id: Any, item_type: Any, request: Any, user: Any
    ) -> tuple[str, Filter]:
        """(item type, filter) of a query as `user` may see it; OperationError (with
        PermissionDenied among them) or ItemError says what is wrong."""

    def resolve_report(self, report_id: Any, request: Any, user: Any) -> ReportSpec: ...

    async def run_command(
        self, command_id: Any, request: Any, *, tx: str, user: Any, source_id: str
    ) -> tuple[Any, int]:
        """(response, last position committed); raises CommandRejected."""

    async def apply_events(
        self, events: list[Any], *, user: Any, source_id: str
    ) -> tuple[int, list[tuple[int, Any, str]]]:
        """(last position committed, [(index, event, message) of each rejected event])."""

    def servers(self, op_id: str, address: tuple[str, int] | None) -> list[dict]:
        """The items of GetConnectedServer / GetPeerServers."""


class Hub(Protocol):
    """What a connection needs of its process's hub (server/hub.py)."""

    engine: Engine

    def attach(self, conn: Hashable, sink: Callable[[Update], None]) -> None: ...
    def detach(self, conn: Hashable) -> None: ...
    def deliver(self, updates: Sequence[Update | None]) -> None: ...
    async def ensure_store(self, item_type: str) -> None: ...
    async def catch_up(self, position: int) -> None: ...


@dataclass
class _Pending:
    """A query subscription accepted while its store loads."""

    item_type: str
    flt: Any
    window: Any
    error: str
    id_key: str
    op_id: str


# Frames larger than this are decoded on a thread of their own (issue 13, item 7): a 12 MB
# frame took ~170 ms to decode and check, all of it on the event loop; on the thread the
# loop still waits for the C parser's share (~60 ms; it holds the GIL) but not for the
# rest. One thread: big frames of all connections take turns instead of taking every core.
DECODE_IN_THREAD = 256 * 1024
_decoder: concurrent.futures.ThreadPoolExecutor | None = None


async def _decode(size: int, admitted: bool, decode: Callable[..., Any], *args: Any) -> Any:
    """Decode a frame: on the loop when small; on the decoding thread when large; not at all
    when large and over the message rate (only a cancel is read then, and cancels are
    small), which costs its sender the refusal instead of our decoding."""
    global _decoder
    if size <= DECODE_IN_THREAD:
        return decode(*args)
    if not admitted:
        raise codecs.WireError(f"a {size}-byte frame over the message rate is not read")
    if _decoder is None:
        _decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="myko-decode")
    return await asyncio.get_running_loop().run_in_executor(_decoder, decode, *args)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


class Connection:
    """The protocol state of one WebSocket connection."""

    def __init__(
        self,
        hub: Hub,
        backend: Backend,
        send: Callable[[Frame], None],
        *,
        user: Any = None,
        address: tuple[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = f"c{next(_ids)}"
        self.hub = hub
        self.backend = backend
        self.send_frame = send
        self.user = user
        self.address = address
        self.fmt = codecs.JSON  # outgoing format
        self.binary_fmt: str | None = None  # fixed by the first binary frame that decodes
        self.kinds: dict[str, str] = {}  # tx -> response event of its query/view/static sub
        self.op_ids: dict[str, Any] = {}  # tx -> the queryId/viewId it subscribed with
        # tx -> (request event, data) of each live query, view and report, to check again
        # when the user changes (logged out, deactivated, permissions changed).
        self.requests: dict[str, tuple[str, Any]] = {}
        self.loading: dict[str, _Pending] = {}  # subscriptions waiting for their store
        # tx -> how far its sequence numbers run ahead of the engine's: a response split
        # into parts (server/outgoing.py) takes several; reset by the next sequence 0.
        self.shifts: dict[str, int] = {}
        self._loads: set[asyncio.Task] = set()
        self.bad_frames = 0
        self.benchmarks = 0
        # Abuse limits: messages refused by a limit, the rate's token bucket, refusals not
        # yet forgiven, and the close code the endpoint closes with once they are too many.
        self.limits: Limits = backend.limits
        self.limited = 0
        self.close_code: int | None = None
        self._clock = clock
        self._tokens = float(self.limits.messages_per_second)
        self._refilled = self._strikes_at = clock()
        self._strikes = 0.0
        self._warned_at: float | None = None
        self._in_flight = 0  # commands and events queued or running
        self.closed = False
        self._work: asyncio.Queue = asyncio.Queue(self.limits.commands_in_flight)
        self._worker = asyncio.get_running_loop().create_task(self._run_work())
        hub.attach(self, self._deliver)

    @property
    def busy(self) -> bool:
        """Commands or events of this connection wait or run (a draining worker closes the
        socket once they are done: server/drain.py)."""
        return self._in_flight > 0

    async def close(self) -> None:
        """The client went away: drop subscriptions; a running command still finishes."""
        self.closed = True  # a report whose stores still load must not subscribe it
        self.loading.clear()  # stores still loading must not subscribe a closed connection
        self.hub.detach(self)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass

    # ---- outgoing -------------------------------------------------------------------

    def send(self, event: str, data: Any) -> bool:
        """Encode and queue one message; False (logged) if the format cannot carry it."""
        try:
            frame = codecs.encode({"event": event, "data": data}, self.fmt)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # NaN echoed to JSON, a 65-bit integer to MessagePack, a command's result that
            # no format carries: the sender is told where it can be, nothing else breaks.
            logger.warning("myko: connection %s: could not encode %s: %s", self.id, event, exc)
            return False
        size = outgoing.frame_size(frame)
        if size > self.limits.message_size:  # the server would drop it (docs/protocol.md)
            logger.warning(
                "myko: connection %s: %s is %d bytes, over the %d-byte limit: not sent",
                self.id,
                event,
                size,
                self.limits.message_size,
            )
            return False
        self.send_frame(frame)
        return True

    def _deliver(self, update: Update) -> None:
        if isinstance(update, QueryUpdate):
            event = self.kinds.get(update.tx, ev.QUERY_RESPONSE)
            tx = update.tx
            if update.sequence == 0:
                self.shifts.pop(tx, None)
            shift = self.shifts.get(tx, 0)
            if shift:
                update = dataclasses.replace(update, sequence=update.sequence + shift)
            try:
                frames = outgoing.query_frames(update, self.fmt, event, self.limits.message_size)
            except Exception as exc:
                # E.g. a JSON field holding a 65-bit integer written through the ORM, sent
                # to a MessagePack client, or one item over the message limit: end this
                # subscription with an error, not a gap.
                if isinstance(exc, outgoing.TooLarge):
                    message = f"the result cannot be sent: {exc}"
                    logger.warning("myko: connection %s: %s: %s", self.id, tx, message)
                else:
                    message = f"the result cannot be sent as {self.fmt}: {exc}"
                    logger.exception("myko: connection %s: could not encode %s", self.id, event)
                kind = "view" if event == ev.VIEW_RESPONSE else "query"
                self.send(
                    f"ws:m:{kind}-error",
                    {"tx": tx, f"{kind}Id": self.op_ids.get(tx), "message": message},
                )
                self._forget(tx)
                self.hub.engine.cancel(self, tx)
                return
            if len(frames) > 1:
                self.shifts[tx] = shift + len(frames) - 1
            for frame in frames:
                self.send_frame(frame)
        elif isinstance(update, ReportUpdate):
            if not self.send(ev.REPORT_RESPONSE, {"response": update.value, "tx": update.tx}):
                # Too large (or not encodable): the report ends with its error, never silence.
                self.send(
                    ev.REPORT_ERROR,
                    {
                        "tx": update.tx,
                        "reportId": self._report_id(update.tx),
                        "message": "the report's value cannot be sent: over the message "
                        f"limit of {self.limits.message_size} bytes (MAX_MESSAGE_SIZE) or "
                        f"not encodable as {self.fmt}",
                    },
                )
                self._forget(update.tx)
                self.hub.engine.cancel(self, update.tx)

    def _report_id(self, tx: str) -> Any:
        request = self.requests.get(tx)
        data = request[1] if request is not None else None
        return data.get("reportId") if isinstance(data, dict) else None

    def _forget(self, tx: str) -> None:
        """This connection no longer has a query, view or report under `tx`."""
        self.kinds.pop(tx, None)
        self.op_ids.pop(tx, None)
        self.requests.pop(tx, None)
        self.shifts.pop(tx, None)

    # ---- the user ----------------------------------------------------------------------

    async def set_user(self, user: Any) -> None:
        """The connection's user changed: signed out or deactivated (then anonymous), token
        expired, permissions or row visibility changed. Every live query, view and report
        is resolved again for the new user: one no longer allowed ends with its error
        message, one whose visible rows changed starts again at sequence 0 (which replaces
        the client's state, as after a reconnect)."""
        self.user = user
        for tx, (event, data) in list(self.requests.items()):
            if self.requests.get(tx) != (event, data):
                continue  # cancelled or replaced meanwhile
            if event == ev.REPORT:
                await self._report(data, again=True)
            else:
                await self._subscribe(event, data, again=True)

    # ---- incoming -------------------------------------------------------------------

    async def receive_text(self, text: str) -> None:
        if self.close_code is not None:
            return  # closing for abuse: nothing more is read
        admitted = self._admit()
        if text == ev.SWITCH_TEXT:
            if not admitted:
                return self._refuse(None, self._rate_exceeded())
            self.send_frame(ev.SWITCH_REPLY)
            self.fmt = self.binary_fmt or codecs.MSGPACK
            self.binary_fmt = self.binary_fmt or codecs.MSGPACK
            return
        try:
            message = await _decode(len(text), admitted, codecs.decode_text, text)
        except codecs.WireError as exc:
            return self._bad(str(exc)) if admitted else self._refuse(None, self._rate_exceeded())
        await self._receive(message, admitted)

    async def receive_bytes(self, data: bytes) -> None:
        if self.close_code is not None:
            return
        admitted = self._admit()
        try:
            fmt = self.binary_fmt or codecs.detect_binary(data)
            message = await _decode(len(data), admitted, codecs.decode_binary, data, fmt)
        except codecs.WireError as exc:
            return self._bad(str(exc)) if admitted else self._refuse(None, self._rate_exceeded())
        if self.binary_fmt is None:
            self.binary_fmt = fmt
        self.fmt = self.binary_fmt
        await self._receive(message, admitted)

    async def _receive(self, message: Any, admitted: bool) -> None:
        """A decoded message; one over the message rate gets its error reply instead, except
        a cancel, which only releases and is applied anyway (but still counts toward
        closing: a flood of cancels costs their decoding)."""
        if admitted:
            await self._handle_safely(message)
        elif isinstance(message, dict) and message.get("event") in _CANCELS:
            self._refuse(None, self._rate_exceeded())  # counted, not answered
            await self._handle_safely(message)
        else:
            self._refuse(message, self._rate_exceeded())

    async def _handle_safely(self, message: Any) -> None:
        """A message that breaks something unforeseen costs that message, not the
        connection (docs/protocol.md, "Bad input")."""
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
        refusal = self._over_limit(event, data)
        if refusal is not None:
            return self._refuse(message, refusal)
        if event in _KINDS:
            return await self._subscribe(event, data)
        if event == ev.REPORT:
            return await self._report(data)
        if event in (ev.COMMAND, ev.EVENT, ev.EVENT_BATCH):
            self._work.put_nowait((event, data))  # bounded: _over_limit refused it if full
            self._in_flight += 1
            return
        if event in (ev.QUERY_CANCEL, ev.VIEW_CANCEL, ev.REPORT_CANCEL):
            tx = data.get("tx") if isinstance(data, dict) else None
            if not isinstance(tx, str):
                return self._bad(f"{event} without a string tx")
            self._forget(tx)
            self.loading.pop(tx, None)
            self.hub.engine.cancel(self, tx)
            return
        if event in (ev.QUERY_WINDOW, ev.VIEW_WINDOW):
            return self._window(event, data)
        if event == ev.PING:
            # Always answered: what the format cannot carry (NaN in JSON) comes back null.
            return self.send(ev.PING, data) or self.send(ev.PING, codecs.carriable(data))
        if event == ev.BENCHMARK:
            self.benchmarks += 1
            return
        if event in ev.SERVER_TO_CLIENT:
            return self._bad(f"{event} is sent by servers, not clients")
        return self._bad(f"unknown event {event!r:.60}")

    # ---- abuse limits (docs/protocol.md, "Limits") -----------------------------------

    def _admit(self) -> bool:
        """Take a token from the message-rate bucket (refilled at MAX_MESSAGES_PER_SECOND
        per second, holding as many); False when it is empty."""
        rate = self.limits.messages_per_second
        now = self._clock()
        self._tokens = min(float(rate), self._tokens + max(0.0, now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _rate_exceeded(self) -> str:
        return (
            f"Limit exceeded: more than {self.limits.messages_per_second} messages per second "
            "on this connection (MAX_MESSAGES_PER_SECOND); send more slowly"
        )

    def _over_limit(self, event: str, data: Any) -> str | None:
        """Why a message within the rate is refused by another limit, or None."""
        limits = self.limits
        if event in (ev.COMMAND, ev.EVENT, ev.EVENT_BATCH):
            if event == ev.EVENT_BATCH and isinstance(data, list):
                if len(data) > limits.batch_items:
                    return (
                        f"Limit exceeded: an event batch of {len(data)} events, over "
                        f"{limits.batch_items} (MAX_BATCH_ITEMS); none was applied, send "
                        "it in parts"
                    )
            if self._in_flight >= limits.commands_in_flight:
                return (
                    f"Limit exceeded: {limits.commands_in_flight} commands and events already "
                    "waiting or running on this connection (MAX_COMMANDS_IN_FLIGHT); wait "
                    "for their responses"
                )
        shape = _REQUESTS.get(event)
        request = data.get(shape[0]) if shape is not None and isinstance(data, dict) else None
        if not isinstance(request, dict):
            return None
        tx = request.get("tx")
        if not isinstance(tx, str):
            return None  # its handler says what is wrong
        if event in _KINDS and tx in self.kinds:
            return None  # a duplicate subscribe: _subscribe ignores it
        if (
            event != ev.COMMAND
            and tx not in self.requests
            and self._subscription_count() >= limits.subscriptions
        ):
            return (
                f"Limit exceeded: {limits.subscriptions} live subscriptions on this "
                "connection (MAX_SUBSCRIPTIONS); cancel one first"
            )
        return self._too_many_ids(request)

    def _subscription_count(self) -> int:
        """Queries and views (each in `kinds`, `requests` and `op_ids`), reports (in
        `requests` only) and answered GetConnectedServer/GetPeerServers (in `kinds` only,
        until cancelled)."""
        return len(self.kinds) + len(self.requests) - len(self.op_ids)

    def _too_many_ids(self, request: dict) -> str | None:
        """MAX_IDS: an "ids" list (GetXsByIds, DeleteXs, any command's) or the value of an
        "in" filter, checked before anything resolves the request."""
        most = self.limits.ids
        ids = request.get("ids")
        if isinstance(ids, list) and len(ids) > most:
            return f'Limit exceeded: {len(ids)} ids in "ids", over {most} (MAX_IDS); ask in parts'
        for field, value in request.items():
            if isinstance(value, dict) and value.get("kind") == "in":
                values = value.get("value")
                if isinstance(values, list) and len(values) > most:
                    return (
                        f'Limit exceeded: {len(values)} values in the "in" filter of '
                        f'"{str(field):.60}", over {most} (MAX_IDS); ask in parts'
                    )
        return None

    def _refuse(self, message: Any, reason: str) -> None:
        """A message refused by a limit: counted, answered with its error response where it
        has one (a ping, a benchmark or a frame that does not decode gets nothing), and
        once refusals add up to sustained abuse the connection is to close (close_code)."""
        self.limited += 1
        now, rate = self._clock(), self.limits.messages_per_second
        forgiven = max(0.0, now - self._strikes_at) * rate / ABUSE_SECONDS
        self._strikes = max(0.0, self._strikes - forgiven) + 1
        self._strikes_at = now
        if self._warned_at is None or now - self._warned_at >= ABUSE_SECONDS:
            self._warned_at = now  # one line per ABUSE_SECONDS, not one per refusal
            logger.warning("myko: connection %s: %s (%d so far)", self.id, reason, self.limited)
        if self._strikes > rate * ABUSE_SECONDS and self.close_code is None:
            logger.warning(
                "myko: connection %s: closing (%d) after %d refused messages",
                self.id,
                CLOSE_POLICY,
                self.limited,
            )
            self.close_code = CLOSE_POLICY
        if not isinstance(message, dict):
            return
        event, data = message.get("event"), message.get("data")
        if event == ev.EVENT:
            return self._event_error(data, reason)
        if event == ev.EVENT_BATCH:  # one error for the batch, not one per event
            return self._event_error(None, reason)
        if event in (ev.QUERY_WINDOW, ev.VIEW_WINDOW):
            tx = data.get("tx") if isinstance(data, dict) else None
            kind = "view" if event == ev.VIEW_WINDOW else "query"
            if isinstance(tx, str):
                self.send(
                    f"ws:m:{kind}-error",
                    {"tx": tx, f"{kind}Id": self.op_ids.get(tx), "message": reason},
                )
            return
        shape = _REQUESTS.get(event)
        if shape is None or not isinstance(data, dict):
            return
        key, id_key, error = shape
        request = data.get(key)
        tx = request.get("tx") if isinstance(request, dict) else None
        if isinstance(tx, str):
            self.send(error, {"tx": tx, id_key: data.get(id_key), "message": reason})

    # ---- queries, views, reports ------------------------------------------------------

    async def _subscribe(self, event: str, data: Any, again: bool = False) -> None:
        """Start a live query or view; `again`: resolve an active one for a new user."""
        key, id_key, type_key, response, error = _KINDS[event]
        request = data.get(key) if isinstance(data, dict) else None
        tx = request.get("tx") if isinstance(request, dict) else None
        op_id = data.get(id_key) if isinstance(data, dict) else None
        if not isinstance(tx, str):
            return self._bad(f"{event} without {key}.tx")
        if tx in self.kinds and not again:
            return  # duplicate subscribe with an active tx: ignored (PROTOCOL §3.1)
        if isinstance(op_id, str) and op_id in ev.SERVER_QUERIES:
            self.kinds[tx] = response
            return self._static_servers(op_id, tx, response)
        try:
            item_type, flt = self.backend.resolve_query(
                op_id, data.get(type_key), request, self.user
            )
        except (OperationError, ItemError) as exc:
            if again:
                self._forget(tx)
                self.loading.pop(tx, None)
                self.hub.engine.cancel(self, tx)
            return self.send(error, {"tx": tx, id_key: op_id, "message": str(exc)})
        if again:
            pending = self.loading.get(tx)
            if pending is not None:
                pending.flt = flt  # starts with the new user's filter once loaded
                return
            engine = self.hub.engine
            if engine.subscription_key(self, tx) == flt.key:
                return  # the same rows as before: nothing to tell the client
            window = engine.query_window(self, tx)
            engine.cancel(self, tx)
            return self._start(tx, _Pending(item_type, flt, window, error, id_key, op_id))
        self.kinds[tx] = response
        self.requests[tx] = (event, data)
        self.op_ids[tx] = sys.intern(op_id) if isinstance(op_id, str) else op_id
        pending = _Pending(item_type, flt, data.get("window"), error, id_key, op_id)
        if self.hub.engine.has_store(item_type):
            return self._start(tx, pending)
        # Load the store without holding up this connection's later messages (pings,
        # cancels); a cancel or window update meanwhile is applied to `pending`.
        self.loading[tx] = pending
        task = asyncio.get_running_loop().create_task(self._load_then_start(tx, pending))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load_then_start(self, tx: str, pending: _Pending) -> None:
        try:
            await self.hub.ensure_store(pending.item_type)
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
            update = self.hub.engine.subscribe_query(
                self, tx, pending.item_type, pending.flt, pending.window
            )
        except WindowError as exc:
            self._forget(tx)
            return self.send(
                pending.error, {"tx": tx, pending.id_key: pending.op_id, "message": str(exc)}
            )
        self.hub.deliver([update])

    def _static_servers(self, op_id: str, tx: str, response: str) -> None:
        items = self.backend.servers(op_id, self.address)
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
        try:
            if tx in self.loading:  # checked now, as on a loaded store, applied on start
                parse_window(data["window"])
                self.loading[tx].window = data["window"]
                return
            update = self.hub.engine.set_window(self, tx, data["window"])
        except WindowError as exc:
            kind = "view" if event == ev.VIEW_WINDOW else "query"
            return self.send(
                f"ws:m:{kind}-error",
                {"tx": tx, f"{kind}Id": self.op_ids.get(tx), "message": str(exc)},
            )
        self.hub.deliver([update])

    async def _report(self, data: Any, again: bool = False) -> None:
        """Start (or replace) a live report; `again`: resolve it for a new user, which
        sends a value only when it changed."""
        request = data.get("report") if isinstance(data, dict) else None
        tx = request.get("tx") if isinstance(request, dict) else None
        report_id = data.get("reportId") if isinstance(data, dict) else None
        if not isinstance(tx, str):
            return self._bad("ws:m:report without report.tx")
        try:
            user, spec = self.user, None
            # Again if set_user ran while a store loaded: its pass did not see this report.
            while spec is None or user is not self.user:
                user = self.user
                spec = self.backend.resolve_report(report_id, request, user)
                for item_type in spec.item_types:
                    await self.hub.ensure_store(item_type)
            if self.closed:
                return  # closed while its stores loaded: nothing to subscribe
            if again and self.hub.engine.subscription_key(self, tx) == spec.key:
                return
            self._forget(tx)
            update = self.hub.engine.subscribe_report(self, tx, spec)
            self.requests[tx] = (ev.REPORT, data)
        except (OperationError, ItemError) as exc:
            message = str(exc)
        except Exception as exc:  # a user report that raises on first computation
            logger.exception("myko: report %s failed", report_id)
            message = f"{report_id} failed: {exc}"
        else:
            return self.hub.deliver([update])
        if again:
            self._forget(tx)
            self.hub.engine.cancel(self, tx)
        self.send(ev.REPORT_ERROR, {"tx": tx, "reportId": report_id, "message": message})

    # ---- commands and client events, one at a time in arrival order --------------------

    async def _run_work(self) -> None:
        while True:
            event, data = await self._work.get()
            try:
                if event == ev.COMMAND:
                    await self._command(data)
                else:
                    await self._events(event, data)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("myko: connection %s: %s failed", self.id, event)
            finally:
                self._in_flight -= 1

    async def _command(self, data: Any) -> None:
        request = data.get("command") if isinstance(data, dict) else None
        tx = request.get("tx") if isinstance(request, dict) else None
        command_id = data.get("commandId") if isinstance(data, dict) else None
        if not isinstance(tx, str):
            return self._bad("ws:m:command without command.tx")
        # Shielded: a client that vanishes mid-command does not cancel the transaction.
        job = self.backend.run_command(
            command_id, request, tx=tx, user=self.user, source_id=self.id
        )
        running = asyncio.ensure_future(job)
        # If this connection closes meanwhile, nobody awaits it: take its outcome anyway
        # (no "Task exception was never retrieved" for a command that failed after that).
        running.add_done_callback(_retrieve)
        try:
            response, position = await asyncio.shield(running)
        except CommandRejected as exc:
            return self.send(
                ev.COMMAND_ERROR, {"tx": tx, "commandId": command_id, "message": str(exc)}
            )
        # Updates first (docs/protocol.md, "Read-your-writes"), also to subscriptions whose
        # snapshot is still loading.
        await self.hub.catch_up(position)
        if self._loads:
            await asyncio.wait(list(self._loads))
        if not self.send(ev.COMMAND_RESPONSE, {"response": response, "tx": tx}):
            message = (
                f"{command_id} returned a value that cannot be sent as {self.fmt} or is over "
                f"the message limit of {self.limits.message_size} bytes (MAX_MESSAGE_SIZE)"
            )
            self.send(ev.COMMAND_ERROR, {"tx": tx, "commandId": command_id, "message": message})

    async def _events(self, event: str, data: Any) -> None:
        batch = data if event == ev.EVENT_BATCH else [data]
        if not isinstance(batch, list):
            return self._bad("ws:m:event-batch data must be a list")
        if not self.backend.allow_client_events:
            for e in batch:
                self._event_error(e, "This server does not accept events from clients")
            return
        try:
            position, rejected = await self.backend.apply_events(
                batch, user=self.user, source_id=self.id
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never silence: each event of the batch hears of it
            logger.exception("myko: connection %s: event batch failed", self.id)
            # Not its text: an unexpected error's message may quote what a client may not see.
            message = f"The server failed to apply the events ({type(exc).__name__})"
            for e in batch:
                self._event_error(e, message)
            return
        for _, e, message in rejected:
            logger.info("myko: connection %s: rejected event: %s", self.id, message)
            self._event_error(e, message)
        await self.hub.catch_up(position)

    def _event_error(self, event: Any, message: str) -> None:
        event = event if isinstance(event, dict) else {}
        tx = event.get("tx") if isinstance(event.get("tx"), str) else None
        self.send(ev.EVENT_ERROR, {"tx": tx, "itemType": event.get("itemType"), "message": message})
