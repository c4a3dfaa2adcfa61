"""TypeScript declarations for the item types and operations of a project
(`manage.py myko_typegen`).

The output is one TypeScript module that stands alone (it imports nothing):

- a type per item type, as its items travel (docs/protocol.md, "Items"): field kinds give
  the types, a nullable field adds `| null`, a foreign key is its `xxxId` string;
- a class per query, report and command, derived (docs/protocol.md, "Derived operations")
  and the project's own (`@query`, `@report`, `@command`), with its parameters and result.

The classes have the shape of upstream myko's generated ones (static and instance
`queryId` / `queryItemType`, `reportId`, `commandId`; the parameters under `query`,
`report` or `command`; the result type in the phantom `$res`), so upstream's TypeScript
client takes them, and they also carry the parameters as `params`, which is what the typed
helpers of myko.js read. Names that are not valid TypeScript identifiers, TypeScript's
reserved words and names two declarations would share are renamed in the output; the wire
names in the string literals are never changed.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from myko_django.items import operations as ops
from myko_django.items.operations import KINDS, Handler
from myko_django.items.params import Param
from myko_django.items.registry import FieldCodec, ItemType, has_default, registry
from myko_django.version import __version__
from myko_django.wire.envelope import RESERVED_KEYS

# ---- names ------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")

# Words a TypeScript declaration may not be named: JavaScript's reserved words (strict mode
# included), the names of TypeScript's own types, and contextual keywords kept out to be safe.
RESERVED_WORDS = frozenset(
    """
    break case catch class const continue debugger default delete do else enum export extends
    false finally for function if import in instanceof new null return super switch this throw
    true try typeof var void while with implements interface let package private protected
    public static yield await async arguments eval
    any unknown never number string boolean symbol bigint object undefined
    abstract as asserts declare get infer is keyof module namespace readonly require set type
    unique satisfies of from global out accessor override Object
    """.split()
)

# The helper types of the output, named before anything of the project's.
JSON_TYPE = "MykoJson"
EQ_IN = "MykoEqIn"
RANGE = "MykoRange"
TEXT = "MykoText"
HELPERS = (JSON_TYPE, EQ_IN, RANGE, TEXT, "ItemTypes", "items", "queries", "reports", "commands")


def identifier(name: str) -> str:
    """`name` as a TypeScript identifier: other characters become `_`, a leading digit gets a
    `_` before it, a reserved word a `_` after it."""
    text = re.sub(r"[^A-Za-z0-9_$]", "_", name) or "_"
    if text[0].isdigit():
        text = "_" + text
    if text in RESERVED_WORDS:
        text += "_"
    return text


def property_name(name: str) -> str:
    """A property key: bare when it is an identifier (reserved words are allowed there),
    else a string literal."""
    return name if _IDENTIFIER.match(name) else literal(name)


def literal(text: str) -> str:
    """A TypeScript string literal (JSON's escapes are TypeScript's)."""
    return json.dumps(text)


def _comment(text: str | None, indent: str = "") -> list[str]:
    """A one-paragraph doc comment, or nothing."""
    if not text:
        return []
    words = " ".join(str(text).split()).replace("*/", "*\\/")
    return [f"{indent}/** {words} */"] if words else []


class Names:
    """Hands out unique identifiers: the first to ask for a name gets it; later ones get it
    with their role appended (`Target_Command`), then a number."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken: set[str] = set(taken)

    def claim(self, wanted: str, role: str) -> str:
        base = identifier(wanted)
        for candidate in (base, f"{base}_{role}"):
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate
        number = 2
        while f"{base}_{role}{number}" in self.taken:
            number += 1
        self.taken.add(f"{base}_{role}{number}")
        return f"{base}_{role}{number}"


# ---- field kinds and Python annotations -------------------------------------------------

# The TypeScript type of each field kind's wire value (items/kinds.py; docs/protocol.md,
# "Items"): decimals, dates and times travel as strings, JSON fields as their JSON value.
KIND_TYPES: dict[str, str] = {
    "id": "string",
    "fk": "string",
    "bool": "boolean",
    "int": "number",
    "float": "number",
    "decimal": "string",
    "datetime": "string",
    "date": "string",
    "time": "string",
    "uuid": "string",
    "json": JSON_TYPE,
    "str": "string",
}

# What a field of each kind takes in a GetXsByQuery / CountXs filter besides a plain value
# (docs/protocol.md, "Filters"): "contains" and "startsWith" on string fields only, "range"
# on all but boolean and JSON fields.
_FILTER_TYPES: dict[str, str] = {
    "id": f"string | {TEXT}",
    "fk": f"string | {TEXT}",
    "uuid": f"string | {TEXT}",
    "str": f"string | {TEXT}",
    "int": f"number | {EQ_IN}<number> | {RANGE}<number>",
    "float": f"number | {EQ_IN}<number> | {RANGE}<number>",
    "decimal": f"string | {EQ_IN}<string> | {RANGE}<string>",
    "datetime": f"string | {EQ_IN}<string> | {RANGE}<string>",
    "date": f"string | {EQ_IN}<string> | {RANGE}<string>",
    "time": f"string | {EQ_IN}<string> | {RANGE}<string>",
    "bool": f"boolean | {EQ_IN}<boolean>",
    "json": JSON_TYPE,
}


def field_type(codec: FieldCodec) -> str:
    """The TypeScript type of one field's wire value: its kind's, `| null` when nullable."""
    base = KIND_TYPES[codec.kind]
    if codec.kind == "id" or not codec.field.null or base == JSON_TYPE:
        return base  # the id is never null; MykoJson includes null
    return f"{base} | null"


_PLAIN = {str: "string", int: "number", float: "number", bool: "boolean"}


def annotation_type(annotation: Any, *, unknown: str = "unknown") -> str:
    """The TypeScript type of a Python annotation of a parameter or a result, as it travels
    (JSON's data model, docs/protocol.md "Formats"); `unknown` for what has no JSON form.
    A missing annotation is `unknown` too."""
    if annotation is inspect.Parameter.empty or annotation is inspect.Signature.empty:
        return unknown
    if annotation is Any:
        return JSON_TYPE
    if annotation is None or annotation is type(None):
        return "null"
    if annotation in _PLAIN:
        return _PLAIN[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts: list[str] = []
        for arg in args:
            text = annotation_type(arg, unknown=unknown)
            if text == "unknown":
                return "unknown"
            if text not in parts:
                parts.append(text)
        return " | ".join(parts)
    if origin is typing.Literal:
        return " | ".join(
            literal(a) if isinstance(a, str) else json.dumps(a) if a is not None else "null"
            for a in args
        )
    if annotation is list or origin is list or origin is Iterable:
        inner = annotation_type(args[0], unknown=unknown) if args else JSON_TYPE
        return f"({inner})[]" if " " in inner else f"{inner}[]"
    if annotation is dict or origin is dict or origin is Mapping:
        inner = annotation_type(args[1], unknown=unknown) if len(args) == 2 else JSON_TYPE
        return f"{{ [key: string]: {inner} }}"
    if typing.is_typeddict(annotation):
        return _typed_dict(annotation, unknown)
    return unknown


def _typed_dict(annotation: Any, unknown: str) -> str:
    hints = typing.get_type_hints(annotation)
    required = getattr(annotation, "__required_keys__", frozenset(hints))
    members = [
        f"{property_name(key)}{'' if key in required else '?'}: "
        f"{annotation_type(hint, unknown=unknown)}"
        for key, hint in hints.items()
    ]
    return "{ " + "; ".join(members) + " }" if members else "{}"


def _return_annotation(func: Any) -> Any:
    try:
        hints = typing.get_type_hints(func)
    except (NameError, TypeError, AttributeError):  # names what cannot be resolved here
        return inspect.Parameter.empty
    return hints.get("return", inspect.Parameter.empty)


# ---- what the output holds --------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One parameter: its wire key, whether it may be left out, its TypeScript type."""

    key: str
    optional: bool
    type: str

    def __str__(self) -> str:
        return f"{property_name(self.key)}{'?' if self.optional else ''}: {self.type}"


# In a result type, where the item type's TypeScript name goes.
ITEM = "\x00item"


@dataclass
class Operation:
    """One query, report or command as the output declares it."""

    kind: str  # "query" | "report" | "command"
    wire: str  # its id on the wire
    members: list[Member]  # its parameters, without tx and the other reserved keys
    result: str  # TypeScript type of the result (ITEM: the item type); a query's is ITEM[]
    item_type: str | None = None  # the item type of a query or of ITEM (wire name)
    doc: str | None = None
    name: str = ""  # class name, given out when the module is rendered
    params_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def optional_params(self) -> bool:
        """Whether `new X()` needs no argument (no required parameter)."""
        return all(m.optional for m in self.members)


def _param_members(params: list[Param]) -> list[Member]:
    return [
        Member(p.wire, not p.required, annotation_type(p.annotation))
        for p in params
        if p.wire not in RESERVED_KEYS
    ]


def _creatable(codec: FieldCodec) -> bool:
    """Whether CreateX may leave the field out (docs/protocol.md, "Events": a field left
    out gets its default, null, or an empty string where the model allows one)."""
    return has_default(codec.field)


def _derived_operation(kind: str, wire: str, what: str, it: ItemType) -> Operation:
    """The parameters and result of one derived operation (docs/protocol.md, "Derived
    operations"); `what` is the code items/operations.py gives it."""
    fields = [c for c in it.codecs if c.wire not in RESERVED_KEYS]

    def op(members: list[Member], result: str, doc: str) -> Operation:
        return Operation(kind, wire, members, result, it.name, doc=doc)

    if what == "all":
        return op([], ITEM, f"Every {it.name}.")
    if what == "ids":
        ids = [Member("ids", False, "string[]")]
        return op(ids, ITEM, f"The {it.plural} with these ids (missing ids are left out).")
    if what in ("query", "count"):
        # A field left out or null does not filter; a field named like a reserved key
        # cannot be filtered (its value would be request data).
        members = [Member(c.wire, True, f"{_FILTER_TYPES[c.kind]} | null") for c in fields]
        if what == "query":
            doc = f"The {it.plural} matching a filter: a value or a filter object per field."
            return op(members, ITEM, doc)
        return op(members, "{ count: number }", f"How many {it.plural} match a filter.")
    if what == "count_all":
        return op([], "{ count: number }", f"How many {it.plural} there are.")
    if what == "by_id":
        return op([Member("id", False, "string")], f"{ITEM} | null", f"One {it.name}, or null.")
    if what == "create":
        members = [Member(c.wire, _creatable(c), field_type(c)) for c in fields if c.kind != "id"]
        return op(members, "{ id: string }", f"Create a {it.name}; the server assigns its id.")
    if what == "delete":
        doc = f"Delete one {it.name} (an error when there is none with this id)."
        return op([Member("id", False, "string")], "{ deleted: true }", doc)
    if what == "delete_many":
        doc = f"Delete {it.plural} by id (missing ids are skipped)."
        return op([Member("ids", False, "string[]")], "{ deletedCount: number }", doc)
    raise ValueError(f"typegen: unknown derived operation {what!r} ({wire})")


def _user_operation(handler: Handler) -> Operation:
    doc = inspect.getdoc(handler.func)
    doc = doc.split("\n\n", 1)[0] if doc else None
    members = _param_members(handler.params)
    if handler.kind == "query":
        return Operation("query", handler.name, members, ITEM, handler.item_type, doc=doc)
    result = annotation_type(_return_annotation(handler.func))
    return Operation(handler.kind, handler.name, members, result, doc=doc)


# The item type of the server queries: answered by the server itself, for any parameters
# (docs/protocol.md, "Server queries").
SERVER = "Server"
_SERVER_FIELDS = (
    ("id", "string"),
    ("version", "string"),
    ("address", "string"),
    ("port", "number"),
    ("startedAt", "string"),
)


def _server_queries() -> list[Operation]:
    return [
        Operation(
            "query",
            "GetConnectedServer",
            [],
            ITEM,
            SERVER,
            doc="The worker process that holds this connection (answered by the server).",
        ),
        Operation(
            "query",
            "GetPeerServers",
            [],
            ITEM,
            SERVER,
            doc="The servers of MYKO['PEER_SERVERS'] (answered by the server).",
        ),
    ]


def collect(
    item_types: Iterable[ItemType],
    derived: Mapping[str, Mapping[str, tuple[str, ItemType]]],
    user: Mapping[str, Mapping[str, Handler]],
) -> list[Operation]:
    """Every operation a client can call, by kind then name: a user handler replaces the
    derived operation of its name (items/operations.py)."""
    known = {it.name for it in item_types}
    out: list[Operation] = []
    for kind in KINDS_IN_ORDER:
        names = set(derived.get(kind, {})) | set(user.get(kind, {}))
        if kind == "query":  # unless the project registered its own under these names
            out.extend(op for op in _server_queries() if op.wire not in names)
        for wire in sorted(names):
            handler = user.get(kind, {}).get(wire)
            if handler is not None:
                op = _user_operation(handler)
            else:
                what, it = derived[kind][wire]
                op = _derived_operation(kind, wire, what, it)
            if op.kind == "query" and op.item_type not in known:
                op.notes.append(f"its item type {op.item_type!r} is not registered")
            out.append(op)
    return out


KINDS_IN_ORDER = ("query", "report", "command")
assert set(KINDS_IN_ORDER) == set(KINDS)


# ---- rendering --------------------------------------------------------------------------

_HEADER = """\
// TypeScript types of this project's myko items and operations.
// Written by `manage.py myko_typegen` (myko-django {version}); do not edit: run it again.
//
// Each class builds a request: `new GetTargetsByQuery({{ category: "a" }})` has the
// queryId, the queryItemType and the parameters (as `params`, which myko.js reads, and as
// `query` / `report` / `command`, which upstream's @myko/core reads). `$res` (upstream's),
// `__item` and `__result` (myko.js's) are never set: they carry the result type. A class or
// type renamed here (a name TypeScript cannot use, or one already taken) says its wire name
// in its comment.

/** A JSON value: what a JSON field holds. */
export type {json} = string | number | boolean | null | {json}[] | {{ [key: string]: {json} }};
/** A filter object matching one value or any of a list. */
export type {eq}<T> = {{ kind: "eq"; value: T }} | {{ kind: "in"; value: T[] }};
/** A filter object matching from `min` to `max`, both included. */
export type {range}<T> = {{ kind: "range"; value: {{ min?: T; max?: T }} }};
/** The filter objects of a string field. */
export type {text} =
  | {eq}<string>
  | {range}<string>
  | {{ kind: "contains"; value: string }}
  | {{ kind: "startsWith"; value: string }};
"""


def render(item_types: Iterable[ItemType], operations: list[Operation]) -> str:
    """The TypeScript module for these item types and operations."""
    item_types = sorted(item_types, key=lambda it: it.name)
    names = Names(HELPERS)
    item_names = {it.name: names.claim(it.name, "Item") for it in item_types}
    server_name = None
    if SERVER not in item_names and any(op.item_type == SERVER for op in operations):
        server_name = names.claim(SERVER, "Item")
    for op in operations:
        op.name = names.claim(op.wire, op.kind.capitalize())
    for op in operations:
        op.params_name = names.claim(f"{op.name}Params", "Params")
    ts_names = dict(item_names)
    if server_name:
        ts_names[SERVER] = server_name

    out = [_HEADER.format(version=__version__, json=JSON_TYPE, eq=EQ_IN, range=RANGE, text=TEXT)]
    out.append("// ---- item types ----\n")
    for it in item_types:
        out.extend(_render_item(it, item_names[it.name]))
    if server_name:
        out.extend(_comment("A server, as GetConnectedServer and GetPeerServers list them."))
        out.append(f"export type {server_name} = {{")
        out.extend(f"  {key}: {ts};" for key, ts in _SERVER_FIELDS)
        out.append("};\n")
    for kind in KINDS_IN_ORDER:
        out.append(f"// ---- {_PLURALS[kind]} ----\n")
        out.extend(
            line for op in operations if op.kind == kind for line in _render_operation(op, ts_names)
        )

    out.append("// ---- by wire name ----\n")
    out.append("/** Every item type by its wire name. */")
    out.append("export type ItemTypes = {")
    out.extend(f"  {property_name(wire)}: {name};" for wire, name in item_names.items())
    out.append("};\n")
    out.append("/** An event's item and itemType, per item type (as upstream's `items`). */")
    out.append("export const items = {")
    out.extend(
        f"  {property_name(wire)}: (item: {name}) => ({{ item, itemType: {literal(wire)} }}) "
        "as const,"
        for wire, name in item_names.items()
    )
    out.append("};")
    for kind in KINDS_IN_ORDER:
        out.append("")
        out.append(f"/** The {_PLURALS[kind]} by their wire names. */")
        out.append(f"export const {_PLURALS[kind]} = {{")
        out.extend(
            f"  {property_name(op.wire)}: {op.name}," for op in operations if op.kind == kind
        )
        out.append("};")
    return "\n".join(out) + "\n"


_PLURALS = {"query": "queries", "report": "reports", "command": "commands"}


def _render_item(it: ItemType, name: str) -> list[str]:
    wire = f" (wire name {literal(it.name)})" if name != it.name else ""
    out = _comment(f"{it.name}{wire}: the items of {it.model._meta.label}.")
    out.append(f"export type {name} = {{")
    for codec in it.codecs:
        help_text = getattr(codec.field, "help_text", "") if codec.kind != "id" else ""
        out.extend(_comment(str(help_text) if help_text else None, "  "))
        out.append(f"  {property_name(codec.wire)}: {field_type(codec)};")
    out.append("};")
    out.append("")
    return out


def _render_operation(op: Operation, ts_names: Mapping[str, str]) -> list[str]:
    doc = []
    if op.name != op.wire:
        doc.append(f"Wire name {literal(op.wire)}.")
    if op.doc:
        doc.append(op.doc)
    doc.extend(f"Note: {note}." for note in op.notes)
    item = ts_names.get(op.item_type or "", "unknown")
    result = op.result.replace(ITEM, item)
    if op.kind == "query":
        result = f"{item}[]"
    slot = op.kind  # where upstream's client reads the parameters: query, report, command
    wire_id = literal(op.wire)

    out = _comment(f"The parameters of {op.wire}.")
    if op.members:
        out.append(f"export type {op.params_name} = {{")
        out.extend(f"  {member};" for member in op.members)
        out.append("};")
    else:
        out.append(f"export type {op.params_name} = {{ [key: string]: never }};")
    out.extend(_comment(" ".join(doc)))
    out.append(f"export class {op.name} {{")
    out.append(f"  static readonly {op.kind}Id = {wire_id} as const;")
    if op.kind == "query":
        item_type = literal(op.item_type or "")
        out.append(f"  static readonly queryItemType = {item_type} as const;")
        out.append(f"  readonly queryId = {wire_id} as const;")
        out.append(f"  readonly queryItemType = {item_type} as const;")
    else:
        out.append(f"  readonly {op.kind}Id = {wire_id} as const;")
    out.append(f"  readonly {slot}: {op.params_name};")
    out.append(f"  readonly params: {op.params_name};")
    out.append(f"  declare readonly $res: () => {result};")
    if op.kind == "query":  # myko.js's phantom fields (myko_django/static/myko/myko.d.ts)
        out.append(f"  declare readonly __item?: {item};")
    else:
        out.append(f"  declare readonly __result?: {result};")
    default = " = {}" if op.optional_params else ""
    out.append(f"  constructor(params: {op.params_name}{default}) {{")
    out.append(f"    this.{slot} = params;")
    out.append("    this.params = params;")
    out.append("  }")
    out.append("}")
    out.append("")
    return out


def generate() -> str:
    """The TypeScript module for this project: its registered item types, the derived
    operations and the handlers registered with @query, @report and @command."""
    item_types = list(registry)
    user = {kind: ops.user_handlers(kind) for kind in KINDS}
    return render(item_types, collect(item_types, ops.derived(), user))
