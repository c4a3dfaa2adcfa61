"""Strict validation of wire parameters against a handler's Python signature.

A handler `def rename(ctx, *, id: str, name: str)` takes wire params `{"id", "name"}`;
snake_case names travel as camelCase (`scene_id` <-> `sceneId`).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from myko_django.items.kinds import TYPE_NAMES, describe
from myko_django.wire.naming import to_camel


class ParamError(ValueError):
    """Parameters that do not fit the handler; the message names the field."""


@dataclass(frozen=True)
class Param:
    name: str  # Python name
    wire: str  # camelCase name on the wire
    annotation: Any
    required: bool
    default: Any


def _type_label(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_label(a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return "a list" if inner is Any else f"a list of {_type_label(inner).split(' ', 1)[-1]}s"
    return TYPE_NAMES.get(annotation, str(annotation))


def fits(value: Any, annotation: Any) -> bool:
    """Strict JSON-type check: no coercion, `1` is not a bool, `"1"` is not a number."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None) or annotation is None:
        return value is None
    if origin is list or annotation is list:
        args = typing.get_args(annotation)
        return isinstance(value, list) and (not args or all(fits(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def signature_params(func: Callable, skip_first: int) -> list[Param]:
    """The wire parameters of a handler, after its first `skip_first` positional ones."""
    hints = typing.get_type_hints(func)
    out = []
    for index, p in enumerate(inspect.signature(func).parameters.values()):
        if index < skip_first or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append(
            Param(
                name=p.name,
                wire=to_camel(p.name),
                annotation=hints.get(p.name, Any),
                required=p.default is p.empty,
                default=None if p.default is p.empty else p.default,
            )
        )
    return out


def validate(op_name: str, params: list[Param], given: Any) -> dict[str, Any]:
    """Wire params -> Python kwargs; unknown keys are ignored (newer clients add some)."""
    if not isinstance(given, Mapping):
        raise ParamError(f"{op_name}: parameters must be an object, got {describe(given)}")
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.wire not in given:
            if p.required:
                raise ParamError(f'{op_name}: "{p.wire}" is required ({_type_label(p.annotation)})')
            kwargs[p.name] = p.default
            continue
        value = given[p.wire]
        if not fits(value, p.annotation):
            raise ParamError(
                f'{op_name}: "{p.wire}" must be {_type_label(p.annotation)}, got {describe(value)}'
            )
        kwargs[p.name] = value
    return kwargs
