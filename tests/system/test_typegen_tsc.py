"""`manage.py myko_typegen` output, compiled by the real TypeScript compiler.

TypeScript comes from npm (package.json; bin/test runs `npm ci` when node_modules is missing
or older than package-lock.json, the `tsc` fixture when it is not what the lock pins). Each
test writes the generated module, a file that uses it the way an application would (with
myko.js's declarations, myko_django/static/myko/myko.d.ts, and with the interfaces upstream's
@myko/core client takes), and runs `tsc --noEmit --strict` over them. The
`@ts-expect-error` lines are misuses that must not compile: if the types became too loose,
tsc reports the unused directive and the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.support.npm import ensure_node_modules
from tests.unit.test_typegen import edge_case_module

ROOT = Path(__file__).resolve().parents[2]
TSC = ROOT / "node_modules" / ".bin" / "tsc"
MYKO_D_TS = ROOT / "myko_django" / "static" / "myko" / "myko.d.ts"

TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "es2022",
        "module": "esnext",
        "moduleResolution": "bundler",
        "lib": ["es2022", "dom"],
        "types": [],
        "noUnusedLocals": False,
        # where a page imports myko.js from (the README's example)
        "paths": {"/static/myko/myko.js": ["./myko.d.ts"]},
    },
}

# The shapes upstream's TypeScript client (@myko/core) takes: a query, report or command
# object with its id, its parameters under `query` / `report` / `command`, and the result
# type in `$res`. Written here from the protocol, so the test needs no copy of that client.
UPSTREAM = """
export interface UpstreamQuery<T> {
  readonly queryId: string;
  readonly queryItemType: string;
  readonly query: Record<string, unknown>;
  readonly $res?: () => T[];
}
export interface UpstreamReport<T> {
  readonly reportId: string;
  readonly report: Record<string, unknown>;
  readonly $res?: () => T;
}
export interface UpstreamCommand<T> {
  readonly commandId: string;
  readonly command: Record<string, unknown>;
  readonly $res?: () => T;
}
export type UpstreamItem<Q> = Q extends UpstreamQuery<infer R> ? R : never;
export type UpstreamResult<C> = C extends UpstreamCommand<infer R>
  ? R
  : C extends UpstreamReport<infer R>
    ? R
    : never;
export type Equal<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
export function assertType<T extends true>(): T | void {}
"""


@pytest.fixture(scope="session")
def tsc() -> Path:
    """The TypeScript compiler package-lock.json pins, installed when missing (as bin/test
    does)."""
    ensure_node_modules()
    assert TSC.exists(), "package.json lost its typescript devDependency"
    return TSC


def compile_ts(tsc: Path, folder: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    """`tsc --noEmit --strict` over `files` (name -> text) beside myko.d.ts."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(MYKO_D_TS, folder / "myko.d.ts")
    (folder / "upstream.ts").write_text(UPSTREAM)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    config = {**TSCONFIG, "files": ["upstream.ts", *files]}
    (folder / "tsconfig.json").write_text(json.dumps(config, indent=2))
    return subprocess.run(
        [
            str(tsc),
            "-p",
            str(folder / "tsconfig.json"),
            "--noEmit",
            "--strict",
            "--pretty",
            "false",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_compiles(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}\n{result.stderr}"


TESTAPP_USE = """
import {
  CountAllGadgets,
  CreateGadget,
  DeleteGadgets,
  GadgetLabels,
  GetAllGadgets,
  GetGadgetById,
  GetGadgetsByMinCount,
  GetGadgetsByQuery,
  GetPeerServers,
  MakeGadgets,
  WhoAmI,
  items,
  queries,
  type Account,
  type Gadget,
  type ItemTypes,
  type Legacy,
  type MykoJson,
  type Server,
} from "./types";
import type {
  Client,
  CommandDescriptor,
  LiveQuery,
  LiveReport,
  QueryDescriptor,
  ReportDescriptor,
} from "./myko.js";
import {
  assertType,
  type Equal,
  type UpstreamCommand,
  type UpstreamItem,
  type UpstreamQuery,
  type UpstreamReport,
  type UpstreamResult,
} from "./upstream";

declare const client: Client;

// Items: every field kind, as it travels.
const gadget: Gadget = {
  id: "g-1",
  label: "a",
  note: "",
  count: 3,
  ratio: null,
  active: true,
  price: "1.50",
  seenAt: "2024-01-02T03:04:05Z",
  day: "2024-01-02",
  at: "03:04:05",
  token: null,
  extra: { nested: [1, "two", null, { deep: true }] },
  ownerId: "o-1",
  keeperId: null,
  backupId: null,
};
// @ts-expect-error an integer field is a number, not a string
const wrongCount: Gadget = { ...gadget, count: "3" };
// @ts-expect-error a field that is not nullable is never null
const nullLabel: Gadget = { ...gadget, label: null };
// @ts-expect-error excluded fields do not travel (Account keeps apiToken off the wire)
const secret: Account = { id: "a", name: "n", apiToken: "t" };
const legacy: Legacy = { id: "1", title: "t", amount: "0.00", when: "2020-01-01" };
const byName: ItemTypes["Gadget"] = gadget;
const event = items.Gadget(gadget);
assertType<Equal<typeof event.itemType, "Gadget">>();

// myko.js: the typed helpers infer items and results from the generated classes.
const live = client.query(
  new GetGadgetsByQuery({ label: "a", count: { kind: "range", value: { min: 1 } }, ownerId: null }),
);
assertType<Equal<typeof live, LiveQuery<Gadget>>>();
const all = client.query(new GetAllGadgets(), { window: { offset: 0, limit: 20 } });
const firstLabel: string | undefined = all.list()[0]?.label;
const mine = client.query(new GetGadgetsByMinCount({ minCount: 2 }));
assertType<Equal<typeof mine, LiveQuery<Gadget>>>();
const count = client.report(new CountAllGadgets());
assertType<Equal<typeof count, LiveReport<{ count: number }>>>();
const labels = client.report(new GadgetLabels({ prefix: "a" }));
assertType<Equal<typeof labels.value, string[] | undefined>>();
const one = client.report(new GetGadgetById({ id: "g-1" }));
assertType<Equal<typeof one, LiveReport<Gadget | null>>>();
async function commands(): Promise<void> {
  const made = await client.command(new MakeGadgets({ labels: ["a", "b"], failAfter: null }));
  assertType<Equal<typeof made, { [key: string]: MykoJson }>>();
  const created = await client.command(new CreateGadget({ label: "x", ownerId: "o-1" }));
  const newId: string = created.id;
  const gone = await client.command(new DeleteGadgets({ ids: [newId] }));
  const n: number = gone.deletedCount;
  const who = await client.command(new WhoAmI());
  assertType<Equal<typeof who, string | null>>();
}

// The descriptors of myko.d.ts, structurally.
const asQuery: QueryDescriptor<Gadget, unknown> = new GetGadgetsByQuery({ label: "a" });
const asReport: ReportDescriptor<{ count: number }, unknown> = new CountAllGadgets();
const asCommand: CommandDescriptor<unknown, unknown> = new MakeGadgets({ labels: [] });
const peers: QueryDescriptor<Server, unknown> = new GetPeerServers();

// Upstream's client: the same classes, read through its interfaces.
const upQuery: UpstreamQuery<Gadget> = new GetGadgetsByQuery({ label: "a" });
const upReport: UpstreamReport<string[]> = new GadgetLabels();
const upCommand: UpstreamCommand<{ [key: string]: MykoJson }> = new MakeGadgets({ labels: [] });
assertType<Equal<UpstreamItem<GetGadgetsByQuery>, Gadget>>();
assertType<Equal<UpstreamResult<GadgetLabels>, string[]>>();
assertType<Equal<typeof GetGadgetsByQuery.queryId, "GetGadgetsByQuery">>();
assertType<Equal<typeof GetGadgetsByQuery.queryItemType, "Gadget">>();
assertType<Equal<typeof MakeGadgets.commandId, "MakeGadgets">>();
const sameClass: typeof GetAllGadgets = queries.GetAllGadgets;

// Misuses that must not compile.
// @ts-expect-error a string field's filter takes strings
new GetGadgetsByQuery({ label: 3 });
// @ts-expect-error "range" is no filter of a boolean field
new GetGadgetsByQuery({ active: { kind: "range", value: { min: false } } });
// @ts-expect-error "contains" is a filter of string fields only
new GetGadgetsByQuery({ count: { kind: "contains", value: "1" } });
// @ts-expect-error no such field
new GetGadgetsByQuery({ lable: "a" });
// @ts-expect-error MakeGadgets needs its labels
new MakeGadgets({});
// @ts-expect-error labels are strings
new MakeGadgets({ labels: [1] });
// @ts-expect-error CreateGadget needs the label (no default, not null, not blank)
new CreateGadget({ count: 1 });
// @ts-expect-error the server assigns the id of a created item
new CreateGadget({ label: "x", id: "mine" });
// @ts-expect-error a query's items are Gadgets, not Legacy rows
const wrongItems: LiveQuery<Legacy> = client.query(new GetAllGadgets());

export {
  all,
  asCommand,
  asQuery,
  asReport,
  byName,
  commands,
  firstLabel,
  legacy,
  nullLabel,
  peers,
  sameClass,
  secret,
  upCommand,
  upQuery,
  upReport,
  wrongCount,
  wrongItems,
};
"""


def test_the_test_apps_types_compile_and_type_what_uses_them(tsc, tmp_path):
    output = tmp_path / "types.ts"
    call_command("myko_typegen", output=str(output))
    result = compile_ts(tsc, tmp_path, {"types.ts": output.read_text(), "use.ts": TESTAPP_USE})
    assert_compiles(result)


DEMO_USE = """
import {
  CountAllTargets,
  CreateTarget,
  DeleteTarget,
  GetTargetsByQuery,
  RenameTarget,
  type Note,
  type Target,
} from "./types";
import type { Client, LiveQuery, LiveReport } from "./myko.js";
import { assertType, type Equal } from "./upstream";

declare const client: Client;

const targets = client.query(new GetTargetsByQuery({ category: "a" }));
assertType<Equal<typeof targets, LiveQuery<Target>>>();
const page = client.query(new GetTargetsByQuery({}), { window: { offset: 20, limit: 20 } });
const count = client.report(new CountAllTargets());
assertType<Equal<typeof count, LiveReport<{ count: number }>>>();
async function edit(): Promise<void> {
  const { id } = await client.command(new CreateTarget({ name: "new", category: null }));
  const renamed = await client.command(new RenameTarget({ id, name: "renamed" }));
  assertType<Equal<typeof renamed, null>>();
  await client.command(new DeleteTarget({ id }));
}
const target: Target = { id: "t", name: "n", category: null, sceneId: null };
const note: Note = { id: "n", ownerId: "1", text: "" };
// @ts-expect-error RenameTarget needs the new name
new RenameTarget({ id: "t" });
// @ts-expect-error a category is a string or null
const wrong: Target = { ...target, category: 3 };

export { edit, note, page, wrong };
"""


def test_the_demo_projects_types_print_to_stdout_and_compile(tsc, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    result = subprocess.run(
        [sys.executable, "manage.py", "myko_typegen"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "export type Target = {" in result.stdout
    assert "Gadget" not in result.stdout  # the test app is not in the demo project
    files = {
        "types.ts": result.stdout,
        "use.ts": DEMO_USE,
        # the README's example, as written, against the demo's types
        "myko-types.ts": result.stdout,
        "readme.ts": readme_example(),
    }
    assert_compiles(compile_ts(tsc, tmp_path, files))


def readme_example() -> str:
    """The ```ts block of the README's "TypeScript types" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### TypeScript types") :]
    start = section.index("```ts\n") + len("```ts\n")
    return section[start : section.index("```", start)]


EDGE_USE = """
import {
  GetAll2D_shapes,
  Weird_Command,
  class_,
  make_thing,
  my_type,
  my_type_Item,
  type CountThingsParams,
  type CountThingsParams_Params,
  type Weird,
} from "./types";
import type { Client } from "./myko.js";
import { assertType, type Equal } from "./upstream";

declare const client: Client;
declare const weird: Weird;
// Fields named like reserved words and a quoted one are plain properties.
const flags: [boolean, string, number | null, string] = [
  weird.new,
  weird.delete,
  weird.function,
  weird["caf\\u00e9"],
];
const shapes = client.query(new GetAll2D_shapes());
assertType<Equal<typeof GetAll2D_shapes.queryItemType, "2D shape">>();
const item: CountThingsParams = { id: "1", name: "n" };
const params: CountThingsParams_Params = { options: {}, raw: null, shape: { sides: 3 } };
new Weird_Command();
new make_thing({ labels: ["a"], mode: "b" });
// @ts-expect-error mode is "a" or "b"
new make_thing({ labels: ["a"], mode: "c" });
export { flags, item, params, shapes };
"""


def test_renamed_and_quoted_names_are_valid_typescript(tsc, tmp_path, monkeypatch):
    text = edge_case_module(monkeypatch)
    # the names EDGE_USE imports that are not classes of the module are types
    text_ok = "export type class_ = {" in text and "export type my_type_Item = {" in text
    assert text_ok
    use = EDGE_USE.replace("  class_,\n", "  type class_,\n").replace(
        "  my_type,\n  my_type_Item,\n", "  type my_type,\n  type my_type_Item,\n"
    )
    assert_compiles(compile_ts(tsc, tmp_path, {"types.ts": text, "use.ts": use}))


def test_tsc_rejects_a_wrong_field_type(tsc, tmp_path):
    """The check bites: a misuse without @ts-expect-error fails to compile."""
    output = tmp_path / "types.ts"
    call_command("myko_typegen", output=str(output))
    use = (
        'import type { Gadget } from "./types";\n'
        "declare const gadget: Gadget;\n"
        'export const wrong: Gadget = { ...gadget, count: "3" };\n'
    )
    result = compile_ts(tsc, tmp_path, {"types.ts": output.read_text(), "use.ts": use})
    assert result.returncode != 0
    assert "use.ts(3," in result.stdout and "TS2322" in result.stdout, result.stdout
