"""What leaves a connection: no message over the frame limit, and no unbounded queue.

Large results (docs/protocol.md, "Large results"): daphne refuses to send a message over
its `--websocket-max-message-size` (which is MAX_MESSAGE_SIZE), and what it refuses is
gone. So a query response that would be larger is sent as several responses, each an
ordinary next sequence, that together say what the one would have said; what cannot be
split (one item, or the deletes alone, over the limit) ends the subscription with its
error instead (`TooLarge`).

Slow readers (docs/protocol.md, "Slow readers"): `Backpressure` is told by the socket's
transport when its write buffer fills and when it has drained, so the endpoint's Outbox
holds frames itself meanwhile, counts their bytes, and closes the connection with 1013
when they pass MAX_QUEUED_BYTES.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from myko_django.live.updates import QueryUpdate, SharedItems
from myko_django.server.fanout import encode_query_response, encoded_upserts

# Room kept in each part for what the budget below does not measure (the tx and the
# sequence number, which differ per subscriber).
_SLACK = 64


class TooLarge(Exception):
    """A message over the frame limit that cannot be split; its text goes to the client."""


def frame_size(frame: str | bytes) -> int:
    """Bytes of a frame on the wire (a text frame's UTF-8 bytes)."""
    if isinstance(frame, bytes):
        return len(frame)
    return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))


@dataclasses.dataclass(slots=True, eq=False)
class QueryPart(QueryUpdate):
    """One part of a split response: `more` is true on every part but the last (an
    extension a client may use to apply the parts as one; others ignore it)."""

    more: bool = False


def query_frames(update: QueryUpdate, fmt: str, event: str, limit: int) -> list[str | bytes]:
    """The frames of one query (or view) response, each at most `limit` bytes.

    One frame when it fits. Otherwise the upserts are cut into parts that fit: the first
    part is `update.sequence` with every delete, the later ones are the next sequences
    (the caller shifts its later sequences by len - 1). Every part carries the final
    `totalCount` (and `window`); a windowed one's `windowOrder` lists the page's ids
    without those still to come, so a client is consistent after each part. Raises
    TooLarge when a single item, or the response without upserts, is over the limit."""
    frame = encode_query_response(update, fmt, event)
    if frame_size(frame) <= limit:
        return [frame]
    plan = _plan(update, fmt, event, limit)
    last = len(plan) - 1
    return [
        encode_query_response(
            QueryPart(
                update.conn,
                update.tx,
                update.sequence + i,
                items,
                deletes,
                update.total_count,
                update.window,
                changes,
                more=i < last,
            ),
            fmt,
            event,
        )
        for i, (items, deletes, changes) in enumerate(plan)
    ]


def _plan(
    update: QueryUpdate, fmt: str, event: str, limit: int
) -> list[tuple[SharedItems, list[str], list[dict] | None]]:
    """(items, deletes, changes) of each part; kept with the shared items, so every
    subscriber of one live result splits it the same way and shares the parts' encodings."""
    key = ("split", fmt, event, limit, id(update.deletes), id(update.changes))
    cache = update.upserts.cache
    entry = cache.get(key)
    if entry is not None and entry[0] is update.deletes and entry[1] is update.changes:
        return entry[2]
    empty = SharedItems(update.upserts.item_type, ())
    bare = QueryPart(
        update.conn,
        update.tx,
        update.sequence,
        empty,
        update.deletes,
        update.total_count,
        update.window,
        update.changes,
        more=True,
    )
    overhead = frame_size(encode_query_response(bare, fmt, event)) + _SLACK
    budget = limit - overhead
    if budget <= 2:
        raise TooLarge(
            f"the response's deletes and window alone are {overhead} bytes, over the "
            f"{limit}-byte message limit (MAX_MESSAGE_SIZE)"
        )
    chunks = _fit(update.upserts, fmt, budget, limit)
    plan = []
    last = len(chunks) - 1
    to_come: set[str] = set()  # ids of the parts after this one
    for i in range(last, -1, -1):
        chunk = chunks[i]
        deletes = update.deletes if i == 0 else []
        plan.append((chunk, deletes, _changes(update.changes, to_come, i == last)))
        if update.changes is not None:
            to_come.update(str(item["id"]) for item in chunk.items)
    plan.reverse()
    cache[key] = (update.deletes, update.changes, plan)
    return plan


def _fit(upserts: SharedItems, fmt: str, budget: int, limit: int) -> list[SharedItems]:
    """The items cut into consecutive parts whose encoded upserts fit `budget`, by halving."""
    out: list[SharedItems] = []
    todo = [upserts.items]
    while todo:
        items = todo.pop()
        part = SharedItems(upserts.item_type, items)
        size = frame_size(encoded_upserts(part, fmt))
        if size <= budget:
            out.append(part)
        elif len(items) == 1:
            raise TooLarge(
                f"{upserts.item_type} {str(items[0].get('id'))!r:.80} is {size} bytes encoded, "
                f"over the {limit}-byte message limit (MAX_MESSAGE_SIZE)"
            )
        else:
            half = len(items) // 2
            todo.append(items[half:])
            todo.append(items[:half])  # popped first: the parts stay in order
    return out


def _changes(changes: list[dict] | None, to_come: set[str], last: bool) -> list[dict] | None:
    """The changes of one part: a windowOrder lists only ids the client has after it."""
    if changes is None:
        return None
    out = []
    for change in changes:
        if isinstance(change, dict) and change.get("kind") == "windowOrder":
            ids = change.get("ids") or []
            out.append(
                {**change, "ids": [i for i in ids if i not in to_come]} if to_come else change
            )
        elif last:
            out.append(change)
    return out


class Backpressure:
    """A Twisted push producer on one socket's transport (under daphne): the transport
    calls `pauseProducing` when its write buffer passes its size (64 KiB) and
    `resumeProducing` once it has written it all, and `stopProducing` when the socket is
    gone. ASGI itself has no flow control; this is the one place that needs daphne's.

    The producer already there (Twisted's HTTP channel, which the WebSocket was upgraded
    from: it stops reading the socket while the buffer is full) is told everything too."""

    def __init__(
        self, pause: Callable[[], None], resume: Callable[[], None], previous: Any
    ) -> None:
        self.pause, self.resume, self.previous = pause, resume, previous

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's interface
        self.pause()
        if self.previous is not None:
            self.previous.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.resume()
        if self.previous is not None:
            self.previous.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        previous = self.previous
        self.forget()
        if previous is not None:
            previous.stopProducing()

    def forget(self) -> None:
        """Hold nothing of the connection any more (its Outbox, its frames)."""
        self.pause = self.resume = _nothing
        self.previous = None


def _nothing() -> None:
    return None


def transport_of(send: Any) -> Any:
    """The Twisted transport of a socket daphne serves, from the `send` it gave the
    application (a partial of its server's `handle_reply` over the socket's protocol), or
    None anywhere else (tests in process, another server)."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    transport = getattr(send.args[0], "transport", None)
    if transport is None or not hasattr(transport, "registerProducer"):
        return None
    return transport


def watch(send: Any, pause: Callable[[], None], resume: Callable[[], None]) -> bool:
    """Have `pause`/`resume` called as the socket behind `send` fills and drains; False
    where that cannot be known (not daphne, or a socket already gone)."""
    transport = transport_of(send)
    if transport is None or getattr(transport, "disconnected", True):
        return False
    previous = getattr(transport, "producer", None)
    if previous is not None and not getattr(transport, "streamingProducer", False):
        return False  # a pull producer: not ours to wrap
    if previous is not None:
        transport.unregisterProducer()
    transport.registerProducer(Backpressure(pause, resume, previous), True)
    return True


def unwatch(send: Any) -> None:
    """Undo `watch` when the application is done with the socket (the previous producer
    goes back); the transport drops its producer itself when the socket closes first."""
    transport = transport_of(send)
    producer = getattr(transport, "producer", None)
    if isinstance(producer, Backpressure):
        previous = producer.previous
        producer.forget()
        transport.unregisterProducer()
        if previous is not None and not getattr(transport, "disconnected", True):
            transport.registerProducer(previous, True)
