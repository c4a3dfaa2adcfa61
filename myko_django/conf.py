"""The MYKO settings dict, read with defaults so a project runs with nothing configured."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
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


# ---- what each value must be (checked at start-up by myko_django.checks) ----------------


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _servers(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(s, dict) and isinstance(s.get("id"), str) for s in value
    )


def _layer_alias(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    # The default alias may be left unconfigured: one process needs no layer.
    return value == DEFAULT_CHANNEL_LAYER or value in getattr(settings, "CHANNEL_LAYERS", {})


EXPECTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ALLOW_CLIENT_EVENTS": (lambda v: isinstance(v, bool), "True or False"),
    "COMMAND_RESULT_TTL": (_positive_number, "a positive number of seconds"),
    "MAX_MESSAGE_SIZE": (_positive_int, "a positive whole number of bytes"),
    "PEER_SERVERS": (_servers, 'a list of server dicts, each with a string "id"'),
    "CHANNEL_LAYER": (
        _layer_alias,
        f"the name of a CHANNEL_LAYERS alias (or {DEFAULT_CHANNEL_LAYER!r})",
    ),
    "POLL_INTERVAL": (_positive_number, "a positive number of seconds"),
}


def problem(name: str, value: Any) -> str | None:
    """What a MYKO value should be when `value` is wrong for `name`, else None."""
    accepts, expected = EXPECTED[name]
    return None if accepts(value) else expected
