"""The load generator of bench/fanout.py: subscriber processes and the writer's sockets.

Each client process holds many WebSocket connections on one asyncio loop. A connection is
the `websockets` library's Sans-I/O protocol under a plain `asyncio.Protocol`, so a frame
is parsed in the socket's callback without waking a task per message: on a 2-core machine
shared with the server, every microsecond the clients spend is taken from the server.

Every delivered item carries `name = "<seq>:<time_ns stamped by the writer>"`; a subscriber
keeps, per item, the highest seq seen and how many distinct ones arrived this step, which is
enough to count, exactly and per subscriber, what was delivered, coalesced, lost,
duplicated or reordered (see `Subscriber.account`).
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgpack
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

MAX_SIZE = 16 * 1024 * 1024
OPEN_PARALLEL = 50


class Socket(asyncio.Protocol):
    """One client WebSocket; `on_message(payload, is_text, received_ns)` per whole message.
    `token`: sent as `Authorization: Bearer <token>` in the handshake."""

    def __init__(
        self, url: str, on_message: Callable[[bytes, bool, int], None], token: str | None = None
    ) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=MAX_SIZE)
        self.on_message = on_message
        self.token = token
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._parts: list[bytes] = []
        self._text = False

    @classmethod
    async def open(
        cls, url: str, on_message: Callable[[bytes, bool, int], None], token: str | None = None
    ) -> Socket:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, sock = await loop.create_connection(
            lambda: cls(url, on_message, token), parts.hostname, parts.port
        )
        await asyncio.wait_for(sock.opened, 60)
        return sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = self.protocol.connect()
        if self.token is not None:
            request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                op = event.opcode
                if op is Opcode.TEXT or op is Opcode.BINARY:
                    if event.fin:
                        self.on_message(event.data, op is Opcode.TEXT, now)
                    else:
                        self._parts = [event.data]
                        self._text = op is Opcode.TEXT
                elif op is Opcode.CONT:
                    self._parts.append(event.data)
                    if event.fin:
                        self.on_message(b"".join(self._parts), self._text, now)
                        self._parts = []
            elif isinstance(event, Response) and not self.opened.done():
                if self.protocol.handshake_exc is not None:
                    self.opened.set_exception(self.protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()  # pongs, close replies

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(exc)

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def send_binary(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        self._flush()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.protocol.send_close(1000)
                self._flush()
            finally:
                self.transport.close()


def decode(payload: bytes, is_text: bool) -> Any:
    return json.loads(payload) if is_text else msgpack.unpackb(payload, raw=False)


def parse_name(name: str) -> tuple[int, int]:
    """`"<seq>:<stamp_ns>"` -> (seq, stamp); the seeded items are "0:0"."""
    seq, _, stamp = name.partition(":")
    return int(seq), int(stamp)


class Meter:
    """What one client process saw in the current step, across its subscribers."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, start_seq: int) -> None:
        self.start_seq = start_seq
        self.latencies = array("q")
        self.frames = 0
        self.updates = 0
        self.late = 0  # updates of an earlier step that arrived during this one
        self.first_ns = 0
        self.last_ns = 0


class Subscriber:
    """One subscription on one connection: per item [highest seq seen, distinct this step].

    By default a live `GetTargetsByQuery {category: value}` on an anonymous connection;
    `spec` may name another query (`queryId`, `queryItemType`, `query`: its parameters),
    a `token` for the connection and the `field` holding the writer's stamp."""

    __slots__ = (
        "index",
        "value",
        "items",
        "spec",
        "field",
        "state",
        "dups",
        "reordered",
        "foreign",
        "ready",
    )

    def __init__(self, index: int, value: str, items: list[str], spec: dict | None = None) -> None:
        self.index = index
        self.value = value  # the filter value (category)
        self.items = items  # ids of the items this subscription may and must see
        self.spec = spec or {}
        self.field = self.spec.get("field", "name")
        self.state: dict[str, list[int]] = {}
        self.dups = 0
        self.reordered = 0
        self.foreign = 0  # items outside the filter (must stay 0)
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()

    def seed(self, item: dict) -> None:
        seq, _ = parse_name(item[self.field])
        if item["id"] not in self.items:
            self.foreign += 1  # counted by do_open (a step starts from 0)
        self.state[item["id"]] = [seq, 0]

    def update(self, item: dict, now: int, meter: Meter) -> None:
        item_id = item["id"]
        seq, stamp = parse_name(item[self.field])
        st = self.state.get(item_id)
        if st is None:
            if item_id not in self.items:
                self.foreign += 1
            st = self.state[item_id] = [0, 0]
        if seq > st[0]:
            st[0] = seq
            if seq >= meter.start_seq:
                st[1] += 1
                meter.updates += 1
                meter.latencies.append(now - stamp)
            else:
                meter.late += 1
        elif seq == st[0]:
            self.dups += 1
        else:
            self.reordered += 1

    def new_step(self) -> None:
        for st in self.state.values():
            st[1] = 0
        self.dups = self.reordered = self.foreign = 0

    def done(self, final: dict[str, int]) -> bool:
        state = self.state
        for item_id in self.items:
            want = final.get(item_id)
            if want is not None and state.get(item_id, (0,))[0] < want:
                return False
        return True

    def account(self, writes: dict[str, list[int]]) -> dict[str, int]:
        """Against the step's writes (sorted seqs per item): a write is `received` if its
        own update arrived, `superseded` if it did not but a later write of the same item
        did (a coalescing server may do that), `stale` if nothing as new arrived at all."""
        out = {"expected": 0, "received": 0, "superseded": 0, "stale": 0, "stale_final": 0}
        for item_id in self.items:
            seqs = writes.get(item_id)
            if not seqs:
                continue
            last, got = self.state.get(item_id, (0, 0))
            upto = bisect_right(seqs, last)
            out["expected"] += len(seqs)
            out["received"] += got
            out["superseded"] += upto - got
            out["stale"] += len(seqs) - upto
            out["stale_final"] += last != seqs[-1]
        return out


# ---- one client process -----------------------------------------------------------------


class ClientProcess:
    """Runs in a child process: opens subscribers on command, measures, reports."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.meter = Meter()
        self.subs: list[Subscriber] = []
        self.sockets: list[Socket] = []
        self.kind = "myko"

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, self.pipe.recv)
            if command == "exit":
                self._close()
                self.pipe.send(("ok", None))
                return
            try:
                result = await getattr(self, f"do_{command}")(**args)
                self.pipe.send(("ok", result))
            except Exception as exc:  # report, keep serving: the parent decides
                self.pipe.send(("error", f"{type(exc).__name__}: {exc}"))

    # -- commands ----------------------------------------------------------------------

    async def do_open(self, kind: str, urls: list[str], subs: list[tuple], fmt: str) -> dict:
        """One connection per subscriber, `subs` as (index, value, items[, spec]) (see
        Subscriber); return once every subscription is live."""
        self._close()
        self.kind = kind
        self.subs = [Subscriber(*sub) for sub in subs]
        sem = asyncio.Semaphore(OPEN_PARALLEL)
        started = time.perf_counter()

        async def one(sub: Subscriber) -> Socket:
            async with sem:
                url = urls[sub.index % len(urls)]
                sock = await Socket.open(url, self._handler(sub), sub.spec.get("token"))
                self._subscribe(sock, sub, fmt)
                return sock

        self.sockets = list(await asyncio.gather(*(one(s) for s in self.subs)))
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in self.subs)), 120)
        return {
            "subscribers": len(self.subs),
            "seconds": time.perf_counter() - started,
            "foreign": sum(s.foreign for s in self.subs),  # in the snapshots
        }

    async def do_step(self, start_seq: int) -> None:
        self.meter.reset(start_seq)
        for sub in self.subs:
            sub.new_step()

    async def do_finish(
        self, writes: dict[str, list[int]], quiet: float, cap: float, flight: float = 0.0
    ) -> dict:
        """Wait until every subscriber holds the final write of each of its items, or until
        nothing arrived for `quiet` seconds (then what is missing stays missing), or `cap`."""
        final = {item: seqs[-1] for item, seqs in writes.items() if seqs}
        started = time.monotonic()
        pending = [s for s in self.subs if any(i in final for i in s.items)]
        while True:
            pending = [s for s in pending if not s.done(final)]
            now = time.monotonic()
            idle = (time.time_ns() - max(self.meter.last_ns, 0)) / 1e9
            if not pending or now - started > cap:
                break
            if now - started > quiet and idle > quiet:
                break
            await asyncio.sleep(0.05)
        totals = {"expected": 0, "received": 0, "superseded": 0, "stale": 0, "stale_final": 0}
        dups = reordered = foreign = 0
        for sub in self.subs:
            for k, v in sub.account(writes).items():
                totals[k] += v
            dups += sub.dups
            reordered += sub.reordered
            foreign += sub.foreign
        m = self.meter
        return {
            **totals,
            "duplicated": dups,
            "reordered": reordered,
            "foreign": foreign,
            "frames": m.frames,
            "updates": m.updates,
            "late": m.late,
            "first_ns": m.first_ns,
            "last_ns": m.last_ns,
            "latencies": m.latencies.tobytes(),
            "drain_s": time.monotonic() - started,
        }

    async def do_close(self) -> None:
        self._close()

    # -- subscribing and receiving -------------------------------------------------------

    def _subscribe(self, sock: Socket, sub: Subscriber, fmt: str) -> None:
        if self.kind == "myko":
            if fmt == "msgpack":
                sock.send_text("myko:switch-to-msgpack")
            spec = sub.spec
            message = {
                "event": "ws:m:query",
                "data": {
                    "query": {**spec.get("query", {"category": sub.value}), "tx": f"s{sub.index}"},
                    "queryId": spec.get("queryId", "GetTargetsByQuery"),
                    "queryItemType": spec.get("queryItemType", "Target"),
                },
            }
            if fmt == "msgpack":
                sock.send_binary(msgpack.packb(message))
            else:
                sock.send_text(json.dumps(message))
        elif self.kind == "dcrf":
            request = {"action": "subscribe_category", "category": sub.value, "request_id": 1}
            sock.send_text(json.dumps(request))
        else:  # ceiling: connected is subscribed
            sub.ready.set_result(None)

    def _handler(self, sub: Subscriber) -> Callable[[bytes, bool, int], None]:
        meter = self.meter
        if self.kind == "dcrf":

            def on_dcrf(payload: bytes, is_text: bool, now: int) -> None:
                message = json.loads(payload)
                action = message.get("action")
                if action == "update" or action == "create":
                    meter.frames += 1
                    if not meter.first_ns:
                        meter.first_ns = now
                    meter.last_ns = now
                    sub.update(message["data"], now, meter)
                elif action == "subscribe_category" and not sub.ready.done():
                    if message.get("response_status") == 201:
                        sub.ready.set_result(None)
                    else:
                        sub.ready.set_exception(RuntimeError(f"subscribe failed: {message}"))

            return on_dcrf

        def on_myko(payload: bytes, is_text: bool, now: int) -> None:
            message = decode(payload, is_text)
            if message.get("event") != "ws:m:query-response":
                if message.get("event") == "ws:m:query-error" and not sub.ready.done():
                    sub.ready.set_exception(RuntimeError(f"query failed: {message}"))
                return
            data = message["data"]
            if data["sequence"] == 0:  # a (fresh) snapshot replaces the state
                for entry in data["upserts"]:
                    sub.seed(entry["item"])
                if not sub.ready.done():
                    sub.ready.set_result(None)
                return
            meter.frames += 1
            if not meter.first_ns:
                meter.first_ns = now
            meter.last_ns = now
            for entry in data["upserts"]:
                sub.update(entry["item"], now, meter)

        return on_myko

    def _close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        self.subs = []


def client_main(pipe: Any) -> None:
    """Entry point of a forked client process."""
    try:
        import gc

        gc.freeze()  # the parent's objects: never scanned again in this process
    except Exception:  # noqa: BLE001
        pass
    asyncio.run(ClientProcess(pipe).main())


# ---- the writer's sockets (in the parent process) ------------------------------------------


class CommandSocket:
    """A writer connection to /myko: fires commands without waiting, counts the replies."""

    def __init__(self) -> None:
        self.sock: Socket | None = None
        self.outstanding: dict[str, int] = {}
        self.ok = 0
        self.errors: list[str] = []
        self.latencies_ns = array("q")
        self.idle = asyncio.Event()
        self.idle.set()

    @classmethod
    async def open(cls, url: str) -> CommandSocket:
        self = cls()
        self.sock = await Socket.open(url, self._on_message)
        return self

    def command(self, command_id: str, params: dict, tx: str) -> None:
        self.outstanding[tx] = time.perf_counter_ns()
        self.idle.clear()
        message = {"event": "ws:m:command", "data": {"command": {**params, "tx": tx}}}
        message["data"]["commandId"] = command_id
        assert self.sock is not None
        self.sock.send_text(json.dumps(message))

    def _on_message(self, payload: bytes, is_text: bool, now: int) -> None:
        message = decode(payload, is_text)
        data = message.get("data") or {}
        sent = self.outstanding.pop(data.get("tx"), None)
        if sent is None:
            return
        self.latencies_ns.append(time.perf_counter_ns() - sent)
        if message.get("event") == "ws:m:command-response":
            self.ok += 1
        else:
            self.errors.append(str(data.get("message")))
        if not self.outstanding:
            self.idle.set()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
