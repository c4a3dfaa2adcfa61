"""The import rules of docs/architecture.md that import-linter cannot say.

`lint-imports` (contracts in pyproject.toml, run by bin/test) checks that imports point
down the layers. Here: no import cycle among the package's modules, function-level and
TYPE_CHECKING imports included; no function-level import (the usual way to hide a cycle)
beyond a short allow-list; and the pure layers import in a bare interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "myko_django"

# Function-level imports of the package's own modules that are allowed, and why. Each key is
# (module, function) and each value the modules it may import there; "<dynamic>" stands for
# importlib.import_module / __import__ with a computed name. Anything else is a failure:
# move the import to the top, or fix the cycle it dodges.
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], set[str]] = {
    # Django imports apps.py before any models module, and a model class cannot be defined
    # before the app registry is ready: what defines one (models, and the log's tables that
    # checks, capture and managers import) is imported in ready(), as Django documents.
    ("myko_django.apps", "MykoConfig.ready"): {
        "myko_django.checks",
        "myko_django.log.adoption",
        "myko_django.log.capture",
        "myko_django.log.managers",
        "myko_django.models",
    },
    # Django's app registry must be ready before the WebSocket routes (their consumer builds
    # on the models) can be imported: get_asgi_application() sets Django up, then imports them.
    ("myko_django.asgi", "get_asgi_application"): {"myko_django.routing"},
    # PEP 562 lazy public API: `import myko_django` must work without settings, so
    # `myko_django.Item` and friends are imported on first use.
    ("myko_django", "__getattr__"): {"<dynamic>"},
    # settings.SESSION_ENGINE names the session store, as in Django's SessionMiddleware;
    # not a module of this package.
    ("myko_django.server.endpoint", "SessionFromCookie.__init__"): {"<dynamic>"},
}


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_package(module: str, files: dict[str, Path]) -> bool:
    return files[module].name == "__init__.py"


def _resolve(node: ast.ImportFrom, module: str, files: dict[str, Path]) -> str:
    """The absolute module an `from ... import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module, files):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str, files) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = _resolve(node, module, files)
    # `from package import name` imports the submodule when there is one.
    found = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in files]
    return found or [source]


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def function_level_imports() -> dict[tuple[str, str], dict[str, int]]:
    """Per (module, function): each module of the package imported there, with its line."""
    files = _module_files()
    found: dict[tuple[str, str], dict[str, int]] = {}

    def visit(node: ast.AST, module: str, scope: list[str], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inside = in_function or not isinstance(child, ast.ClassDef)
                visit(child, module, [*scope, child.name], inside)
                continue
            if in_function:
                key = (module, ".".join(scope))
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _imported_modules(child, module, files):
                        if target == PACKAGE or target.startswith(PACKAGE + "."):
                            found.setdefault(key, {})[target] = child.lineno
                elif isinstance(child, ast.Call) and _is_dynamic_import(child):
                    found.setdefault(key, {})["<dynamic>"] = child.lineno
            visit(child, module, scope, in_function)

    for module, path in files.items():
        visit(ast.parse(path.read_text(), str(path)), module, [], False)
    return found


def test_no_function_level_import_beyond_the_allow_list():
    unexpected = [
        f"{module}:{line} in {function}() imports {target}"
        for (module, function), targets in sorted(function_level_imports().items())
        for target, line in sorted(targets.items(), key=lambda t: t[1])
        if target not in ALLOWED_FUNCTION_IMPORTS.get((module, function), set())
    ]
    assert not unexpected, (
        "Function-level imports of myko_django modules hide import cycles; move them to the "
        "top of the module (and fix any cycle that shows), or justify them in "
        "ALLOWED_FUNCTION_IMPORTS:\n  " + "\n  ".join(unexpected)
    )


def test_the_allow_list_has_no_stale_entries():
    found = function_level_imports()
    stale = [
        f"{module}.{function}: {target}"
        for (module, function), targets in ALLOWED_FUNCTION_IMPORTS.items()
        for target in targets
        if target not in found.get((module, function), {})
    ]
    assert not stale, "Remove from ALLOWED_FUNCTION_IMPORTS:\n  " + "\n  ".join(stale)


def _import_graph() -> grimp.ImportGraph:
    """Every import among the package's modules: top-level, function-level and
    TYPE_CHECKING alike. Importing `a.b.c` also runs the `a.b` package's `__init__`, so an
    importer depends on the subpackages above what it imports too (the root package, which
    imports nothing but `version` when it runs, is left out of that)."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    for importer in list(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            parts = imported.split(".")
            for n in range(2, len(parts)):
                parent = ".".join(parts[:n])
                if parent != importer and not importer.startswith(parent + "."):
                    graph.add_import(importer=importer, imported=parent)
    return graph


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                connect(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            connect(module)
    return components


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    lines = []
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            details = graph.get_import_details(importer=importer, imported=imported)
            where = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details)
            lines.append(f"{importer} -> {imported} ({where or 'runs its package __init__'})")
    return "\n    ".join(lines)


def test_no_import_cycle():
    graph = _import_graph()
    cycles = _cycles(graph)
    assert not cycles, "Import cycles among myko_django modules:\n  " + "\n  ".join(
        f"{' <-> '.join(c)}\n    {_describe(graph, c)}" for c in cycles
    )


def _bare_import(modules: list[str]) -> set[str]:
    """Import the modules in a fresh interpreter without Django settings; the top-level
    names then in sys.modules."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "print(' '.join(sorted({name.partition('.')[0] for name in sys.modules})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


SERVER_STACK = {"django", "channels", "channels_redis", "daphne", "asgiref"}


@pytest.mark.parametrize(
    ("modules", "absent"),
    [
        (
            [
                "myko_django.live.engine",
                "myko_django.live.sequencer",
                "myko_django.live.filters",
                "myko_django.live.updates",
                "myko_django.wire.codecs",
                "myko_django.wire.envelope",
                "myko_django.wire.naming",
            ],
            SERVER_STACK | {"asyncio"},
        ),
        # The per-connection protocol state is async, and unit-testable without Django.
        (["myko_django.server.connection"], SERVER_STACK),
        # The package's public API loads lazily: importing it needs no settings.
        (["myko_django"], SERVER_STACK | {"asyncio"}),
        (["myko_django.client"], SERVER_STACK),
    ],
    ids=["live+wire", "server.connection", "myko_django", "client"],
)
def test_imports_in_a_bare_interpreter(modules, absent):
    loaded = _bare_import(modules)
    assert not loaded & absent, f"{', '.join(modules)} imported {sorted(loaded & absent)}"
