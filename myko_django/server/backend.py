"""The real database side of a connection: operations resolved from the item registry,
commands and client events run on the hub's database threads."""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from typing import Any

from myko_django import conf
from myko_django.items.operations import resolve_query, resolve_report
from myko_django.live.filters import Filter
from myko_django.live.updates import ReportSpec
from myko_django.log.commands import CommandError, run_command
from myko_django.log.writepath import apply_events
from myko_django.server import authentication, jobs, metrics
from myko_django.server.connection import CommandRejected, Limits
from myko_django.server.hub import Hub
from myko_django.version import __version__

STARTED_AT = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
# GetConnectedServer's id unless MYKO["SERVER_NAME"] names the worker: random, so that it
# reveals neither the host name nor the process id (docs/protocol.md, "Server queries").
SERVER_ID = f"myko-{secrets.token_hex(6)}"


def _run_command_as(token: Any, command_id: Any, request: Any, *, user: Any, **kwargs: Any) -> Any:
    """On a database thread: a command whose request carries a non-empty `userToken`
    (docs/protocol.md, "Users") runs as the user the authenticators find for it, and is
    refused when they find none; without one (or with ""), as the connection's user."""
    if isinstance(token, str) and token:
        user = authentication.user_for_token(token)
        if user is None:
            raise CommandError("Permission denied: invalid userToken")
    return run_command(command_id, request, user=user, **kwargs)


class DatabaseBackend:
    """The database side of the connections of one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # One per connection: an anonymous client's command tx values are its own
        # (log/commands.py _user_key), not shared with every other anonymous client.
        self.anonymous_key = uuid.uuid4().hex

    @property
    def allow_client_events(self) -> bool:
        return bool(conf.get("ALLOW_CLIENT_EVENTS"))

    @property
    def limits(self) -> Limits:
        """The MAX_* settings; a connection reads them once, when it opens."""
        return Limits(
            subscriptions=conf.get("MAX_SUBSCRIPTIONS"),
            commands_in_flight=conf.get("MAX_COMMANDS_IN_FLIGHT"),
            messages_per_second=conf.get("MAX_MESSAGES_PER_SECOND"),
            batch_items=conf.get("MAX_BATCH_ITEMS"),
            ids=conf.get("MAX_IDS"),
            message_size=conf.get("MAX_MESSAGE_SIZE"),
        )

    def resolve_query(
        self, query_id: Any, item_type: Any, request: Any, user: Any
    ) -> tuple[str, Filter]:
        return resolve_query(query_id, item_type, request, user)

    def resolve_report(self, report_id: Any, request: Any, user: Any) -> ReportSpec:
        return resolve_report(report_id, request, user)

    async def run_command(
        self, command_id: Any, request: Any, *, tx: str, user: Any, source_id: str
    ) -> tuple[Any, int]:
        token = request.get("userToken") if isinstance(request, dict) else None
        started, result = time.perf_counter(), "error"
        try:
            outcome = await self.hub.db_for(
                source_id,
                False,
                _run_command_as,
                token,
                command_id,
                request,
                tx=tx,
                user=user,
                source_id=source_id,
                anonymous_key=self.anonymous_key,
            )
            result = "ok"
        except CommandError as exc:
            raise CommandRejected(str(exc)) from None
        finally:
            metrics.COUNTS.commands[result].observe(time.perf_counter() - started)
        return outcome.response, outcome.position

    async def apply_events(
        self, events: list[Any], *, user: Any, source_id: str
    ) -> tuple[int, list[tuple[int, Any, str]]]:
        heavy = len(events) > jobs.HEAVY_EVENTS  # may hold only half the threads
        return await self.hub.db_for(
            source_id, heavy, apply_events, events, user=user, source_id=source_id
        )

    def servers(self, op_id: str, address: tuple[str, int] | None) -> list[dict]:
        if op_id == "GetConnectedServer":
            host, port = address or ("", 0)
            server = {
                "id": conf.get("SERVER_NAME") or SERVER_ID,
                "version": __version__,
                "address": host,
                "port": port,
                "startedAt": STARTED_AT,
            }
            return [server]
        return list(conf.get("PEER_SERVERS"))
