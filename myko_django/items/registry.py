"""The item registry: which models are items, their wire names, and how their fields travel
(each field's kind is in items/kinds.py)."""

from __future__ import annotations

import decimal
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from myko_django.items.errors import ItemError, OperationError
from myko_django.items.kinds import (
    BY_NAME,
    PortabilityError,
    describe,
    int64,
    kind_of,
    portable_json,
)
from myko_django.live.filters import Filter, FilterError, ItemSchema, compile_filter
from myko_django.wire.naming import to_camel

logger = logging.getLogger(__name__)


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
        if self.kind in ("id", "fk"):
            target = self.field.target_field if self.kind == "fk" else self.field
            return isinstance(target, (models.CharField, models.TextField))
        return BY_NAME[self.kind].plain

    def encode(self, value: Any) -> Any:
        return None if value is None else BY_NAME[self.kind].encode(value)

    def decode(self, value: Any, item_name: str) -> Any:
        """Wire value -> Python value for the model, refusing anything of the wrong type."""
        where = f"{item_name}.{self.wire}"
        if value is None:
            if self.field.null:
                return None
            raise ItemError(f"{where} must not be null")
        kind = BY_NAME[self.kind]
        if not kind.accepts(value):
            raise ItemError(f"{where} must be {kind.expected}, got {describe(value)}")
        try:
            if kind.name == "json":
                portable_json(value, where)
                return value
            if kind.name in ("id", "fk"):
                target = self.field.target_field if kind.name == "fk" else self.field
                key = target.to_python(value)
                return int64(key) if isinstance(key, int) else key
            return kind.decode(value)
        except PortabilityError as exc:
            raise ItemError(str(exc)) from None
        except (ValueError, OverflowError, ValidationError, decimal.InvalidOperation) as exc:
            raise ItemError(f"{where} must be {kind.hint}, got {value!r:.80}") from exc


@dataclass
class ItemType:
    """One model registered as an item type."""

    model: type[models.Model]
    name: str
    plural: str
    codecs: list[FieldCodec] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    # Its permission class (see items/permissions.py); None: the settings decide.
    permission: Any = None
    # user -> the filter (as GetXsByQuery takes) of the rows that user may see; None: all.
    visible_to: Callable[[Any], dict | None] | None = None
    # Field visibility: the names `fields` / `exclude` keep off the wire (never encoded,
    # refused on write), and what is wrong with those settings (system check myko.E012).
    excluded: list[str] = field(default_factory=list)
    field_errors: list[str] = field(default_factory=list)
    # Concrete fields that do not travel (excluded or unsupported): a SET keeps their stored
    # values, a new row gets their defaults.
    kept: list[models.Field] = field(default_factory=list)
    # Wire key (or field name) of an excluded field -> its wire name, for refusing writes.
    refused: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_model(
        cls,
        model: type[models.Model],
        name: str | None = None,
        plural: str | None = None,
        permission: Any = None,
        visible_to: Callable[[Any], dict | None] | None = None,
        fields: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> ItemType:
        name = name or getattr(model, "myko_name", None) or model.__name__
        plural = plural or getattr(model, "myko_plural", None) or name + "s"
        item_type = cls(
            model=model,
            name=name,
            plural=plural,
            permission=permission or getattr(model, "myko_permission", None),
            visible_to=visible_to or getattr(model, "myko_visible_to", None),
        )
        if fields is None and exclude is None:
            fields = getattr(model, "myko_fields", None)
            exclude = getattr(model, "myko_exclude", None)
        hidden = item_type._hidden_fields(fields, exclude)
        for f in model._meta.get_fields():
            if f in hidden:
                item_type.excluded.append(f.name)
                wire = to_camel(f.attname if isinstance(f, models.ForeignKey) else f.name)
                for key in (wire, f.name, getattr(f, "attname", f.name)):
                    item_type.refused[key] = wire
                if getattr(f, "concrete", False):
                    item_type.kept.append(f)
                continue
            if f.many_to_many and not f.auto_created:
                item_type.unsupported.append(f"{f.name} (many-to-many)")
                continue
            if not getattr(f, "concrete", False):
                continue
            if f.primary_key:
                item_type.codecs.insert(0, FieldCodec(f, "id", "id"))
                continue
            kind = kind_of(f)
            if kind is None:
                item_type.unsupported.append(f"{f.name} ({type(f).__name__})")
                item_type.kept.append(f)
                continue
            wire = to_camel(f.attname if kind.name == "fk" else f.name)
            item_type.codecs.append(FieldCodec(f, wire, kind.name))
        for codec in item_type.codecs:  # an exposed wire key is never refused
            item_type.refused.pop(codec.wire, None)
        return item_type

    def _hidden_fields(self, fields: Any, exclude: Any) -> set[models.Field]:
        """The model fields that `fields` / `exclude` keep off the wire; mistakes are noted
        in `field_errors` (and, to fail closed, every field named in either is applied)."""
        meta = self.model._meta
        known: dict[str, models.Field] = {}
        for f in meta.get_fields():
            if getattr(f, "concrete", False) or (f.many_to_many and not f.auto_created):
                known[f.name] = f
                known.setdefault(getattr(f, "attname", f.name), f)
        if fields is not None and exclude is not None:
            self.field_errors.append("sets both fields and exclude; set at most one")

        def resolve(option: str, names: Any) -> set[models.Field]:
            if names is None:
                return set()
            if isinstance(names, str):
                self.field_errors.append(f"{option} must be a list of field names, not a string")
                names = [names]
            unknown = [n for n in names if n not in known]
            if unknown:
                choices = ", ".join(sorted({f.name for f in known.values()}))
                self.field_errors.append(
                    f"{option} names unknown field{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(map(repr, unknown))} (fields: {choices})"
                )
            return {known[n] for n in names if n in known}

        shown = resolve("fields", fields)
        hidden = resolve("exclude", exclude)
        if meta.pk in hidden:
            self.field_errors.append(
                f"exclude names the primary key {meta.pk.name!r}, which always travels (as id)"
            )
        if fields is not None:
            hidden |= set(known.values()) - shown
        hidden.discard(meta.pk)
        return hidden

    def visibility(self, user: Any) -> Filter | None:
        """The filter of the rows `user` may see (None: every row), from `visible_to`."""
        if self.visible_to is None:
            return None
        spec = self.visible_to(user)
        if spec is None:
            return None
        try:
            if not isinstance(spec, dict):
                raise FilterError(f"expected a filter dict or None, got {type(spec).__name__}")
            unknown = sorted(str(k) for k in spec if k not in self.schema.fields)
            if unknown:  # ignored, they would let every user see every row
                raise FilterError(f"unknown or hidden fields {', '.join(unknown)}")
            return compile_filter(self.schema, spec, op_name=f"{self.name} visibility")
        except FilterError as exc:
            # The server's mistake, not the client's: the detail goes to the log.
            logger.error("myko: %s.visible_to(%r) returned a bad filter: %s", self.name, user, exc)
            raise OperationError(f"{self.name}: the server's visibility rule failed") from exc

    @property
    def pk_codec(self) -> FieldCodec:
        return self.codecs[0]

    @property
    def required_kept(self) -> list[models.Field]:
        """The fields that do not travel and that a new row cannot fill by itself: with any
        of them, only server code that sets it can create rows (clients cannot)."""
        return [f for f in self.kept if not has_default(f)]

    @functools.cached_property
    def wires(self) -> frozenset[str]:
        """The wire keys of the fields that travel."""
        return frozenset(c.wire for c in self.codecs)

    @property
    def schema(self) -> ItemSchema:
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
            raise ItemError(f"{self.name} id must be a string, got {describe(item_id)}")
        return self.pk_codec.decode(item_id, self.name)

    @property
    def assigns_ids(self) -> bool:
        """Whether the server can give a new row its id: an auto-increment primary key (of
        the model or, with multi-table inheritance, of its root parent), or one with a
        default (an `Item`'s UUID)."""
        pk = self.model._meta.pk
        while pk.remote_field is not None and pk.remote_field.parent_link:
            pk = pk.target_field
        return isinstance(pk, models.AutoField) or pk.has_default() or pk.has_db_default()

    def build(
        self,
        wire_item: Any,
        existing: models.Model | None,
        *,
        check_references: bool = True,
        assign_id: bool = False,
    ) -> models.Model:
        """A validated model instance replacing the whole item (a SET, docs/protocol.md).

        `check_references=False` leaves foreign keys to `check_references()`, which checks a
        whole batch in one query per field instead of one per item. `assign_id=True` builds
        a new row whose id the server assigns (CreateX): `wire_item` must not have one.

        Fields kept off the wire (`fields` / `exclude`) cannot be written: a key naming one
        is refused. An existing row keeps their stored values; a new row gets their defaults.
        """
        if not isinstance(wire_item, dict):
            raise ItemError(f"{self.name}: item must be an object, got {describe(wire_item)}")
        for key, wire in self.refused.items():
            if key in wire_item:
                raise ItemError(f"{self.name}.{wire} cannot be written")
        if assign_id:
            if "id" in wire_item:
                raise ItemError(f'{self.name}: "id" is assigned by the server; leave it out')
            if not self.assigns_ids:
                pk = self.model._meta.pk
                raise ItemError(
                    f"{self.name}: the server cannot assign the id of a new item "
                    f"({self.model.__name__}.{pk.name} has no default and is not "
                    "auto-increment); SET the item with its id instead"
                )
            instance = self.model()  # the key's default, or None for the database to assign
            label = f"new {self.name}"
        elif "id" not in wire_item:
            raise ItemError(f"{self.name}: item has no id")
        else:
            instance = self.model(pk=self.decode_id(wire_item["id"]))
            label = f"{self.name} {wire_item['id']}"
        if existing is not None:
            for f in self.kept:
                setattr(instance, f.attname, getattr(existing, f.attname))
        elif self.required_kept:
            f = self.required_kept[0]
            raise ItemError(
                f"{label}: new items cannot be created over myko: "
                f"{self.name}.{self.refused.get(f.name, f.name)} is required, has no default "
                "and is not exposed"
            )
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
        skip += [f.name for f in self.kept]  # stored values or defaults, not the client's
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


def has_default(f: models.Field) -> bool:
    """Whether a new row gets a valid value for `f` without one being given: a default (of
    the model or the database), a value set on save, null, or an allowed empty string."""
    return (
        f.has_default()
        or f.has_db_default()
        or not f.editable
        or getattr(f, "auto_now", False)
        or getattr(f, "auto_now_add", False)
        or f.null
        or (f.blank and f.empty_strings_allowed)
    )


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
_explicit: dict[type[models.Model], dict[str, Any]] = {}


def register(
    model: type[models.Model] | None = None,
    *,
    name: str | None = None,
    plural: str | None = None,
    permission: Any = None,
    visible_to: Callable[[Any], dict | None] | None = None,
    fields: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
):
    """Make an existing model an item without changing its table. Usable as a decorator.

    `permission`: its permission class (see myko_django.permissions); `visible_to(user)`:
    the filter of the rows that user may see (None: all), as `myko_visible_to` on an Item.
    `fields` / `exclude` (at most one; model field names, as `myko_fields` / `myko_exclude`
    on a model): the fields that travel, or those that do not. The primary key always
    travels; the others are never sent and clients cannot write them."""

    def do(m: type[models.Model]) -> type[models.Model]:
        _explicit[m] = {
            "name": name,
            "plural": plural,
            "permission": permission,
            "visible_to": visible_to,
            "fields": fields,
            "exclude": exclude,
        }
        return m

    return do(model) if model is not None else do


def explicit_registrations() -> dict[type[models.Model], dict[str, Any]]:
    return dict(_explicit)
