"""The committed-event type: what the log hands the live layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CommittedEvent:
    """One committed SET/DEL from the event log, at its log position."""

    position: int
    item_type: str
    item_id: str
    change_type: str
    item: dict | None
