"""The myko envelope `{event, data}`: event names, keys that are never parameters, and
the window a client may put on a query (docs/protocol.md, "Envelope" and "Windows"). One
definition for the server and the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Client -> server
QUERY = "ws:m:query"
QUERY_CANCEL = "ws:m:query-cancel"
QUERY_WINDOW = "ws:m:query-window"
VIEW = "ws:m:view"
VIEW_CANCEL = "ws:m:view-cancel"
VIEW_WINDOW = "ws:m:view-window"
REPORT = "ws:m:report"
REPORT_CANCEL = "ws:m:report-cancel"
COMMAND = "ws:m:command"
EVENT = "ws:m:event"
EVENT_BATCH = "ws:m:event-batch"
BENCHMARK = "ws:m:benchmark"
# Both ways
PING = "ws:m:ping"
# Server -> client
QUERY_RESPONSE = "ws:m:query-response"
QUERY_ERROR = "ws:m:query-error"
VIEW_RESPONSE = "ws:m:view-response"
VIEW_ERROR = "ws:m:view-error"
REPORT_RESPONSE = "ws:m:report-response"
REPORT_ERROR = "ws:m:report-error"
COMMAND_RESPONSE = "ws:m:command-response"
COMMAND_ERROR = "ws:m:command-error"
EVENT_ERROR = "ws:m:event-error"
PROTOCOL_SWITCH = "ws:m:protocol-switch"

SERVER_TO_CLIENT = frozenset(
    {
        QUERY_RESPONSE,
        QUERY_ERROR,
        VIEW_RESPONSE,
        VIEW_ERROR,
        REPORT_RESPONSE,
        REPORT_ERROR,
        COMMAND_RESPONSE,
        COMMAND_ERROR,
        EVENT_ERROR,
        PROTOCOL_SWITCH,
    }
)

# Queries the server answers itself, before any item type's operations.
SERVER_QUERIES = frozenset({"GetConnectedServer", "GetPeerServers"})

# The text frame that switches a JSON connection to MessagePack, and the server's answer.
SWITCH_TEXT = "myko:switch-to-msgpack"
SWITCH_REPLY = '{"event":"ws:m:protocol-switch","data":{"protocol":"msgpack"}}'

# Keys of a request that are envelope data, never query filters or command parameters.
RESERVED_KEYS = frozenset({"tx", "createdAt", "seq", "userToken"})

# Request data newer clients add next to the parameters (docs/protocol.md, "Envelope"). The
# parameters of GetXsByQuery / CountXs are a filter, where any other key that is not a
# field of the item type is an error; these are tolerated there unless they name a field.
EXTENSION_KEYS = frozenset({"serviceId"})


class WindowError(ValueError):
    """A window that is not `{offset, limit}` with non-negative integers, or null."""


def parse_window(window: Any) -> tuple[int, int] | None:
    """Validate a client window; None removes it. Raises WindowError with a clear message."""
    if window is None:
        return None
    if not isinstance(window, Mapping):
        raise WindowError(f"window must be an object {{offset, limit}} or null, got {window!r}")
    offset = window.get("offset", 0)
    limit = window.get("limit")
    for name, v in (("offset", offset), ("limit", limit)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise WindowError(
                f"window {name} must be a non-negative integer below 2**63, got {v!r:.40}"
            )
    return offset, limit
