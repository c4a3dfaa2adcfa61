"""The channel layer as a doorbell between processes: after commit, the writing process
sends its events to one group; each worker's hub is that group's only member.

Best effort by design (channels-redis drops messages to full channels, Redis may be
down): the log is the truth, and a worker repairs gaps and polls (hub.py).

Signed (docs/architecture.md, "Trusting the doorbell"): whoever can write to the channel
layer is not thereby trusted to say what the log holds. Each message carries an
HMAC-SHA256 of its events, keyed from SECRET_KEY and the group; a listener drops (and
counts) a message whose signature is missing or wrong, so a forged one is never applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import Sequence
from typing import Any

import msgpack
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from django.conf import settings
from django.db import connections

from myko_django import conf
from myko_django.live.committed import CommittedEvent
from myko_django.server import metrics

try:
    from channels_redis.pubsub import RedisPubSubChannelLayer
except ImportError:  # channels-redis is optional: without it there is no doorbell to close
    RedisPubSubChannelLayer = ()

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "myko.events"

# Hubs running in this process; each rings the doorbell itself for what commits here.
_hubs_ringing = 0


def hub_rings(running: bool) -> None:
    """A hub starts (True) or stops (False) ringing for this process."""
    global _hubs_ringing
    _hubs_ringing += 1 if running else -1


def layer() -> Any | None:
    """The configured cross-process layer, or None (no layer, or the in-memory one, which
    cannot reach other processes: in-process publication already covers its job)."""
    found = get_channel_layer(conf.get("CHANNEL_LAYER"))
    if found is None or isinstance(found, InMemoryChannelLayer):
        return None
    return found


def _private_layer() -> Any | None:
    """A layer instance of the listener's own: channels-redis binds a layer's receive lock
    to the first event loop that receives, and the shared instance outlives loops (tests,
    a restarted hub)."""
    if layer() is None:
        return None
    return channel_layers.make_backend(conf.get("CHANNEL_LAYER"))


def group_name(using: str = "default") -> str:
    """One group per database: two projects (or test runs) sharing a Redis never mix logs."""
    settings = connections[using].settings_dict
    identity = f"{settings.get('HOST')}:{settings.get('PORT')}/{settings.get('NAME')}"
    digest = hashlib.sha1(identity.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", str(settings.get("NAME")))[-40:]
    return f"myko.events.{name}.{digest}"


def _keys(group: str) -> list[bytes]:
    """The signing key of `group` (first), then those of SECRET_KEY_FALLBACKS, which are
    still accepted so that workers restarted with a rotated key keep hearing each other."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    return [_key(group, str(secret)) for secret in secrets]


_key_cache: dict[tuple[str, str], bytes] = {}


def _key(group: str, secret: str) -> bytes:
    key = _key_cache.get((group, secret))
    if key is None:
        material = f"myko.doorbell\0{group}\0{secret}".encode()
        key = _key_cache[(group, secret)] = hashlib.sha256(material).digest()
    return key


def _signed_bytes(rows: Any, at: Any) -> bytes:
    """What is signed: the events and the commit time, as MessagePack. channels-redis
    carries a message as MessagePack too, so a listener gets back values that pack to the
    same bytes (tuples come back as lists, which pack alike)."""
    return msgpack.packb([at, rows], use_bin_type=True)


def to_message(
    events: Sequence[CommittedEvent], at: float | None = None, group: str | None = None
) -> dict:
    """`at`: when the first of them committed (time.time()), for the fan-out lag metric;
    `group`: the group it is sent to (its key signs the message)."""
    rows = [[e.position, e.item_type, e.item_id, e.change_type, e.item] for e in events]
    message: dict[str, Any] = {"type": MESSAGE_TYPE, "events": rows}
    if at is not None:
        message["at"] = at
    key = _keys(group or group_name())[0]
    message["sig"] = hmac.new(key, _signed_bytes(rows, at), hashlib.sha256).digest()
    return message


def from_message(message: dict, group: str | None = None) -> list[CommittedEvent] | None:
    """The events of a message signed for `group`; None (refused) when its signature is
    missing or does not match: the channel layer is not the truth."""
    sig, rows = message.get("sig"), message.get("events")
    if not isinstance(sig, bytes) or not isinstance(rows, list):
        return None
    try:
        signed = _signed_bytes(rows, message.get("at"))
    except (TypeError, ValueError, OverflowError):
        return None
    for key in _keys(group or group_name()):
        if hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), sig):
            try:
                return [CommittedEvent(*row) for row in rows]
            except TypeError:
                return None  # signed by a process of another version: let the log say
    return None


async def ring(
    events: Sequence[CommittedEvent], using: str = "default", *, at: float | None = None
) -> None:
    """Send committed events to every worker (from a process with an event loop)."""
    target = layer()
    if target is None:
        return
    try:
        group = group_name(using)
        await target.group_send(group, to_message(events, at, group))
    except Exception as exc:  # the log is the truth; workers poll it
        metrics.COUNTS.doorbell_ring_failures += 1
        logger.warning("myko: could not ring the doorbell (%s); workers will poll the log", exc)


def ring_from_thread(events: Sequence[CommittedEvent]) -> None:
    """The `publish` listener of processes without a hub (WSGI, management commands).

    Where a hub runs, it rings itself (without blocking a thread on Redis)."""
    if _hubs_ringing or layer() is None:
        return
    try:
        asyncio.get_running_loop()
        return  # never block an event loop; its process's hub rings
    except RuntimeError:
        pass
    async_to_sync(ring)(events)


def _refused() -> None:
    """Count a refused message; log the 1st, 2nd, 4th, 8th... (a flood is not a log flood)."""
    counts = metrics.COUNTS
    counts.doorbell_refused += 1
    if counts.doorbell_refused & (counts.doorbell_refused - 1) == 0:
        logger.warning(
            "myko: refused %d channel-layer message(s) without a valid signature (a worker "
            "with another SECRET_KEY, or forged); the log is read instead",
            counts.doorbell_refused,
        )


class Listener:
    """A worker's membership of the group: hands arriving events to
    `on_events(events, at)` (`at`: when the first committed, None if the ringer did not say)."""

    REJOIN_EVERY = 3600.0  # group memberships expire (channels-redis group_expiry: 1 day)

    def __init__(self, on_events, using: str = "default") -> None:
        self.on_events = on_events
        self.group = group_name(using)
        self.layer = _private_layer()
        self.task: asyncio.Task | None = None
        self.joined = asyncio.Event()  # set once the group membership is in place

    def start(self) -> None:
        if self.layer is not None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        try:
            await self._listen()
        finally:
            await self._close_connections()

    async def _close_connections(self) -> None:
        """Close this private layer's Redis connections (never `flush()` the list-based
        layer: that deletes every message and group under its prefix)."""
        if isinstance(self.layer, RedisPubSubChannelLayer):
            close = self.layer.flush  # pub/sub: forgets local state, closes connections
        else:
            close = getattr(self.layer, "close_pools", None)
        if close is not None:
            try:
                await asyncio.shield(close())
            except Exception:  # noqa: BLE001 - Redis may be down; nothing to keep
                pass

    async def _listen(self) -> None:
        channel = None
        joined_at = 0.0
        delay = 0.1
        loop = asyncio.get_running_loop()
        while True:
            try:
                if channel is None or loop.time() - joined_at > self.REJOIN_EVERY:
                    channel = channel or await self.layer.new_channel("myko-hub.")
                    await self.layer.group_add(self.group, channel)
                    joined_at = loop.time()
                    self.joined.set()
                message = await self.layer.receive(channel)
                delay = 0.1
                if message.get("type") == MESSAGE_TYPE:
                    events = from_message(message, self.group)
                    if events is None:
                        _refused()
                        continue
                    at = message.get("at")
                    self.on_events(events, at if isinstance(at, float) else None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.COUNTS.doorbell_listen_failures += 1
                logger.warning(
                    "myko: channel layer unavailable (%s); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                joined_at = 0.0
