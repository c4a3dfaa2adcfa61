"""Named commands, queries and reports: user handlers by decorator and the operations every
item type gets (PROTOCOL.md §7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from myko_django.items.errors import OperationError
from myko_django.items.params import Param, ParamError, signature_params, validate
from myko_django.items.registry import ItemType, registry
from myko_django.live import filters
from myko_django.live.updates import ReportSpec
from myko_django.wire.envelope import RESERVED_KEYS


@dataclass
class Handler:
    kind: str  # "command" | "query" | "report"
    name: str
    func: Callable[..., Any]
    params: list[Param]
    item_type: str | None = None
    depends: tuple[str, ...] = field(default_factory=tuple)

    def kwargs(self, given: Any) -> dict[str, Any]:
        try:
            return validate(self.name, self.params, given)
        except ParamError as exc:
            raise OperationError(str(exc)) from None


_user: dict[str, dict[str, Handler]] = {"command": {}, "query": {}, "report": {}}


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
        _user[kind][op_name] = Handler(kind, op_name, func, signature_params(func, skip), **extra)
        return func

    return register


def command(name: str | None = None) -> Callable:
    """Register `func(ctx, *, **params)` as a command; it runs in one transaction."""
    return _decorator("command", name)


def query(name: str | None = None, *, item: str | type[models.Model]) -> Callable:
    """Register `func(**params)` returning a filter dict (flat fields, as GetXsByQuery takes)
    or a predicate `item_dict -> bool`, as a live query over `item`."""
    return _decorator("query", name, item_type=_item_name(item))


def report(name: str | None = None, *, depends: Sequence[str | type[models.Model]]) -> Callable:
    """Register `func(view, **params)` as a live report, recomputed when an item type in
    `depends` changes; `view.items("Target")` maps ids to wire items."""
    return _decorator("report", name, depends=tuple(_item_name(d) for d in depends))


# ---- the operations every item type gets ------------------------------------------------


def _derived() -> dict[str, dict[str, tuple[str, ItemType]]]:
    """name -> (what, item type) for the eight derived operations of each item type."""
    out: dict[str, dict[str, tuple[str, ItemType]]] = {"command": {}, "query": {}, "report": {}}
    for it in registry:
        out["query"][f"GetAll{it.plural}"] = ("all", it)
        out["query"][f"Get{it.plural}ByIds"] = ("ids", it)
        out["query"][f"Get{it.plural}ByQuery"] = ("query", it)
        out["report"][f"CountAll{it.plural}"] = ("count_all", it)
        out["report"][f"Count{it.plural}"] = ("count", it)
        out["report"][f"Get{it.name}ById"] = ("by_id", it)
        out["command"][f"Delete{it.name}"] = ("delete", it)
        out["command"][f"Delete{it.plural}"] = ("delete_many", it)
    return out


_derived_cache: dict[str, dict[str, tuple[str, ItemType]]] | None = None


def derived() -> dict[str, dict[str, tuple[str, ItemType]]]:
    global _derived_cache
    if _derived_cache is None or len(_derived_cache["command"]) != 2 * len(registry.by_name):
        _derived_cache = _derived()
    return _derived_cache


def _filter_params(params: Any, op_name: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise OperationError(f"{op_name}: parameters must be an object")
    return {k: v for k, v in params.items() if k not in RESERVED_KEYS}


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


def resolve_query(query_id: Any, item_type: Any, params: Any) -> tuple[str, filters.Filter]:
    """(item type, compiled filter) for a ws:m:query; OperationError says what is wrong."""
    if not isinstance(query_id, str):
        raise OperationError(f"queryId must be a string, got {query_id!r:.60}")
    try:
        if query_id in derived()["query"]:
            what, it = derived()["query"][query_id]
            _check_item_type(query_id, it.name, item_type)
            schema = it.schema
            if what == "all":
                return it.name, filters.compile_filter(schema, {}, op_name=query_id)
            if what == "ids":
                ids = _ids_param(query_id, params)
                return it.name, filters.filter_for_ids(schema, ids, op_name=query_id)
            spec = _filter_params(params, query_id)
            return it.name, filters.compile_filter(schema, spec, op_name=query_id)
        handler = _user["query"].get(query_id)
        if handler is None:
            raise OperationError(f"Query handler not found: {query_id}")
        _check_item_type(query_id, handler.item_type, item_type)
        kwargs = handler.kwargs(params)
        result = handler.func(**kwargs)
        schema = registry.get(handler.item_type).schema
        if callable(result):
            key = (query_id, filters.value_key(kwargs))
            return handler.item_type, filters.Filter.from_predicate(result, key)
        if isinstance(result, dict):
            flt = filters.compile_filter(schema, result, op_name=query_id)
            return handler.item_type, flt
        raise OperationError(
            f"{query_id}: the handler returned {type(result).__name__}, "
            "expected a filter dict or a predicate"
        )
    except filters.FilterError as exc:
        raise OperationError(str(exc)) from None


def _check_item_type(op_name: str, expected: str | None, given: Any) -> None:
    if given is not None and given != expected:
        raise OperationError(f"{op_name} returns {expected} items, not {given!r:.60}")
    registry.get(expected)


def resolve_report(report_id: Any, params: Any) -> ReportSpec:
    """The engine's ReportSpec for a ws:m:report."""
    if not isinstance(report_id, str):
        raise OperationError(f"reportId must be a string, got {report_id!r:.60}")
    try:
        if report_id in derived()["report"]:
            what, it = derived()["report"][report_id]
            if what == "count_all":
                return ReportSpec.count(
                    it.name, filters.compile_filter(it.schema, {}, op_name=report_id)
                )
            if what == "count":
                spec = _filter_params(params, report_id)
                flt = filters.compile_filter(it.schema, spec, op_name=report_id)
                return ReportSpec.count(it.name, flt)
            return ReportSpec.by_id(it.name, _id_param(report_id, params))
        handler = _user["report"].get(report_id)
        if handler is None:
            raise OperationError(f"Report handler not found: {report_id}")
        kwargs = handler.kwargs(params)
        func = handler.func
        key = (report_id, filters.value_key(kwargs))
        return ReportSpec.custom(key, handler.depends, lambda view: func(view, **kwargs))
    except filters.FilterError as exc:
        raise OperationError(str(exc)) from None


def resolve_command(command_id: Any) -> Handler:
    if not isinstance(command_id, str):
        raise OperationError(f"commandId must be a string, got {command_id!r:.60}")
    handler = _user["command"].get(command_id)
    if handler is not None:
        return handler
    found = derived()["command"].get(command_id)
    if found is None:
        raise OperationError(f"Command handler not found: {command_id}")
    what, it = found
    return _derived_command(command_id, what, it)


def _derived_command(name: str, what: str, it: ItemType) -> Handler:
    if what == "delete":

        def delete_one(ctx, *, id: str) -> dict:
            ctx.delete(it.name, id, missing_ok=False)
            return {"deleted": True}

        return Handler("command", name, delete_one, signature_params(delete_one, 1))

    def delete_many(ctx, *, ids: list[str]) -> dict:
        return {"deletedCount": sum(1 for i in ids if ctx.delete(it.name, i))}

    return Handler("command", name, delete_many, signature_params(delete_many, 1))
