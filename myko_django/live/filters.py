"""Compile myko query parameters into typed, indexable item predicates.

Pure Python: no Django. Equality is strict (1 is not True) and range compares decoded values.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from myko_django.wire.envelope import EXTENSION_KEYS, RESERVED_KEYS

__all__ = [
    "FILTER_KINDS",
    "Filter",
    "FilterError",
    "FilterKeyError",
    "ItemSchema",
    "compile_filter",
    "field_key",
    "filter_for_ids",
    "strict_equal",
    "value_key",
]

FILTER_KINDS = ("eq", "in", "range", "contains", "startsWith")

_STR_KINDS = frozenset({"id", "str", "fk", "uuid"})
_NUM_KINDS = frozenset({"int", "float"})
_DECODED_KINDS = frozenset({"decimal", "datetime", "date", "time"})

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, eq=False)
class ItemSchema:
    """Wire shape of one item type: field name -> kind (see module docs of the registry)."""

    name: str
    fields: dict[str, str]


class FilterError(ValueError):
    """Query parameters that do not validate; the message names the operation and field."""


class FilterKeyError(FilterError):
    """A key that is not a field of the item type, or a reserved key used as a filter."""


# ---------------------------------------------------------------------------
# Strict equality and typed keys
# ---------------------------------------------------------------------------


def strict_equal(a: Any, b: Any) -> bool:
    """Equality without Python's `1 == True` coercion; numbers compare across int/float."""
    if a is b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        for k, v in a.items():
            if k not in b or not strict_equal(v, b[k]):
                return False
        return True
    if a is None or b is None or isinstance(b, (list, tuple, dict)):
        return False
    return bool(a == b)


def value_key(v: Any) -> Hashable:
    """Hashable key of a wire value whose equality is `strict_equal` (1, True, 1.0 kept apart)."""
    if v is None:
        return ("z",)
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, (int, float)):
        return ("n", v)
    if isinstance(v, (list, tuple)):
        return ("j", "l", tuple(value_key(x) for x in v))
    if isinstance(v, dict):
        pairs = [(str(k), value_key(x)) for k, x in v.items()]
        pairs.sort(key=lambda p: p[0])
        return ("j", "d", tuple(pairs))
    try:
        hash(v)
    except TypeError:
        return ("o", type(v).__name__, repr(v))
    return ("o", type(v).__name__, v)


def _parse_datetime(s: str) -> dt.datetime:
    # Python 3.11 accepts a trailing "Z"; "z" is not, so normalise it.
    if s.endswith("z"):
        s = s[:-1] + "+00:00"
    return dt.datetime.fromisoformat(s)


def _decode(kind: str, v: Any) -> Any:
    """Decode a wire value for comparison; raise ValueError/TypeError when it does not decode."""
    if kind == "decimal":
        if isinstance(v, bool):
            raise TypeError("bool is not a decimal")
        if isinstance(v, float):
            v = repr(v)
        if not isinstance(v, (str, int)):
            raise TypeError("not a decimal")
        try:
            d = Decimal(v)
        except InvalidOperation as e:
            raise ValueError(str(e)) from None
        if not d.is_finite():
            raise ValueError("not finite")
        return d
    if not isinstance(v, str):
        raise TypeError("not a string")
    if kind == "datetime":
        return _parse_datetime(v)
    if kind == "date":
        return dt.date.fromisoformat(v)
    if kind == "time":
        return dt.time.fromisoformat(v)
    raise ValueError(f"kind {kind} does not decode")


def field_key(kind: str, v: Any) -> Hashable:
    """Index key of a field value: `value_key`, except decimals and date/times key decoded.

    So "1.5" and "1.50" (or "...Z" and "...+00:00") are one key, like they are one value.
    """
    if v is not None and kind in _DECODED_KINDS:
        try:
            return ("d", _decode(kind, v))
        except (ValueError, TypeError):
            pass
    return value_key(v)


# ---------------------------------------------------------------------------
# Filter
# ---------------------------------------------------------------------------


def _match_all(item: Mapping[str, Any]) -> bool:
    return True


def _match_none(item: Mapping[str, Any]) -> bool:
    return False


class Filter:
    """A compiled predicate plus the hints the engine indexes by.

    `key` identifies the filter so identical subscriptions share one live result.
    `eq_keys` pairs each equality field with `field_key` of its value (a tuple, not a
    dict: one is kept per distinct subscription); `ids` is set when the
    filter restricts `id` to a known set (an empty set means the filter matches nothing).
    """

    __slots__ = ("matches", "key", "eq_keys", "ids")

    def __init__(
        self,
        matches: Predicate,
        key: Hashable,
        eq_keys: tuple[tuple[str, Hashable], ...] = (),
        ids: frozenset[str] | None = None,
    ) -> None:
        self.matches = matches
        self.key = key
        self.eq_keys = eq_keys
        self.ids = ids

    @classmethod
    def from_predicate(cls, fn: Predicate, key: Hashable) -> Filter:
        """A filter for user-defined queries: no index hints, so the engine scans it."""
        return cls(fn, ("custom", key))

    def __repr__(self) -> str:
        return f"Filter(key={self.key!r})"


def _show(v: Any) -> str:
    try:
        s = json.dumps(v, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


_DESC = {
    "id": "a string",
    "str": "a string",
    "fk": "a string id",
    "uuid": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "decimal": 'a decimal string such as "1.50"',
    "datetime": 'an ISO-8601 datetime string such as "2024-05-01T12:00:00Z"',
    "date": 'an ISO-8601 date string such as "2024-05-01"',
    "time": 'an ISO-8601 time string such as "12:30:00"',
    "json": "a JSON value",
}


class _Compiler:
    """Validates and compiles one field's parameter; errors name the operation and field."""

    def __init__(self, op: str, field: str, kind: str) -> None:
        self.op, self.field, self.kind = op, field, kind

    def error(self, what: str) -> FilterError:
        return FilterError(f'{self.op}: "{self.field}" {what}')

    def plain(self, v: Any, *, where: str = "", obj_ok: bool = True) -> Any:
        """Validate a plain value for this field's kind; return its decoded form (or itself)."""
        kind = self.kind
        ok = True
        if kind in _STR_KINDS:
            ok = isinstance(v, str)
        elif kind in _NUM_KINDS:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if ok and isinstance(v, float) and not math.isfinite(v):
                ok = False
        elif kind == "bool":
            ok = isinstance(v, bool)
        elif kind in _DECODED_KINDS:
            ok = isinstance(v, str)
            if ok:
                try:
                    return _decode(kind, v)
                except (ValueError, TypeError):
                    ok = False
        if not ok:
            alt = " or a filter object" if obj_ok else ""
            raise self.error(f"{where}must be {_DESC.get(kind, 'a value')}{alt}, got {_show(v)}")
        return v

    def compile(self, v: Any) -> tuple[Predicate, Hashable, Hashable | None, frozenset | None]:
        """Return (check, canonical spec, equality index key or None, id set or None)."""
        if isinstance(v, dict) and self._is_filter_object(v):
            return self._compile_object(v)
        self.plain(v)
        return self._eq(v)

    def _is_filter_object(self, v: dict) -> bool:
        if self.kind != "json":
            if "kind" not in v:
                raise self.error(
                    f"must be {_DESC.get(self.kind, 'a value')} or a filter object "
                    f'{{"kind": ..., "value": ...}}, got {_show(v)}'
                )
            return True
        # A JSON field may hold any dict; only a well-formed filter object is read as one.
        return v.get("kind") in FILTER_KINDS and "value" in v

    def _eq(self, v: Any) -> tuple[Predicate, Hashable, Hashable | None, frozenset | None]:
        field, kind = self.field, self.kind
        key = field_key(kind, v)
        check: Predicate
        if kind in _STR_KINDS:
            check = _StrEquals(field, v)
        elif kind in _NUM_KINDS:
            check = _NumEquals(field, v)
        elif kind == "bool":
            check = _BoolIs(field, v)
        else:

            def check(item: Mapping[str, Any]) -> bool:
                return field_key(kind, item.get(field)) == key

        ids = frozenset((v,)) if field == "id" else None
        # The spec of an equality is its key itself (no filter kind's tag starts a key).
        return check, key, key, ids

    def _compile_object(
        self, obj: dict
    ) -> tuple[Predicate, Hashable, Hashable | None, frozenset | None]:
        fk = obj.get("kind")
        if fk not in FILTER_KINDS:
            raise self.error(
                f"has a filter object with unknown kind {_show(fk)}; "
                f"use one of {', '.join(FILTER_KINDS)}"
            )
        if "value" not in obj:
            raise self.error(f'has a "{fk}" filter object without "value"')
        value = obj["value"]
        if fk == "eq":
            if value is None:
                raise self.error('has an "eq" filter with value null, which matches nothing')
            self.plain(value, where='"eq" value ', obj_ok=False)
            return self._eq(value)
        if fk == "in":
            return self._in(value)
        if fk == "range":
            return self._range(value)
        return self._text(fk, value)

    def _in(self, value: Any) -> tuple[Predicate, Hashable, Hashable | None, frozenset | None]:
        if not isinstance(value, list):
            raise self.error(f'"in" value must be a list, got {_show(value)}')
        field, kind = self.field, self.kind
        for i, x in enumerate(value):
            if x is None:
                raise self.error(f'"in" value item {i} must not be null')
            self.plain(x, where=f'"in" value item {i} ', obj_ok=False)
        keys = frozenset(field_key(kind, x) for x in value)
        ids = frozenset(value) if field == "id" else None
        if not keys:
            return _match_none, ("in", keys), None, frozenset()

        def check(item: Mapping[str, Any]) -> bool:
            x = item.get(field)
            return x is not None and field_key(kind, x) in keys

        return check, ("in", keys), None, ids

    def _range(self, value: Any) -> tuple[Predicate, Hashable, Hashable | None, frozenset | None]:
        field, kind = self.field, self.kind
        if kind in ("bool", "json"):
            raise self.error(f'does not support "range" ({kind} field)')
        if not isinstance(value, dict):
            raise self.error(
                f'"range" value must be an object {{"min"?, "max"?}}, got {_show(value)}'
            )
        lo_raw, hi_raw = value.get("min"), value.get("max")
        if lo_raw is None and hi_raw is None:
            raise self.error('"range" needs "min", "max" or both')
        lo = None if lo_raw is None else self.plain(lo_raw, where='"range" min ', obj_ok=False)
        hi = None if hi_raw is None else self.plain(hi_raw, where='"range" max ', obj_ok=False)
        if kind in ("datetime", "time") and lo is not None and hi is not None:
            if (lo.utcoffset() is None) != (hi.utcoffset() is None):
                raise self.error('"range" min and max must both have a time zone or both have none')

        if kind in _DECODED_KINDS:

            def decode(x: Any) -> Any:
                return _decode(kind, x)

        elif kind in _NUM_KINDS:

            def decode(x: Any) -> Any:
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise TypeError("not a number")
                return x

        else:

            def decode(x: Any) -> Any:
                if not isinstance(x, str):
                    raise TypeError("not a string")
                return x

        def check(item: Mapping[str, Any]) -> bool:
            x = item.get(field)
            if x is None:
                return False
            try:
                d = decode(x)
                return (lo is None or lo <= d) and (hi is None or d <= hi)
            except (TypeError, ValueError, ArithmeticError):
                # Undecodable item value, or aware vs naive: not a match.
                return False

        spec = ("range", None if lo is None else ("v", lo), None if hi is None else ("v", hi))
        return check, spec, None, None

    def _text(
        self, fk: str, value: Any
    ) -> tuple[Predicate, Hashable, Hashable | None, frozenset | None]:
        field = self.field
        if self.kind not in _STR_KINDS:
            raise self.error(f'does not support "{fk}" ({self.kind} field); use it on strings')
        if not isinstance(value, str):
            raise self.error(f'"{fk}" value must be a string, got {_show(value)}')
        check: Predicate
        if fk == "contains":

            def check(item: Mapping[str, Any]) -> bool:
                x = item.get(field)
                return isinstance(x, str) and value in x

        else:

            def check(item: Mapping[str, Any]) -> bool:
                x = item.get(field)
                return isinstance(x, str) and x.startswith(value)

        return check, (fk, value), None, None


class _FieldCheck:
    """Equality on one field as a slotted object, a third of a closure's size: every
    distinct live subscription keeps one (bench/memory.py measures that memory)."""

    __slots__ = ("field", "value")

    def __init__(self, field: str, value: Any) -> None:
        self.field = field
        self.value = value


class _StrEquals(_FieldCheck):
    __slots__ = ()

    def __call__(self, item: Mapping[str, Any]) -> bool:
        return item.get(self.field) == self.value


class _NumEquals(_FieldCheck):
    __slots__ = ()

    def __call__(self, item: Mapping[str, Any]) -> bool:
        x = item.get(self.field)
        return x == self.value and x.__class__ is not bool


class _BoolIs(_FieldCheck):
    __slots__ = ()

    def __call__(self, item: Mapping[str, Any]) -> bool:
        return item.get(self.field) is self.value


def _all_of(checks: list[Predicate]) -> Predicate:
    if not checks:
        return _match_all
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks

        def both(item: Mapping[str, Any]) -> bool:
            return a(item) and b(item)

        return both
    checks_t = tuple(checks)

    def every(item: Mapping[str, Any]) -> bool:
        for c in checks_t:
            if not c(item):
                return False
        return True

    return every


def compile_filter(
    schema: ItemSchema, params: Mapping[str, Any], *, op_name: str, request: bool = False
) -> Filter:
    """Compile flat item fields into a Filter; FilterError if invalid (FilterKeyError for
    a key that is not a field), so a misspelt field never silently matches everything.

    Absent or null fields match anything. `request`: `params` are the parameters of a
    GetXsByQuery / CountXs request, where request data sits next to the fields: a
    reserved key holding anything but an object, and a tolerated extension key
    (EXTENSION_KEYS) that is not a field, are skipped. Without it (a handler's filter, a
    visibility rule) every key must be a field, and a reserved key never is one.
    """
    if not isinstance(params, Mapping):
        raise FilterError(f"{op_name}: parameters must be an object, got {_show(params)}")
    fields: list[tuple[str, str, Any]] = []
    unknown: list[Any] = []
    for field, v in params.items():
        if field in RESERVED_KEYS:
            if request and not isinstance(v, Mapping):
                continue  # request data, as docs/protocol.md "Envelope" reserves it
            raise _reserved_error(schema, field, op_name)
        kind = schema.fields.get(field)
        if kind is None:
            if not (request and field in EXTENSION_KEYS):
                unknown.append(field)
        elif v is not None:
            fields.append((field, kind, v))
    if unknown:
        raise _unknown_error(schema, unknown, op_name)
    checks: list[Predicate] = []
    specs: dict[str, Hashable] = {}
    eq_keys: dict[str, Hashable] = {}
    ids: frozenset[str] | None = None
    empty = False
    for field, kind, v in fields:
        field = sys.intern(field)  # each decoded message brings its own copy of the name
        check, spec, eq_key, field_ids = _Compiler(op_name, field, kind).compile(v)
        checks.append(check)
        specs[field] = spec
        if eq_key is not None:
            eq_keys[field] = eq_key
        if field_ids is not None:
            if field == "id":
                ids = field_ids
            else:
                empty = True
    key = tuple(sorted(specs.items()))
    if empty:
        # A field restricted to an empty set: nothing can match, so nothing needs indexing.
        return Filter(_match_none, key, (), frozenset())
    return Filter(_all_of(checks), key, tuple(eq_keys.items()), ids)


_MAX_NAMED = 5  # unknown keys named in one message; a request may hold thousands


def _known(schema: ItemSchema) -> str:
    return f"{schema.name} has: {', '.join(schema.fields)}"


def _did_you_mean(key: Any, fields: Iterable[str]) -> str | None:
    """The field a misspelt key probably means: the same name but for case and
    underscores (`buyer_id`, `BuyerID`: `buyerId`), a foreign key without its `Id`
    (`buyer`: `buyerId`), the one field it begins (`cat`: `category`), else a close
    spelling (`categroy`: `category`)."""
    if not isinstance(key, str):
        return None
    fields = list(fields)
    norm = key.replace("_", "").lower()
    for name in fields:
        if name.replace("_", "").lower() in (norm, norm + "id"):
            return name
    starting = [name for name in fields if len(norm) >= 3 and name.lower().startswith(norm)]
    if len(starting) == 1:
        return starting[0]
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_error(schema: ItemSchema, keys: list[Any], op_name: str) -> FilterKeyError:
    named = []
    for key in keys[:_MAX_NAMED]:
        hint = _did_you_mean(key, schema.fields)
        named.append(_show(key) + (f" (did you mean {_show(hint)}?)" if hint else ""))
    more = f" and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else ""
    noun = "field" if len(keys) == 1 else "fields"
    return FilterKeyError(f"{op_name}: unknown {noun} {', '.join(named)}{more}; {_known(schema)}")


def _reserved_error(schema: ItemSchema, key: str, op_name: str) -> FilterKeyError:
    reserved = ", ".join(sorted(RESERVED_KEYS))
    also = ""
    if key in schema.fields:
        also = f" (a {schema.name} field of that name can be filtered by a @query's predicate)"
    return FilterKeyError(
        f"{op_name}: {_show(key)} is reserved for request data ({reserved}), "
        f"never a filter{also}; {_known(schema)}"
    )


def filter_for_ids(schema: ItemSchema, ids: Iterable[str], *, op_name: str | None = None) -> Filter:
    """The GetXsByIds filter; shares its key with `{"id": {"kind": "in", "value": ids}}`."""
    op = op_name or f"Get{schema.name}sByIds"
    if not isinstance(ids, (list, tuple)):
        raise FilterError(f'{op}: "ids" must be a list of strings, got {_show(ids)}')
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            raise FilterError(f'{op}: "ids" item {i} must be a string, got {_show(x)}')
    return compile_filter(schema, {"id": {"kind": "in", "value": list(ids)}}, op_name=op)


def both(a: Filter, b: Filter | None) -> Filter:
    """Items matching `a` and `b` (a query and the rows a user may see); `b` None: `a`.

    Its key is the pair of keys, so subscriptions of users who see the same rows share one
    live result; its index hints are both filters' (an id set narrows to the common ids)."""
    if b is None:
        return a
    if a.ids is not None and b.ids is not None:
        ids: frozenset[str] | None = a.ids & b.ids
    else:
        ids = a.ids if a.ids is not None else b.ids
    key = ("and", a.key, b.key)
    if ids is not None and not ids:
        return Filter(_match_none, key, (), frozenset())
    first, second = a.matches, b.matches

    def matches(item: Mapping[str, Any]) -> bool:
        return first(item) and second(item)

    return Filter(matches, key, a.eq_keys + b.eq_keys, ids)
