"""Named commands, queries and reports: user handlers by decorator and the operations every
item type gets (docs/protocol.md, "Derived operations").

One precedence rule for all three kinds: a user handler registered under a name replaces the
derived operation of that name (a `DeleteTarget` command that checks something first, a
`GetAllTargets` query that hides archived rows). `manage.py check` lists each replacement
(myko.I001) and refuses the mistakes (myko.E007-E011)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from myko_django.items import permissions
from myko_django.items.errors import OperationError
from myko_django.items.kinds import describe
from myko_django.items.params import Param, ParamError, signature_params, validate
from myko_django.items.permissions import ADD, DELETE, RUN, VIEW
from myko_django.items.registry import ItemType, registry
from myko_django.live import filters
from myko_django.live.updates import ReportSpec
from myko_django.wire.envelope import RESERVED_KEYS

logger = logging.getLogger(__name__)


@dataclass
class Handler:
    kind: str  # "command" | "query" | "report"
    name: str
    func: Callable[..., Any]
    params: list[Param]
    item_type: str | None = None
    depends: tuple[str, ...] = field(default_factory=tuple)
    # Its own permission class (None: its item type's, see items/permissions.py), and
    # what running it counts as: "run" for a user command, "delete" for a derived delete,
    # "add" for a derived create.
    permission: Any = None
    action: str = RUN
    # Wire parameters -> keyword arguments, instead of `params` (a derived CreateX takes
    # the item itself); raises OperationError.
    parse: Callable[[Any], dict[str, Any]] | None = None
    wants_user: bool = False  # a query or report taking `user` (its result is per user)

    @property
    def where(self) -> str:
        """The handler function's dotted path, for messages."""
        func = self.func
        return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"

    @property
    def line(self) -> int | None:
        """The first line of the handler's source, when it has one."""
        code = getattr(self.func, "__code__", None)
        return code.co_firstlineno if code is not None else None

    def kwargs(self, given: Any) -> dict[str, Any]:
        if self.parse is not None:
            return self.parse(given)
        try:
            return validate(self.name, self.params, given)
        except ParamError as exc:
            raise OperationError(str(exc)) from None


KINDS = ("command", "query", "report")
_user: dict[str, dict[str, Handler]] = {kind: {} for kind in KINDS}
# (earlier, later) handlers registered under one name in one kind; the later one replaced
# the earlier, which a system check reports (myko.E007).
_duplicates: list[tuple[Handler, Handler]] = []


def _item_name(item: str | type[models.Model]) -> str:
    if isinstance(item, str):
        return item
    return getattr(item, "myko_name", None) or item.__name__


def _wire_name(func: Callable, name: str | None) -> str:
    """Explicit name, else the function name in CamelCase: rename_target -> RenameTarget."""
    return name or "".join(part[:1].upper() + part[1:] for part in func.__name__.split("_"))


def _decorator(kind: str, name: str | None, **extra: Any) -> Callable:
    def register(func: Callable) -> Callable:
        op_name = _wire_name(func, name)
        skip = 0 if kind == "query" else 1  # commands take ctx first, reports the view
        params = signature_params(func, skip)
        # Queries and reports may ask for the user with a `user` parameter: it is passed,
        # never taken from the wire (commands have ctx.user).
        wants_user = kind != "command" and any(p.name == "user" for p in params)
        params = [p for p in params if not (wants_user and p.name == "user")]
        handler = Handler(kind, op_name, func, params, wants_user=wants_user, **extra)
        earlier = _user[kind].get(op_name)
        # The same function again (its module imported twice) is not a duplicate.
        if earlier is not None and (earlier.where, earlier.line) != (handler.where, handler.line):
            _duplicates.append((earlier, handler))
        _user[kind][op_name] = handler
        return func

    return register


def user_handlers(kind: str) -> dict[str, Handler]:
    """The handlers registered by decorator for one kind, by name."""
    return dict(_user[kind])


def duplicate_registrations() -> list[tuple[Handler, Handler]]:
    """(earlier, later) pairs of handlers registered under one name in one kind."""
    return list(_duplicates)


def unregister(kind: str, name: str) -> Handler | None:
    """Remove the user handler `name` of `kind` (tests registering handlers of their own);
    the derived operation of that name, if any, answers again. Returns what was removed."""
    _duplicates[:] = [(a, b) for a, b in _duplicates if not (b.kind == kind and b.name == name)]
    return _user[kind].pop(name, None)


def command(name: str | None = None, *, permission: Any = None) -> Callable:
    """Register `func(ctx, *, **params)` as a command; it runs in one transaction, as
    `ctx.user`, once `permission` (default: a signed-in, active user) allows it."""
    return _decorator("command", name, permission=permission)


def query(
    name: str | None = None, *, item: str | type[models.Model], permission: Any = None
) -> Callable:
    """Register `func(**params)` returning a filter dict (flat fields, as GetXsByQuery takes)
    or a predicate `item_dict -> bool`, as a live query over `item`. Who may run it:
    `permission`, else as for `item`'s derived queries (view); each user sees only the rows
    `item`'s visibility gives them. A `user` parameter, if the function has one, receives
    the requesting user (it is not a wire parameter)."""
    return _decorator("query", name, item_type=_item_name(item), permission=permission)


def report(
    name: str | None = None,
    *,
    depends: Sequence[str | type[models.Model]],
    permission: Any = None,
) -> Callable:
    """Register `func(view, **params)` as a live report, recomputed when an item type in
    `depends` changes; `view.items("Target")` maps ids to the wire items the user may see.
    Who may run it: `permission`, else whoever may view every type in `depends`. A `user`
    parameter, if the function has one, receives the requesting user."""
    return _decorator(
        "report", name, depends=tuple(_item_name(d) for d in depends), permission=permission
    )


# ---- the operations every item type gets ------------------------------------------------


def _derived_entries() -> Iterator[tuple[str, str, str, ItemType]]:
    """(kind, name, what, item type) for the nine derived operations of each item type."""
    for it in registry:
        yield "query", f"GetAll{it.plural}", "all", it
        yield "query", f"Get{it.plural}ByIds", "ids", it
        yield "query", f"Get{it.plural}ByQuery", "query", it
        yield "report", f"CountAll{it.plural}", "count_all", it
        yield "report", f"Count{it.plural}", "count", it
        yield "report", f"Get{it.name}ById", "by_id", it
        yield "command", f"Create{it.name}", "create", it
        yield "command", f"Delete{it.name}", "delete", it
        yield "command", f"Delete{it.plural}", "delete_many", it


def _derived() -> dict[str, dict[str, tuple[str, ItemType]]]:
    """kind -> name -> (what, item type); where two derived names collide the first item
    type registered keeps the name (myko.E009 reports the collision)."""
    out: dict[str, dict[str, tuple[str, ItemType]]] = {kind: {} for kind in KINDS}
    for kind, name, what, it in _derived_entries():
        out[kind].setdefault(name, (what, it))
    return out


def derived_collisions() -> list[tuple[str, str, tuple[str, ItemType], tuple[str, ItemType]]]:
    """(kind, name, kept, lost) for each derived name that two operations would share."""
    seen: dict[tuple[str, str], tuple[str, ItemType]] = {}
    found = []
    for kind, name, what, it in _derived_entries():
        kept = seen.setdefault((kind, name), (what, it))
        if kept[0] != what or kept[1] is not it:
            found.append((kind, name, kept, (what, it)))
    return found


_derived_cache: tuple[tuple[int, ...], dict[str, dict[str, tuple[str, ItemType]]]] | None = None


def derived() -> dict[str, dict[str, tuple[str, ItemType]]]:
    """The derived operations of the registered item types, rebuilt when the registry
    changes."""
    global _derived_cache
    key = tuple(map(id, registry.by_name.values()))
    if _derived_cache is None or _derived_cache[0] != key:
        _derived_cache = (key, _derived())
    return _derived_cache[1]


def _find(kind: str, name: str) -> Handler | tuple[str, ItemType] | None:
    """The operation `name` of `kind`: a user handler replaces the derived operation of the
    same name, for queries, reports and commands alike."""
    handler = _user[kind].get(name)
    if handler is not None:
        return handler
    return derived()[kind].get(name)


def _lookup(kind: str, name: Any) -> Handler | tuple[str, ItemType]:
    """The operation a client named (`_find`), or the OperationError it is told."""
    if not isinstance(name, str):
        raise OperationError(f"{kind}Id must be a string, got {name!r:.60}")
    found = _find(kind, name)
    if found is None:
        raise OperationError(f"{kind.capitalize()} handler not found: {name}")
    return found


def _filter_params(params: Any, op_name: str) -> dict[str, Any]:
    """GetXsByQuery / CountXs parameters: the filter and the request's own data, which
    `compile_filter(..., request=True)` tells apart (docs/protocol.md, "Filters")."""
    if not isinstance(params, dict):
        raise OperationError(f"{op_name}: parameters must be an object")
    return params


def _ids_param(op_name: str, params: Any) -> list[str]:
    ids = params.get("ids") if isinstance(params, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise OperationError(f'{op_name}: "ids" must be a list of strings, got {ids!r:.60}')
    return ids


def _id_param(op_name: str, params: Any) -> str:
    item_id = params.get("id") if isinstance(params, dict) else None
    if not isinstance(item_id, str):
        raise OperationError(f'{op_name}: "id" must be a string, got {item_id!r:.60}')
    return item_id


def resolve_query(
    query_id: Any, item_type: Any, params: Any, user: Any
) -> tuple[str, filters.Filter]:
    """(item type, compiled filter) of a ws:m:query as `user` may see it: the query's
    filter and the rows the user may see. OperationError (PermissionDenied among them)
    says what is wrong."""
    found = _lookup("query", query_id)
    try:
        if not isinstance(found, Handler):
            what, it = found
            _check_item_type(query_id, it.name, item_type)
            permissions.check(user, VIEW, it, f"view {it.plural}")
            return it.name, filters.both(
                _derived_filter(query_id, what, it, params), _visibility(it, user)
            )
        _check_item_type(query_id, found.item_type, item_type)
        it = registry.get(found.item_type)
        permissions.check(user, VIEW, it, f"run {query_id}", found.permission)
        return it.name, filters.both(_user_filter(found, it, params, user), _visibility(it, user))
    except filters.FilterError as exc:
        raise OperationError(str(exc)) from None


def _visibility(it: ItemType, user: Any) -> filters.Filter | None:
    """The rows `user` may see; the server itself (SYSTEM: a saga's `ctx.query`) sees all."""
    return None if user is permissions.SYSTEM else it.visibility(user)


def _derived_filter(query_id: str, what: str, it: ItemType, params: Any) -> filters.Filter:
    if what == "all":
        return filters.compile_filter(it.schema, {}, op_name=query_id)
    if what == "ids":
        return filters.filter_for_ids(it.schema, _ids_param(query_id, params), op_name=query_id)
    spec = _filter_params(params, query_id)
    return filters.compile_filter(it.schema, spec, op_name=query_id, request=True)


def _user_filter(handler: Handler, it: ItemType, params: Any, user: Any) -> filters.Filter:
    kwargs = handler.kwargs(params)
    key: Any = (handler.name, filters.value_key(kwargs))
    if handler.wants_user:
        kwargs["user"] = user
        key += (_user_key(user),)  # a predicate of one user's is not another's
    result = handler.func(**kwargs)
    if callable(result):
        return filters.Filter.from_predicate(result, key)
    if isinstance(result, dict):
        try:
            return filters.compile_filter(it.schema, result, op_name=handler.name)
        except filters.FilterKeyError as exc:
            # The handler's mistake: the client gets the message as a query-error too.
            logger.error(
                "myko: query %s (%s) returned a bad filter: %s", handler.name, handler.where, exc
            )
            raise
    raise OperationError(
        f"{handler.name}: the handler returned {type(result).__name__}, "
        "expected a filter dict or a predicate"
    )


def _user_key(user: Any) -> Any:
    """Who a per-user query or report is for: this very user object (a connection gets a
    fresh one whenever its user changes: flags, groups, permissions), or anonymous. By pk
    alone, a result computed for the user as they were (staff, say) stayed live and was
    shared with their later connections."""
    if not getattr(user, "is_authenticated", False):
        return ("anonymous",)
    return ("user", user.pk, _SameUser(user))


class _SameUser:
    """Equal only for the same user object, which it keeps alive (so its id is not reused
    while a key holds it)."""

    __slots__ = ("user",)

    def __init__(self, user: Any) -> None:
        self.user = user

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SameUser) and other.user is self.user

    def __hash__(self) -> int:
        return id(self.user)


def _check_item_type(op_name: str, expected: str | None, given: Any) -> None:
    if given is not None and given != expected:
        raise OperationError(f"{op_name} returns {expected} items, not {given!r:.60}")
    registry.get(expected)


def resolve_report(report_id: Any, params: Any, user: Any) -> ReportSpec:
    """The engine's ReportSpec for a ws:m:report, over the rows `user` may see."""
    found = _lookup("report", report_id)
    try:
        if not isinstance(found, Handler):
            what, it = found
            permissions.check(user, VIEW, it, f"view {it.plural}")
            visible = it.visibility(user)
            if what == "count_all":
                everything = filters.compile_filter(it.schema, {}, op_name=report_id)
                return ReportSpec.count(it.name, filters.both(everything, visible))
            if what == "count":
                spec = _filter_params(params, report_id)
                flt = filters.compile_filter(it.schema, spec, op_name=report_id, request=True)
                return ReportSpec.count(it.name, filters.both(flt, visible))
            return ReportSpec.by_id(it.name, _id_param(report_id, params), visible=visible)
        visible = {}
        if not found.depends:  # no item type to ask: its own permission, or the default
            permissions.check(user, VIEW, None, f"run {report_id}", found.permission)
        for name in found.depends:
            it = registry.get(name)
            permissions.check(user, VIEW, it, f"run {report_id}", found.permission)
            flt = it.visibility(user)
            if flt is not None:
                visible[name] = flt
        kwargs = found.kwargs(params)
        func = found.func
        key: Any = (report_id, filters.value_key(kwargs))
        if found.wants_user:
            kwargs["user"] = user
            key += (_user_key(user),)  # computed for this user: shared with nobody else
        return ReportSpec.custom(
            key, found.depends, lambda view: func(view, **kwargs), visible=visible or None
        )
    except filters.FilterError as exc:
        raise OperationError(str(exc)) from None


def resolve_command(command_id: Any) -> Handler:
    found = _lookup("command", command_id)
    if isinstance(found, Handler):
        return found
    what, it = found
    return _derived_command(command_id, what, it)


def _derived_command(name: str, what: str, it: ItemType) -> Handler:
    """CreateX: a user needs `add` on the type, and the new row must be visible to them (the
    checks of a client's SET of a new id). DeleteX and DeleteXs: a user needs `delete` on
    the type, and deletes only rows they may see (others count as missing)."""
    if what == "create":

        def create_one(ctx, *, item: dict) -> dict:
            return {"id": ctx.create(it.name, item, checked=True)["id"]}

        def parse(given: Any) -> dict[str, Any]:
            if not isinstance(given, dict):
                raise OperationError(f"{name}: parameters must be an object, got {describe(given)}")
            if "id" in given:
                raise OperationError(
                    f'{name}: "id" is assigned by the server; leave it out (a client that '
                    "chooses the id SETs the item with an event)"
                )
            return {"item": {k: v for k, v in given.items() if k not in RESERVED_KEYS}}

        return Handler("command", name, create_one, [], it.name, action=ADD, parse=parse)

    if what == "delete":

        def delete_one(ctx, *, id: str) -> dict:
            ctx.delete(it.name, id, missing_ok=False, visible_only=True)
            return {"deleted": True}

        params = signature_params(delete_one, 1)
        return Handler("command", name, delete_one, params, it.name, action=DELETE)

    def delete_many(ctx, *, ids: list[str]) -> dict:
        deleted = sum(1 for i in ids if ctx.delete(it.name, i, visible_only=True))
        return {"deletedCount": deleted}

    params = signature_params(delete_many, 1)
    return Handler("command", name, delete_many, params, it.name, action=DELETE)
