"""The MYKO settings dict, read with defaults so a project runs with nothing configured."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Let clients publish ws:m:event / ws:m:event-batch (PROTOCOL.md §6).
    "ALLOW_CLIENT_EVENTS": True,
    # How long a committed command's response is kept for idempotent retries (seconds).
    "COMMAND_RESULT_TTL": 24 * 3600,
    # Largest WebSocket message accepted (bytes); larger closes with 1009.
    "MAX_MESSAGE_SIZE": 16 * 1024 * 1024,
    # Other servers a client should fail over to (GetPeerServers), as dicts.
    "PEER_SERVERS": [],
    # The Channels layer alias the hub uses for fan-out between worker processes.
    "CHANNEL_LAYER": "default",
    # A hub that hears nothing for this long reads the log itself (seconds).
    "POLL_INTERVAL": 1.0,
}


def get(name: str) -> Any:
    """One MYKO setting, falling back to its documented default."""
    if name not in DEFAULTS:
        raise KeyError(f"Unknown MYKO setting {name!r}; known: {', '.join(sorted(DEFAULTS))}")
    return getattr(settings, "MYKO", {}).get(name, DEFAULTS[name])
