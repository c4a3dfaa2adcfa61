"""Running a command: one transaction, idempotent by (commandId, tx, user), checked
against the parameters it was first run with (docs/protocol.md, "Commands")."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from myko_django import conf
from myko_django.items import permissions
from myko_django.items.errors import ItemError, OperationError
from myko_django.items.operations import resolve_command
from myko_django.items.registry import registry
from myko_django.log import retry
from myko_django.log.capture import write_transaction
from myko_django.log.tables import CommandResult
from myko_django.log.writepath import Change, apply, apply_sets, create, db_message, writer_guard
from myko_django.wire.envelope import RESERVED_KEYS

logger = logging.getLogger(__name__)


class CommandError(Exception):
    """A command that failed; its message goes to the client as ws:m:command-error."""


@dataclass(frozen=True)
class Outcome:
    response: Any
    position: int  # last log position the command committed (0: it changed nothing)
    replayed: bool = False  # True when a stored response was returned instead of running


class CommandContext:
    """What a handler gets besides its parameters: reads, SET/DEL, nested commands."""

    def __init__(self, command_id: str, tx: str, user: Any, using: str) -> None:
        self.command_id = command_id
        self.tx = tx
        self.user = user
        self.using = using

    def model(self, item_type: str):
        """The Django model of an item type; its ORM writes are logged like any other."""
        return registry.get(item_type).model

    def get(self, item_type: str, item_id: str) -> dict | None:
        it = registry.get(item_type)
        row = it.model._base_manager.using(self.using).filter(pk=it.decode_id(item_id)).first()
        return None if row is None else it.encode(row)

    def set(self, item_type: str, item: dict) -> dict:
        """SET: replace the whole item (create it if new); returns it as stored.

        As for a client: a key naming a field kept off the wire (`fields` / `exclude`) is
        refused; an existing row keeps those fields' values, a new row gets their defaults.
        To write such a field, use the model (`ctx.model(item_type)`)."""
        return apply(Change("SET", item_type, item), using=self.using)

    def create(self, item_type: str, item: dict, *, checked: bool = False) -> dict:
        """Create an item whose id the server assigns (auto-increment, or the primary key's
        default); `item` has no `id`. Returns it as stored, new id included. `checked`: obey
        the checks of a client's SET of a new id for the command's user (the `add`
        permission, and the new row must be visible to them), as the derived CreateX does."""
        guard = writer_guard(self.user) if checked else None
        return create(item_type, item, using=self.using, guard=guard)

    def set_many(self, item_type: str, items: list[dict]) -> int:
        """SET many items of one type at once: far fewer queries than a loop of set()
        (the same rule for fields kept off the wire)."""
        return apply_sets(item_type, items, using=self.using)

    def delete(
        self, item_type: str, item_id: str, *, missing_ok: bool = True, visible_only: bool = False
    ) -> bool:
        """DEL by id; a missing id is skipped, or `<Type> not found: <id>` if not missing_ok.
        `visible_only`: a row the command's user may not see counts as missing."""
        guard = _visible_to(self.user) if visible_only else None
        return apply(
            Change("DEL", item_type, {"id": item_id}),
            using=self.using,
            missing_ok=missing_ok,
            guard=guard,
        )

    def run(self, command_id: str, **params: Any) -> Any:
        """Run another command inside this one's transaction (no idempotency record), once
        its own permission allows `ctx.user` to, as if the client had sent it."""
        handler = resolve_command(command_id)
        item_type = registry.get(handler.item_type) if handler.item_type else None
        permissions.check(
            self.user, handler.action, item_type, f"run {command_id}", handler.permission
        )
        return handler.func(self, **handler.kwargs(params))


def _visible_to(user: Any):
    """A write-path guard that hides the rows `user` may not see (and checks nothing else:
    the command's own permission already allowed it)."""

    def guard(item_type, action: str, before: dict | None, after: dict | None) -> bool:
        flt = item_type.visibility(user) if user is not permissions.SYSTEM else None
        return flt is None or before is None or flt.matches(before)

    return guard


# An anonymous caller's tx at least this long is taken for a random one (a UUID has 36
# characters; myko's clients send those): no other client will choose it by chance.
UNGUESSABLE_TX = 32


def _user_key(user: Any, anonymous_key: str | None = None, tx: str = "") -> str:
    """Whose commands one tx names: a user's on every connection and worker (their pk).

    An anonymous caller has no identity to prove. A long random tx is one no other client
    picks, so it is recognised on any connection (a client that reconnects and re-sends a
    command is answered from the first run); a shorter one (a counter) may well be another
    anonymous client's too, so it counts within its connection only (`anonymous_key`, the
    connection's own). Either way a retry must carry the same parameters. Without an
    `anonymous_key` (server code), ""."""
    if user is None or not getattr(user, "is_authenticated", False):
        if anonymous_key and len(tx) < UNGUESSABLE_TX:
            return f"anon:{anonymous_key}"
        return ""
    return str(user.pk)


def params_hash(params: Any) -> str:
    """A digest of a command's parameters (reserved keys left out: they are not
    parameters), the same whatever format they came in."""
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if k not in RESERVED_KEYS}
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _claim(
    command_id: str, tx: str, user_key: str, using: str, digest: str = ""
) -> CommandResult | Outcome:
    """Claim (command, tx, user) before running: a racing duplicate blocks on this unique
    row until we commit, then finds our response; if we roll back, it runs itself.

    Returns the new claim, or the Outcome of an earlier run to answer with instead; a tx
    already run with other parameters (`digest`) is a CommandError, not a replay."""
    results = CommandResult.objects.using(using)
    cutoff = timezone.now() - dt.timedelta(seconds=conf.get("COMMAND_RESULT_TTL"))
    key = {"command_id": command_id, "tx": tx, "user_key": user_key}
    for _ in range(2):
        try:
            with transaction.atomic(using=using):
                return results.create(
                    **key, response=None, created_at=timezone.now(), params_hash=digest
                )
        except IntegrityError:
            stored = results.filter(**key).first()
            if stored is None:
                continue  # deleted meanwhile (myko_clear_command_results): claim again
            if stored.created_at >= cutoff:
                # "": stored before parameters were recorded (an upgrade): replayed as then.
                if stored.params_hash and digest and stored.params_hash != digest:
                    raise CommandError(
                        f"{command_id}: tx {tx!r:.80} was already used for a {command_id} "
                        "with other parameters; a retry must send the same parameters, "
                        "a new command needs a new tx"
                    ) from None
                return Outcome(stored.response, 0, replayed=True)
            stored.delete()  # expired: this tx may run again
    raise CommandError(f"{command_id}: could not claim tx {tx}")


def run_command(
    command_id: Any,
    params: Any,
    *,
    tx: str,
    user: Any = None,
    source_id: str | None = None,
    using: str = "default",
    anonymous_key: str | None = None,
) -> Outcome:
    """Run one command in one transaction; raise CommandError with the client's message.

    `anonymous_key`: the caller's own key when it is anonymous (a connection's), so that
    its tx values are not shared with other anonymous callers."""
    try:
        handler = resolve_command(command_id)
        item_type = registry.get(handler.item_type) if handler.item_type else None
        permissions.check(user, handler.action, item_type, f"run {command_id}", handler.permission)
        kwargs = handler.kwargs(params)
    except OperationError as exc:
        raise CommandError(str(exc)) from None
    if not isinstance(tx, str) or not tx:
        raise CommandError(f'{command_id}: "tx" must be a non-empty string')
    user_key = _user_key(user, anonymous_key, tx)
    digest = params_hash(params)

    def attempt() -> Outcome:
        # The claim row is in the same transaction: a run again is a clean re-run.
        with write_transaction(tx, source_id, using) as ctx:
            claim = _claim(command_id, tx, user_key, using, digest)
            if isinstance(claim, Outcome):
                return claim
            response = handler.func(CommandContext(command_id, tx, user, using), **kwargs)
            claim.response = response
            claim.save(using=using, update_fields=["response"])
        return Outcome(response, ctx.last_position)

    try:
        return retry.run(attempt, using=using)
    except CommandError:
        raise
    except (ItemError, OperationError) as exc:
        raise CommandError(str(exc)) from None
    except DatabaseError as exc:
        logger.warning("myko: command %s (tx %s) failed in the database: %s", command_id, tx, exc)
        raise CommandError(
            f"{command_id}: the database refused the change: {db_message(exc)}"
        ) from None
    except Exception as exc:
        logger.info("myko: command %s (tx %s) raised %r", command_id, tx, exc)
        raise CommandError(str(exc) or type(exc).__name__) from None
