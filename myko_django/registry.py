"""The item registry: which models are items, their wire names, and how their fields encode.

Wire values are strictly typed (PROTOCOL.md §6): each field's codec checks the JSON type
itself before Django's `to_python`, which would coerce `"1"` into 1.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .naming import to_camel

# Field classes we know how to put on the wire, most specific first.
_KINDS: list[tuple[type[models.Field], str]] = [
    (models.ForeignKey, "fk"),
    (models.BooleanField, "bool"),
    (models.AutoField, "int"),
    (models.BigAutoField, "int"),
    (models.SmallAutoField, "int"),
    (models.IntegerField, "int"),
    (models.FloatField, "float"),
    (models.DecimalField, "decimal"),
    (models.DateTimeField, "datetime"),
    (models.DateField, "date"),
    (models.TimeField, "time"),
    (models.UUIDField, "uuid"),
    (models.JSONField, "json"),
    (models.CharField, "str"),
    (models.TextField, "str"),
]


class ItemError(ValueError):
    """A wire item or id that does not fit its model; the message names the field."""


def field_kind(f: models.Field) -> str | None:
    for cls, kind in _KINDS:
        if isinstance(f, cls):
            return kind
    return None


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


@dataclass
class FieldCodec:
    """How one model field travels: its wire key, its kind, strict decode and encode."""

    field: models.Field
    wire: str
    kind: str

    @property
    def attname(self) -> str:
        return self.field.attname

    @property
    def plain(self) -> bool:
        """Whether `encode` returns every non-null database value unchanged."""
        if self.kind in ("str", "int", "bool", "json"):
            return True
        if self.kind in ("id", "fk"):
            target = self.field.target_field if self.kind == "fk" else self.field
            return isinstance(target, (models.CharField, models.TextField))
        return False

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        kind = self.kind
        if kind in ("id", "fk"):
            return str(value)
        if kind == "decimal":
            return str(value)
        if kind == "datetime":
            text = value.isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        if kind in ("date", "time"):
            return value.isoformat()
        if kind == "uuid":
            return str(value)
        if kind == "float":
            return float(value)
        return value

    def decode(self, value: Any, item_name: str) -> Any:
        """Wire value -> Python value for the model, refusing anything of the wrong type."""
        where = f"{item_name}.{self.wire}"
        if value is None:
            if self.field.null:
                return None
            raise ItemError(f"{where} must not be null")
        kind = self.kind
        ok = {
            "str": isinstance(value, str),
            "id": isinstance(value, str),
            "fk": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "decimal": isinstance(value, str),
            "datetime": isinstance(value, str),
            "date": isinstance(value, str),
            "time": isinstance(value, str),
            "uuid": isinstance(value, str),
            "json": True,
        }[kind]
        if not ok:
            expected = {
                "int": "an integer",
                "float": "a number",
                "bool": "a boolean",
                "json": "JSON",
            }.get(kind, "a string")
            raise ItemError(f"{where} must be {expected}, got {_type_name(value)} {value!r:.80}")
        try:
            if kind == "float":
                number = float(value)
                return number if math.isfinite(number) else _bad(value)
            if kind == "decimal":
                return decimal.Decimal(value) if _is_finite_decimal(value) else _bad(value)
            if kind == "datetime":
                parsed = dt.datetime.fromisoformat(value)
                if timezone.is_naive(parsed):
                    parsed = timezone.make_aware(parsed, dt.UTC)
                return parsed
            if kind == "date":
                return dt.date.fromisoformat(value)
            if kind == "time":
                return dt.time.fromisoformat(value)
            if kind == "uuid":
                return uuid.UUID(value)
            if kind in ("id", "fk"):
                target = self.field.target_field if kind == "fk" else self.field
                key = target.to_python(value)
                return (
                    key if not isinstance(key, int) or _INT64[0] <= key <= _INT64[1] else _bad(key)
                )
            if kind == "int" and not _INT64[0] <= value <= _INT64[1]:
                return _bad(value)
            if kind == "json":
                _portable_json(value, where)
        except ItemError:
            raise
        except (ValueError, OverflowError, ValidationError, decimal.InvalidOperation) as exc:
            hint = {
                "float": "a finite number",
                "int": "an integer in the 64-bit range",
                "decimal": 'a decimal string like "12.50"',
                "datetime": "an ISO-8601 datetime",
                "date": "an ISO-8601 date (YYYY-MM-DD)",
                "time": "an ISO-8601 time",
                "uuid": "a UUID string",
            }.get(kind, "valid")
            raise ItemError(f"{where} must be {hint}, got {value!r:.80}") from exc
        return value


_INT64 = (-(2**63), 2**63 - 1)


def _portable_json(value: Any, where: str, depth: int = 0) -> None:
    """A JSON field value every wire format can carry back: no NaN/Infinity, integers within
    64 bits (MessagePack's limit), string keys, bounded nesting."""
    if depth > 100:
        raise ItemError(f"{where} is nested deeper than 100 levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ItemError(f"{where} must not hold {value} (not a JSON number)")
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            raise ItemError(f"{where} holds an integer beyond 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ItemError(f"{where} has a non-string key {key!r:.40}")
            _portable_json(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _portable_json(item, where, depth + 1)
    elif not (value is None or isinstance(value, (str, float, bool))):
        raise ItemError(f"{where} holds a {type(value).__name__}, which is not JSON")


def _is_finite_decimal(text: str) -> bool:
    try:
        return decimal.Decimal(text).is_finite()
    except decimal.InvalidOperation:
        return False


def _bad(value: Any) -> Any:
    raise ValueError(value)


@dataclass
class ItemType:
    """One model registered as an item type."""

    model: type[models.Model]
    name: str
    plural: str
    codecs: list[FieldCodec] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @classmethod
    def for_model(
        cls, model: type[models.Model], name: str | None = None, plural: str | None = None
    ) -> ItemType:
        name = name or getattr(model, "myko_name", None) or model.__name__
        plural = plural or getattr(model, "myko_plural", None) or name + "s"
        item_type = cls(model=model, name=name, plural=plural)
        for f in model._meta.get_fields():
            if f.many_to_many and not f.auto_created:
                item_type.unsupported.append(f"{f.name} (many-to-many)")
                continue
            if not getattr(f, "concrete", False):
                continue
            if f.primary_key:
                item_type.codecs.insert(0, FieldCodec(f, "id", "id"))
                continue
            kind = field_kind(f)
            if kind is None:
                item_type.unsupported.append(f"{f.name} ({type(f).__name__})")
                continue
            wire = to_camel(f.attname if kind == "fk" else f.name)
            item_type.codecs.append(FieldCodec(f, wire, kind))
        return item_type

    @property
    def pk_codec(self) -> FieldCodec:
        return self.codecs[0]

    @property
    def schema(self):
        from .filters import ItemSchema

        return ItemSchema(name=self.name, fields={c.wire: c.kind for c in self.codecs})

    def encode(self, instance: models.Model) -> dict[str, Any]:
        return {c.wire: c.encode(getattr(instance, c.attname)) for c in self.codecs}

    @property
    def attnames(self) -> list[str]:
        """The columns `encode_values` takes, in order (for `values_list`)."""
        return [c.attname for c in self.codecs]

    def encode_values(self, rows: Iterable[Sequence[Any]]) -> Iterator[dict[str, Any]]:
        """`encode` for rows of `values_list(*attnames)`: no model instance per row, and
        fields whose database value is already the wire value are not touched (loading a
        store of 100,000 items spent most of its time building model instances)."""
        wires = tuple(c.wire for c in self.codecs)
        convert = [(i, c.wire, c.encode) for i, c in enumerate(self.codecs) if not c.plain]
        for row in rows:
            item = dict(zip(wires, row, strict=True))
            for i, wire, encode in convert:
                item[wire] = encode(row[i])
            yield item

    def wire_id(self, pk: Any) -> str:
        return str(pk)

    def decode_id(self, item_id: Any) -> Any:
        if not isinstance(item_id, str):
            raise ItemError(
                f"{self.name} id must be a string, got {_type_name(item_id)} {item_id!r:.80}"
            )
        return self.pk_codec.decode(item_id, self.name)

    def build(
        self, wire_item: Any, existing: models.Model | None, *, check_references: bool = True
    ) -> models.Model:
        """A validated model instance replacing the whole item (PROTOCOL.md §6: SET).

        `check_references=False` leaves foreign keys to `check_references()`, which checks a
        whole batch in one query per field instead of one per item.
        """
        if not isinstance(wire_item, dict):
            raise ItemError(f"{self.name}: item must be an object, got {_type_name(wire_item)}")
        if "id" not in wire_item:
            raise ItemError(f"{self.name}: item has no id")
        pk = self.decode_id(wire_item["id"])
        instance = self.model(pk=pk)
        for codec in self.codecs[1:]:
            f = codec.field
            if codec.wire in wire_item:
                value = codec.decode(wire_item[codec.wire], self.name)
            elif (
                not f.editable or getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
            ):
                if existing is None:
                    continue  # the model's own default, set by __init__ or pre_save
                value = getattr(existing, f.attname)
            elif f.has_default() or f.has_db_default():
                continue  # __init__ already set the default (or the database default marker)
            elif f.null:
                value = None
            elif f.blank and f.empty_strings_allowed:
                value = ""
            else:
                raise ItemError(f"{self.name}.{codec.wire} is required")
            setattr(instance, f.attname, value)
        instance._state.adding = existing is None
        # null is a wire value of its own for nullable fields, whatever `blank` says.
        # The id was decoded above, and the caller already knows whether it exists.
        skip = [self.pk_codec.field.name]
        skip += [
            c.field.name
            for c in self.codecs
            if c.field.null and getattr(instance, c.attname) is None
        ]
        if not check_references:
            skip += [c.field.name for c in self.codecs if c.kind == "fk"]
        try:
            instance.full_clean(exclude=skip, validate_unique=True, validate_constraints=True)
        except ValidationError as exc:
            raise ItemError(self._describe(exc)) from exc
        return instance

    def check_references(self, instances: list[models.Model], using: str) -> None:
        """Every foreign key of `instances` points at an existing row (one query per field)."""
        for codec in self.codecs:
            if codec.kind != "fk":
                continue
            f = codec.field
            wanted = {getattr(i, f.attname) for i in instances} - {None}
            if not wanted:
                continue
            target = f.remote_field.model._base_manager.using(using)
            found = set(
                target.filter(**{f"{f.target_field.attname}__in": wanted}).values_list(
                    f.target_field.attname, flat=True
                )
            )
            for instance in instances:
                value = getattr(instance, f.attname)
                if value is not None and value not in found:
                    raise ItemError(
                        f"{self.name}.{codec.wire}: {f.remote_field.model.__name__} "
                        f"{value} does not exist (item {instance.pk})"
                    )

    def _describe(self, exc: ValidationError) -> str:
        if not hasattr(exc, "error_dict"):
            return f"{self.name}: {' '.join(exc.messages)}"
        by_name = {c.field.name: c.wire for c in self.codecs}
        parts = []
        for name, errors in exc.error_dict.items():
            messages = " ".join(m for e in errors for m in e.messages)
            label = by_name.get(name)
            parts.append(
                f"{self.name}.{label}: {messages}" if label else f"{self.name}: {messages}"
            )
        return "; ".join(parts)


class Registry:
    """All item types of the project, by wire name and by model."""

    def __init__(self) -> None:
        self.by_name: dict[str, ItemType] = {}
        self.by_model: dict[type[models.Model], ItemType] = {}
        self.duplicates: list[tuple[ItemType, ItemType]] = []

    def add(self, item_type: ItemType) -> None:
        if item_type.model in self.by_model:
            return
        if item_type.name in self.by_name:
            self.duplicates.append((self.by_name[item_type.name], item_type))
            return
        self.by_name[item_type.name] = item_type
        self.by_model[item_type.model] = item_type

    def get(self, name: str) -> ItemType:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise ItemError(f"Unknown item type: {name} (known: {known})") from None

    def for_model(self, model: type[models.Model]) -> ItemType | None:
        return self.by_model.get(model._meta.concrete_model) or self.by_model.get(model)

    def __iter__(self) -> Iterable[ItemType]:
        return iter(list(self.by_name.values()))


registry = Registry()

# Models registered explicitly with `register()`; the registry is built from these and from
# subclasses of `Item` when Django is ready.
_explicit: dict[type[models.Model], dict[str, str | None]] = {}


def register(
    model: type[models.Model] | None = None, *, name: str | None = None, plural: str | None = None
):
    """Make an existing model an item without changing its table. Usable as a decorator."""

    def do(m: type[models.Model]) -> type[models.Model]:
        _explicit[m] = {"name": name, "plural": plural}
        return m

    return do(model) if model is not None else do


def explicit_registrations() -> dict[type[models.Model], dict[str, str | None]]:
    return dict(_explicit)
