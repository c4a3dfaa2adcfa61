"""The kinds of model field an item can carry: one table says, per kind, which Django
fields have it, which JSON type it travels as, how it is encoded and decoded, and what a
client is told when a value does not fit.

Wire values are strictly typed (docs/protocol.md, "Events"): the JSON type is checked before
anything converts, since Django's `to_python` would coerce `"1"` into 1.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.utils import timezone

INT64 = (-(2**63), 2**63 - 1)

# What a JSON value is called in messages ("must be a string, got an integer 3").
TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def describe(value: Any) -> str:
    """A value as messages show it: its JSON type and a short repr."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{TYPE_NAMES.get(type(value), type(value).__name__)} {text}"


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _any(value: Any) -> bool:
    return True


def _same(value: Any) -> Any:
    return value


def _text(value: Any) -> str:
    return str(value)


def _iso(value: Any) -> str:
    return value.isoformat()


def _iso_datetime(value: dt.datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def int64(value: int) -> int:
    """The value, if it fits a 64-bit signed integer (what every format and database takes)."""
    if not INT64[0] <= value <= INT64[1]:
        raise ValueError(value)
    return value


def _decode_float(value: int | float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _decode_decimal(value: str) -> decimal.Decimal:
    number = decimal.Decimal(value)
    if not number.is_finite():
        raise ValueError(value)
    return number


def _decode_datetime(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return timezone.make_aware(parsed, dt.UTC) if timezone.is_naive(parsed) else parsed


def _decode_json(value: Any) -> Any:
    portable_json(value, "")
    return value


@dataclass(frozen=True)
class Kind:
    """One kind of field value."""

    name: str
    fields: tuple[type[models.Field], ...]  # the Django field classes of this kind
    accepts: Callable[[Any], bool]  # the strict JSON type check
    expected: str  # told when the JSON type is wrong
    hint: str  # told when the type is right but the value is not
    encode: Callable[[Any], Any]  # database value -> wire value (not None)
    decode: Callable[[Any], Any]  # wire value (type checked) -> database value
    plain: bool = False  # encode returns every database value unchanged


# Most specific field classes first: a BigAutoField is an AutoField is an IntegerField.
KINDS: tuple[Kind, ...] = (
    # The primary key ("id") and foreign keys ("fk") decode through their target field.
    Kind("id", (), _is_str, "a string", "a valid id", _text, _same),
    Kind("fk", (models.ForeignKey,), _is_str, "a string", "a valid id", _text, _same),
    Kind("bool", (models.BooleanField,), _is_bool, "a boolean", "a boolean", _same, _same, True),
    Kind(
        "int",
        (models.AutoField, models.BigAutoField, models.SmallAutoField, models.IntegerField),
        _is_int,
        "an integer",
        "an integer in the 64-bit range",
        _same,
        int64,
        True,
    ),
    Kind(
        "float",
        (models.FloatField,),
        _is_number,
        "a number",
        "a finite number",
        float,
        _decode_float,
    ),
    Kind(
        "decimal",
        (models.DecimalField,),
        _is_str,
        "a string",
        'a decimal string like "12.50"',
        _text,
        _decode_decimal,
    ),
    Kind(
        "datetime",
        (models.DateTimeField,),
        _is_str,
        "a string",
        "an ISO-8601 datetime",
        _iso_datetime,
        _decode_datetime,
    ),
    Kind(
        "date",
        (models.DateField,),
        _is_str,
        "a string",
        "an ISO-8601 date (YYYY-MM-DD)",
        _iso,
        dt.date.fromisoformat,
    ),
    Kind(
        "time",
        (models.TimeField,),
        _is_str,
        "a string",
        "an ISO-8601 time",
        _iso,
        dt.time.fromisoformat,
    ),
    Kind("uuid", (models.UUIDField,), _is_str, "a string", "a UUID string", _text, uuid.UUID),
    Kind("json", (models.JSONField,), _any, "JSON", "portable JSON", _same, _decode_json, True),
    Kind(
        "str",
        (models.CharField, models.TextField),
        _is_str,
        "a string",
        "a string",
        _same,
        _same,
        True,
    ),
)
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}


def kind_of(field: models.Field) -> Kind | None:
    """The kind of a (non primary key) model field, or None if it cannot travel."""
    for kind in KINDS:
        if kind.fields and isinstance(field, kind.fields):
            return kind
    return None


class PortabilityError(ValueError):
    """A JSON value some wire format could not carry back."""


def portable_json(value: Any, where: str, depth: int = 0) -> None:
    """A JSON field value every wire format can carry back: no NaN/Infinity, integers within
    64 bits (MessagePack's limit), string keys, bounded nesting."""
    if depth > 100:
        raise PortabilityError(f"{where} is nested deeper than 100 levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise PortabilityError(f"{where} must not hold {value} (not a JSON number)")
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            raise PortabilityError(f"{where} holds an integer beyond 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PortabilityError(f"{where} has a non-string key {key!r:.40}")
            portable_json(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            portable_json(item, where, depth + 1)
    elif not (value is None or isinstance(value, (str, float, bool))):
        raise PortabilityError(f"{where} holds a {type(value).__name__}, which is not JSON")
