"""`myko_django/items/typegen.py`: how item types and operations become TypeScript.

The models here live in an isolated app registry (they have no table and no other test sees
them); `edge_case_module()` is also compiled by tsc in tests/system/test_typegen_tsc.py, which
proves the renamed and quoted names below are valid TypeScript.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypedDict

import pytest
from django.db import models
from django.test.utils import isolate_apps

from myko_django.items import operations
from myko_django.items.kinds import KINDS
from myko_django.items.operations import Handler
from myko_django.items.params import signature_params
from myko_django.items.registry import ItemType, Registry
from myko_django.items.typegen import (
    _FILTER_TYPES,
    KIND_TYPES,
    RESERVED_WORDS,
    annotation_type,
    collect,
    identifier,
    render,
)


def block(text: str, head: str) -> list[str]:
    """The member lines of the declaration starting with `head` (up to its closing brace)."""
    lines = text.splitlines()
    start = lines.index(head)
    end = lines.index("};", start) if head.startswith("export type") else None
    if end is None:
        end = lines.index("}", start)
    return [line.strip() for line in lines[start + 1 : end]]


def user_handler(kind: str, name: str, func: Any, item_type: str | None = None) -> Handler:
    skip = 0 if kind == "query" else 1
    return Handler(kind, name, func, signature_params(func, skip), item_type)


def build(item_types: list[ItemType], user: dict[str, dict[str, Handler]], monkeypatch) -> str:
    """The module for these item types, with the derived operations items/operations.py
    gives them (over a registry of their own) and these user handlers."""
    registry = Registry()
    for it in item_types:
        registry.add(it)
    monkeypatch.setattr(operations, "registry", registry)
    derived = operations._derived()
    return render(item_types, collect(item_types, derived, user))


class Shape(TypedDict, total=False):
    sides: int
    name: str


def make_thing(ctx, *, labels: list[str], limit: int | None = None, mode: Literal["a", "b"] = "a"):
    """Makes things.

    Not part of the summary."""


def count_things(ctx, *, options: dict, raw: Any, shape: Shape) -> dict[str, int]:
    return {}


def nothing(ctx) -> None:
    return None


def things_by_size(*, size: float, seq: int = 0):
    return {}


EDGE_USER_HANDLERS = {
    "command": {
        # the name of an item type, and a class that gets it second
        "Weird": user_handler("command", "Weird", nothing),
        "make-thing": user_handler("command", "make-thing", make_thing),
        # A params type name taken by an item type ("CountThingsParams" below)
        "CountThings": user_handler("command", "CountThings", count_things),
    },
    "query": {"ThingsBySize": user_handler("query", "ThingsBySize", things_by_size, "Weird")},
    "report": {},
}


def edge_case_models():
    """Models whose names and fields push the generator: every field kind, nullable and not,
    TypeScript reserved words as field names, item names TypeScript cannot use."""

    class Weird(models.Model):
        label = models.CharField(max_length=10, help_text="Shown in lists */ not code")
        note = models.TextField(blank=True)
        count = models.IntegerField(default=0)
        big = models.BigIntegerField(null=True)
        small = models.PositiveSmallIntegerField(null=True)
        ratio = models.FloatField(null=True)
        active = models.BooleanField(default=False)
        maybe = models.BooleanField(null=True)
        price = models.DecimalField(max_digits=8, decimal_places=2, null=True)
        seen_at = models.DateTimeField(null=True)
        day = models.DateField()
        at = models.TimeField(null=True)
        token = models.UUIDField(null=True)
        extra = models.JSONField(null=True)
        strict_extra = models.JSONField(default=dict)
        # reserved words of TypeScript / JavaScript, fine as Django field names
        new = models.BooleanField(default=False)
        delete = models.CharField(max_length=5, blank=True)
        function = models.IntegerField(null=True)
        café = models.CharField(max_length=5, blank=True)
        created_at = models.DateTimeField(auto_now_add=True)  # a reserved key on the wire
        stamp = models.DateTimeField(auto_now=True)

        class Meta:
            app_label = "testapp"

    class Holder(models.Model):
        weird = models.ForeignKey(Weird, on_delete=models.CASCADE)
        maybe_weird = models.ForeignKey(
            Weird, null=True, on_delete=models.SET_NULL, related_name="+"
        )

        class Meta:
            app_label = "testapp"

    class Dash(models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "testapp"

    class Under(models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "testapp"

    class Word(models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "testapp"

    class Digit(models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "testapp"

    class Clash(models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "testapp"

    class Helper(models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "testapp"

    return [
        ItemType.for_model(Weird),
        ItemType.for_model(Holder),
        ItemType.for_model(Dash, name="my-type", plural="my-types"),
        ItemType.for_model(Under, name="my_type", plural="my_types"),
        ItemType.for_model(Word, name="class", plural="classes"),
        ItemType.for_model(Digit, name="2D shape"),
        ItemType.for_model(Clash, name="CountThingsParams"),
        ItemType.for_model(Helper, name="MykoJson"),
    ]


def edge_case_module(monkeypatch) -> str:
    with isolate_apps("tests.testapp"):
        return build(edge_case_models(), EDGE_USER_HANDLERS, monkeypatch)


@pytest.fixture
def module(monkeypatch) -> str:
    return edge_case_module(monkeypatch)


# ---- field kinds ------------------------------------------------------------------------


def test_every_field_kind_has_a_typescript_type_and_a_filter_type():
    assert set(KIND_TYPES) == {kind.name for kind in KINDS}
    assert set(_FILTER_TYPES) == {kind.name for kind in KINDS}


def test_an_item_type_lists_each_field_with_the_type_of_its_kind_and_nullability(module):
    assert [m for m in block(module, "export type Weird = {") if not m.startswith("/**")] == [
        "id: string;",
        "label: string;",
        "note: string;",
        "count: number;",
        "big: number | null;",
        "small: number | null;",
        "ratio: number | null;",
        "active: boolean;",
        "maybe: boolean | null;",
        "price: string | null;",
        "seenAt: string | null;",
        "day: string;",
        "at: string | null;",
        "token: string | null;",
        "extra: MykoJson;",  # MykoJson holds null already
        "strictExtra: MykoJson;",
        "new: boolean;",
        "delete: string;",
        "function: number | null;",
        '"caf\\u00e9": string;',  # quoted: not an ASCII identifier
        "createdAt: string;",
        "stamp: string;",
    ]


def test_a_foreign_key_is_its_id_string_and_null_only_when_nullable(module):
    assert block(module, "export type Holder = {") == [
        "id: string;",
        "weirdId: string;",
        "maybeWeirdId: string | null;",
    ]


def test_create_requires_exactly_the_fields_without_a_default(module):
    members = block(module, "export type CreateWeirdParams = {")
    required = [m for m in members if "?:" not in m]
    assert required == ["label: string;", "day: string;"]
    # the id is assigned by the server; createdAt is a reserved key, dropped from requests
    assert not any(m.startswith(("id", "createdAt")) for m in members)
    assert "stamp?: string;" in members


def test_a_filter_takes_per_field_a_value_or_the_filter_objects_its_kind_allows(module):
    members = block(module, "export type GetWeirdsByQueryParams = {")
    assert "label?: string | MykoText | null;" in members
    assert "count?: number | MykoEqIn<number> | MykoRange<number> | null;" in members
    assert "active?: boolean | MykoEqIn<boolean> | null;" in members  # no range on booleans
    assert "price?: string | MykoEqIn<string> | MykoRange<string> | null;" in members
    assert "extra?: MykoJson | null;" in members
    assert not any(m.startswith("createdAt") for m in members)  # request data, not a filter
    assert block(module, "export type CountWeirdsParams = {") == members


# ---- names ------------------------------------------------------------------------------


def test_identifiers_are_made_valid_and_never_reserved():
    assert identifier("Target") == "Target"
    assert identifier("my-type") == "my_type"
    assert identifier("2D shape") == "_2D_shape"
    assert identifier("class") == "class_"
    assert identifier("Café") == "Caf_"
    assert all(identifier(word) != word for word in RESERVED_WORDS)


def test_item_types_whose_names_are_not_identifiers_are_renamed_and_keep_their_wire_name(
    module,
):
    assert "export type class_ = {" in module
    assert "export type _2D_shape = {" in module
    assert "export class GetAll2D_shapes {" in module
    assert 'static readonly queryItemType = "2D shape" as const;' in module
    assert 'static readonly queryId = "GetAll2D shapes" as const;' in module
    assert '"2D shape": (item: _2D_shape) => ({ item, itemType: "2D shape" }) as const,' in module


def test_names_two_declarations_would_share_get_a_suffix(module):
    # "my-type" and "my_type" both want my_type: the first (by wire name) keeps it
    assert '/** my-type (wire name "my-type"): the items of testapp.Dash. */' in module
    assert "export type my_type = {" in module
    assert '/** my_type (wire name "my_type"): the items of testapp.Under. */' in module
    assert "export type my_type_Item = {" in module
    # an item type named like a helper of the output, or like a class
    assert "export type MykoJson_Item = {" in module
    assert "export class Weird_Command {" in module
    assert 'static readonly commandId = "Weird" as const;' in module
    # a class's params type name taken by an item type
    assert "export type CountThingsParams = {" in module  # the item type came first
    assert "export type CountThingsParams_Params = {" in module
    declared = re.findall(r"^export (?:type|class|const) (\w+)", module, re.M)
    assert len(declared) == len(set(declared))


# ---- user operations --------------------------------------------------------------------


def test_user_parameters_come_from_the_signature_in_camel_case(module):
    assert block(module, "export type make_thingParams = {") == [
        "labels: string[];",
        "limit?: number | null;",
        'mode?: "a" | "b";',
    ]
    assert block(module, "export type CountThingsParams_Params = {") == [
        "options: { [key: string]: MykoJson };",
        "raw: MykoJson;",
        "shape: { sides?: number; name?: string };",
    ]
    # a reserved key is never a parameter
    assert block(module, "export type ThingsBySizeParams = {") == ["size: number;"]


def test_user_results_come_from_the_return_annotation_else_unknown(module):
    assert "declare readonly $res: () => null;" in block(module, "export class Weird_Command {")
    assert "declare readonly $res: () => unknown;" in block(module, "export class make_thing {")
    assert "declare readonly $res: () => { [key: string]: number };" in block(
        module, "export class CountThings {"
    )
    assert "declare readonly $res: () => Weird[];" in block(module, "export class ThingsBySize {")


def test_a_docstring_summary_becomes_the_class_comment(module):
    assert '/** Wire name "make-thing". Makes things. */' in module


def test_a_fields_help_text_becomes_its_comment_and_cannot_end_it(module):
    assert "  /** Shown in lists *\\/ not code */\n  label: string;" in module


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (str, "string"),
        (int, "number"),
        (float, "number"),
        (bool, "boolean"),
        (None, "null"),
        (list, "MykoJson[]"),
        (list[int], "number[]"),
        (list[int | None], "(number | null)[]"),
        (dict, "{ [key: string]: MykoJson }"),
        (dict[str, list[str]], "{ [key: string]: string[] }"),
        (str | None, "string | null"),
        (Literal["x", 2, None], '"x" | 2 | null'),
        (Any, "MykoJson"),
        (bytes, "unknown"),
        (int | bytes, "unknown"),
        (Shape, "{ sides?: number; name?: string }"),
    ],
)
def test_python_annotations_map_to_typescript(annotation, expected):
    assert annotation_type(annotation) == expected


def test_derived_operations_have_their_documented_results(module):
    assert "declare readonly $res: () => { count: number };" in block(
        module, "export class CountAllWeirds {"
    )
    assert "declare readonly $res: () => Weird | null;" in block(
        module, "export class GetWeirdById {"
    )
    assert "declare readonly $res: () => { id: string };" in block(
        module, "export class CreateWeird {"
    )
    assert "declare readonly $res: () => { deletedCount: number };" in block(
        module, "export class DeleteWeirds {"
    )
    # every class carries its parameters both where upstream's client and myko.js read them
    lines = block(module, "export class GetWeirdsByIds {")
    assert "readonly query: GetWeirdsByIdsParams;" in lines
    assert "readonly params: GetWeirdsByIdsParams;" in lines
    assert "constructor(params: GetWeirdsByIdsParams) {" in lines
    assert "constructor(params: GetAllWeirdsParams = {}) {" in block(
        module, "export class GetAllWeirds {"
    )
