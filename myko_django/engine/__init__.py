"""Live queries and reports over in-memory item stores: committed events in, diffs out.

Pure Python, single-threaded (one event-loop thread), no I/O. See PROTOCOL.md §3-§4.
"""

from .core import Engine
from .updates import (
    EngineError,
    Event,
    QueryUpdate,
    ReportSpec,
    ReportUpdate,
    SharedItems,
    Update,
    WindowError,
    parse_window,
)

__all__ = [
    "Engine",
    "EngineError",
    "Event",
    "QueryUpdate",
    "ReportSpec",
    "ReportUpdate",
    "SharedItems",
    "Update",
    "WindowError",
    "parse_window",
]
