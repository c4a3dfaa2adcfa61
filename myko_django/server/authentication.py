"""Who each connection is, and whether it still is.

At connect, `identify` asks the authenticators of `MYKO["AUTHENTICATORS"]` in order (see
`myko_django.auth` for their interface; they are loaded by dotted path at run time, as the
server layer imports nothing of the top level) and the first that knows the user wins; a
connection nobody knows is anonymous. The user's permissions are loaded there, on a
database thread, since permission checks run on the event loop.

Then each hub's `Watcher` checks every authenticated connection again every
`MYKO["AUTH_RECHECK_INTERVAL"]` seconds, in one database job per sweep: each
authenticator rechecks all its credentials at once, the still-valid users come back fresh
with their permissions loaded (for Django's ModelBackend in two queries for all of them).
A connection whose credential is no longer good (logged out, session expired or deleted,
token expired or revoked, user deactivated or deleted) continues as anonymous; one whose
user changed (permissions, groups, staff or superuser flag, any field) continues as the
fresh user. Either way `Connection.set_user` ends the subscriptions no longer allowed with
their "Permission denied" error. So a change reaches open connections within about one
interval plus one sweep of its being visible in the database.

`user_for_token` serves the protocol's per-command `userToken`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib import auth as django_auth
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser, Permission
from django.core.exceptions import FieldDoesNotExist
from django.utils.module_loading import import_string

from myko_django import conf

logger = logging.getLogger(__name__)


# ---- the authenticators ---------------------------------------------------------------

_loaded: tuple[tuple[Any, ...], list[Any]] = ((), [])


def authenticators() -> list[Any]:
    """Instances of `MYKO["AUTHENTICATORS"]`, in order (made again when the setting changes)."""
    global _loaded
    configured = tuple(conf.get("AUTHENTICATORS"))
    if _loaded[0] != configured:
        classes = [import_string(c) if isinstance(c, str) else c for c in configured]
        _loaded = (configured, [cls() for cls in classes])
    return _loaded[1]


def _signed_in(user: Any) -> bool:
    return (
        user is not None
        and getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", True) is not False
    )


@dataclass(frozen=True)
class Identity:
    """Who a connection is: the user, and (for an authenticated one) the authenticator that
    knew them, the credential it rechecks and the user's `fingerprint`."""

    user: Any
    authenticator: Any = None
    credential: Any = None
    fingerprint: tuple | None = None


def identify_sync(scope: dict) -> Identity:
    """On a database thread: ask the authenticators in order; the first that knows the
    user wins. Permissions are loaded."""
    for authenticator in authenticators():
        found = authenticator.authenticate(scope)
        if found is None:
            continue
        user, credential = found
        if _signed_in(user):
            preload_permissions([user])
            return Identity(user, authenticator, credential, fingerprint(user))
    return Identity(AnonymousUser())


async def identify(hub: Any, scope: dict) -> Identity:
    """Who a connecting socket is (asked on the hub's database threads)."""
    return await hub.db(identify_sync, scope)


def user_for_token(token: str) -> Any:
    """On a database thread: the user a command's `userToken` names, permissions loaded, or
    None if no authenticator knows it."""
    for authenticator in authenticators():
        user = authenticator.authenticate_token(token)
        if _signed_in(user):
            preload_permissions([user])
            return user
    return None


# ---- permissions, loaded where the database may be used ---------------------------------

# What a backend must not override for its permission caches to be filled in a batch.
_MODEL_BACKEND_METHODS = (
    "get_all_permissions",
    "get_user_permissions",
    "get_group_permissions",
    "_get_permissions",
    "_get_user_permissions",
    "_get_group_permissions",
)


def _batchable(backends: Sequence[Any], model: Any) -> bool:
    if not backends or not all(
        isinstance(b, ModelBackend)
        and all(getattr(type(b), m) is getattr(ModelBackend, m) for m in _MODEL_BACKEND_METHODS)
        for b in backends
    ):
        return False
    try:
        model._meta.get_field("user_permissions")
        model._meta.get_field("groups")
    except FieldDoesNotExist:
        return False
    return True


def preload_permissions(users: Iterable[Any]) -> None:
    """Load every user's permissions into Django's per-user cache, so that `has_perm` on the
    event loop needs no query. With only Django's `ModelBackend` (the default), in at most
    three queries for all users: its caches are filled as it would fill them
    (`tests/db/test_tokens.py` pins that); other backends are asked user by user."""
    users = list({id(u): u for u in users if _signed_in(u)}.values())
    if not users:
        return
    model = get_user_model()
    if _batchable(django_auth.get_backends(), model):
        _fill_model_backend_caches(users, model)
    for user in users:
        user.get_all_permissions()


def _fill_model_backend_caches(users: list[Any], model: Any) -> None:
    supers = [u for u in users if u.is_superuser]
    others = [u for u in users if not u.is_superuser and not hasattr(u, "_perm_cache")]
    if supers:
        every = {
            f"{app}.{codename}"
            for app, codename in Permission.objects.values_list(
                "content_type__app_label", "codename"
            ).order_by()
        }
        for user in supers:
            user._user_perm_cache = set(every)
            user._group_perm_cache = set(every)
    if not others:
        return
    pks = [u.pk for u in others]
    mine: dict[Any, set[str]] = defaultdict(set)
    field = model._meta.get_field("user_permissions")
    src, dst = field.m2m_field_name(), field.m2m_reverse_field_name()
    rows = field.remote_field.through.objects.filter(**{f"{src}__in": pks}).values_list(
        src, f"{dst}__content_type__app_label", f"{dst}__codename"
    )
    for pk, app, codename in rows.order_by():
        mine[pk].add(f"{app}.{codename}")
    from_groups: dict[Any, set[str]] = defaultdict(set)
    field = model._meta.get_field("groups")
    src, dst = field.m2m_field_name(), field.m2m_reverse_field_name()
    rows = field.remote_field.through.objects.filter(**{f"{src}__in": pks}).values_list(
        src,
        f"{dst}__permissions__content_type__app_label",
        f"{dst}__permissions__codename",
    )
    for pk, app, codename in rows.order_by():
        if codename is not None:  # a group without permissions
            from_groups[pk].add(f"{app}.{codename}")
    for user in others:
        user._user_perm_cache = mine.get(user.pk, set())
        user._group_perm_cache = from_groups.get(user.pk, set())


def fingerprint(user: Any) -> tuple:
    """What, when it changes, makes a connection take its user again: every field (but the
    last login), the groups and the permissions."""
    fields = tuple(
        f.value_from_object(user) for f in user._meta.concrete_fields if f.name != "last_login"
    )
    try:
        user._meta.get_field("groups")
    except FieldDoesNotExist:
        groups: tuple = ()
    else:
        groups = tuple(sorted(g.pk for g in user.groups.all()))  # prefetched by load_users
    return fields, groups, frozenset(user.get_all_permissions())


def _recheck(jobs: list[tuple[Any, list[Any]]]) -> list[list[tuple[Any, tuple] | None] | None]:
    """On a database thread: per (authenticator, credentials), each credential's fresh user
    and fingerprint, or None where it is no longer good; None for an authenticator that
    failed (the connections it knows keep their users until a sweep succeeds)."""
    found: list[list[Any] | None] = []
    for authenticator, credentials in jobs:
        try:
            users = list(authenticator.recheck(credentials))
            if len(users) != len(credentials):
                raise ValueError(
                    f"{type(authenticator).__name__}.recheck returned {len(users)} users "
                    f"for {len(credentials)} credentials"
                )
        except Exception:
            logger.exception("myko: rechecking %s credentials failed", type(authenticator))
            found.append(None)
            continue
        found.append([u if _signed_in(u) else None for u in users])
    preload_permissions(u for users in found if users for u in users if u is not None)
    return [
        None if users is None else [None if u is None else (u, fingerprint(u)) for u in users]
        for users in found
    ]


# ---- the recheck, per hub -------------------------------------------------------------


class _Watched:
    __slots__ = ("authenticator", "credential", "fingerprint")

    def __init__(self, authenticator: Any, credential: Any, fingerprint: tuple | None) -> None:
        self.authenticator = authenticator
        self.credential = credential
        self.fingerprint = fingerprint


class Watcher:
    """The authenticated connections of one hub, checked again every
    AUTH_RECHECK_INTERVAL seconds while there are any."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.watched: dict[Any, _Watched] = {}
        self.task: asyncio.Task | None = None
        self.sweeps = 0

    def watch(self, connection: Any, identity: Identity) -> None:
        """Recheck `connection` from now on (an anonymous one has nothing to recheck)."""
        if identity.authenticator is None:
            return
        self.watched[connection] = _Watched(
            identity.authenticator, identity.credential, identity.fingerprint
        )
        if self.task is None:
            self.task = self.hub.loop.create_task(self._run())

    def forget(self, connection: Any) -> None:
        self.watched.pop(connection, None)

    async def _run(self) -> None:
        loop = self.hub.loop
        started = loop.time()  # the users were just loaded: the first sweep waits too
        try:
            while True:
                # Sweeps start every interval; one that ran longer is followed at once.
                interval = conf.get("AUTH_RECHECK_INTERVAL")
                await asyncio.sleep(max(0.0, started + interval - loop.time()))
                if not self.watched:
                    return
                started = loop.time()
                try:
                    await self.sweep()
                except RuntimeError as exc:
                    if "shutdown" in str(exc):  # the hub's threads are gone: it closed
                        return
                    logger.exception("myko: rechecking connections' users failed")
                except Exception:
                    logger.exception("myko: rechecking connections' users failed")
        finally:
            self.task = None
            if not self.watched and _watchers.get(self.hub) is self:
                del _watchers[self.hub]

    async def sweep(self) -> None:
        """Check every watched connection's credential once; hand changed users over."""
        by_authenticator: dict[Any, list[tuple[Any, _Watched]]] = {}
        for connection, watched in self.watched.items():
            by_authenticator.setdefault(watched.authenticator, []).append((connection, watched))
        if not by_authenticator:
            return
        groups = list(by_authenticator.items())
        jobs = [(auth, [w.credential for _, w in entries]) for auth, entries in groups]
        results = await self.hub.db(_recheck, jobs)
        self.sweeps += 1
        changes: list[tuple[Any, Any]] = []
        for (_, entries), outcome in zip(groups, results, strict=True):
            if outcome is None:
                continue
            for (connection, watched), result in zip(entries, outcome, strict=True):
                if self.watched.get(connection) is not watched:
                    continue  # closed meanwhile
                if result is None:
                    del self.watched[connection]
                    logger.info(
                        "myko: connection %s: %s is no longer signed in: continues anonymous",
                        connection.id,
                        connection.user,
                    )
                    changes.append((connection, AnonymousUser()))
                elif result[1] != watched.fingerprint:
                    watched.fingerprint = result[1]
                    changes.append((connection, result[0]))
        if changes:
            await asyncio.gather(*(self._hand_over(c, u) for c, u in changes))

    @staticmethod
    async def _hand_over(connection: Any, user: Any) -> None:
        try:
            await connection.set_user(user)
        except Exception:
            logger.exception("myko: connection %s: changing its user failed", connection.id)


_watchers: dict[Any, Watcher] = {}  # by hub, while it has authenticated connections


def watcher(hub: Any) -> Watcher:
    """The hub's watcher, made on first use."""
    found = _watchers.get(hub)
    if found is None:
        found = _watchers[hub] = Watcher(hub)
    return found
