"""The MYKO settings dict, read with defaults so a project runs with nothing configured."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Let clients publish ws:m:event / ws:m:event-batch (docs/protocol.md, "Events").
    "ALLOW_CLIENT_EVENTS": True,
    # How long a committed command's response is kept for idempotent retries (seconds).
    "COMMAND_RESULT_TTL": 24 * 3600,
    # Largest WebSocket message accepted (bytes); larger closes with 1009.
    "MAX_MESSAGE_SIZE": 16 * 1024 * 1024,
    # Other servers a client should fail over to (GetPeerServers), as dicts.
    "PEER_SERVERS": [],
    # The `id` GetConnectedServer gives this worker; None: a random one per process, which
    # tells a client nothing about the host (e.g. f"{socket.gethostname()}-{os.getpid()}").
    "SERVER_NAME": None,
    # The Channels layer alias the hub uses for fan-out between worker processes.
    "CHANNEL_LAYER": "default",
    # A hub that hears nothing for this long reads the log itself (seconds).
    "POLL_INTERVAL": 1.0,
    # Who a connection is: tried in order, the first that knows the user wins (dotted paths).
    "AUTHENTICATORS": [
        "myko_django.auth.SessionAuthenticator",
        "myko_django.auth.TokenAuthenticator",
    ],
    # How long an issued access token is valid (seconds).
    "TOKEN_MAX_AGE": 7 * 24 * 3600,
    # How often open connections' users are checked again: logged out, deactivated,
    # expired or with changed permissions (seconds).
    "AUTH_RECHECK_INTERVAL": 0.5,
    # Who may do what: the permission class of every item type and operation without one.
    "DEFAULT_PERMISSION": "myko_django.permissions.DjangoModelPermissions",
    # Item type name -> permission class (dotted path or class), overriding the default.
    "PERMISSIONS": {},
    # Per connection: open subscriptions, commands waiting or running, incoming messages
    # per second (sustained; bursts up to the same number), items in one event batch, ids
    # in one request.
    "MAX_SUBSCRIPTIONS": 10_000,
    "MAX_COMMANDS_IN_FLIGHT": 1_000,
    "MAX_MESSAGES_PER_SECOND": 5_000,
    "MAX_BATCH_ITEMS": 10_000,
    "MAX_IDS": 10_000,
    # Bytes of frames one connection may have waiting while its client reads slower than
    # it is sent to; more closes it with 1013 (docs/protocol.md, "Slow readers").
    "MAX_QUEUED_BYTES": 64 * 1024 * 1024,
    # Operations (myko_django.urls): /metrics answers only when this is True (it needs
    # prometheus-client, the `metrics` extra).
    "METRICS": False,
    # /readyz answers 503 while this worker's hub is more positions than this behind the log.
    "READY_MAX_LAG": 1000,
    # On SIGTERM, how long running commands get before the sockets close anyway (seconds).
    "DRAIN_TIMEOUT": 5.0,
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


def _dotted_paths(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(_class_or_path(v) for v in value)


def _class_or_path(value: Any) -> bool:
    return isinstance(value, type) or (isinstance(value, str) and "." in value)


def _permissions_by_type(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and _class_or_path(v) for k, v in value.items()
    )


EXPECTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ALLOW_CLIENT_EVENTS": (lambda v: isinstance(v, bool), "True or False"),
    "COMMAND_RESULT_TTL": (_positive_number, "a positive number of seconds"),
    "MAX_MESSAGE_SIZE": (_positive_int, "a positive whole number of bytes"),
    "PEER_SERVERS": (_servers, 'a list of server dicts, each with a string "id"'),
    "SERVER_NAME": (
        lambda v: v is None or (isinstance(v, str) and v != ""),
        "None or a non-empty string",
    ),
    "CHANNEL_LAYER": (
        _layer_alias,
        f"the name of a CHANNEL_LAYERS alias (or {DEFAULT_CHANNEL_LAYER!r})",
    ),
    "POLL_INTERVAL": (_positive_number, "a positive number of seconds"),
    "AUTHENTICATORS": (_dotted_paths, "a list of dotted paths to authenticator classes"),
    "TOKEN_MAX_AGE": (_positive_number, "a positive number of seconds"),
    "AUTH_RECHECK_INTERVAL": (_positive_number, "a positive number of seconds"),
    "DEFAULT_PERMISSION": (_class_or_path, "a permission class or its dotted path"),
    "PERMISSIONS": (
        _permissions_by_type,
        "a dict of item type name -> permission class or dotted path",
    ),
    "MAX_SUBSCRIPTIONS": (_positive_int, "a positive whole number"),
    "MAX_COMMANDS_IN_FLIGHT": (_positive_int, "a positive whole number"),
    "MAX_MESSAGES_PER_SECOND": (_positive_int, "a positive whole number"),
    "MAX_BATCH_ITEMS": (_positive_int, "a positive whole number"),
    "MAX_IDS": (_positive_int, "a positive whole number"),
    "MAX_QUEUED_BYTES": (_positive_int, "a positive whole number of bytes"),
    "METRICS": (lambda v: isinstance(v, bool), "True or False"),
    "READY_MAX_LAG": (_positive_int, "a positive whole number of positions"),
    "DRAIN_TIMEOUT": (_positive_number, "a positive number of seconds"),
}


def problem(name: str, value: Any) -> str | None:
    """What a MYKO value should be when `value` is wrong for `name`, else None."""
    accepts, expected = EXPECTED[name]
    return None if accepts(value) else expected
