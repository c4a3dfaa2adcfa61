"""The package as pip builds it (issue 10, "Installable"): a wheel from this checkout that
leaves nothing behind in it, holds the whole package and nothing else, whose dependency
ranges contain the versions requirements.txt pins (what CI tests), and which, installed
without the `redis` and `postgres` extras, runs a SQLite project whose asgi.py is the
three lines of the README.

The wheel is built offline (`--no-build-isolation`, with the build backend pinned in
requirements.txt), once per test session.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from myko_django.version import __version__

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "myko_django"
EXTRAS = {"redis": {"channels-redis", "redis"}, "postgres": {"psycopg", "psycopg-pool"}}


def _leftovers() -> set[Path]:
    return {
        path
        for folder in (ROOT, PACKAGE)
        for path in folder.iterdir()
        if path.name in ("build", "dist") or path.name.endswith((".egg-info", ".dist-info"))
    }


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    before = _leftovers()
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--quiet", "--wheel-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert _leftovers() == before, "building left files in the checkout"
    [found] = out.glob("*.whl")
    return found


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        return Parser().parsestr(zf.read(f"myko_django-{__version__}.dist-info/METADATA").decode())


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            [spec] = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


# ---- the wheel ----------------------------------------------------------------------------


def test_the_wheel_holds_the_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {name.split("/")[0] for name in names} == {
        "myko_django",
        f"myko_django-{__version__}.dist-info",
    }
    on_disk = {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert {name for name in names if name.startswith("myko_django/")} == on_disk
    for needed in ("migrations/0001_initial.py", "management/commands/myko_rebuild.py"):
        assert f"myko_django/{needed}" in names


def test_the_version_is_the_package_version(wheel):
    assert wheel.name == f"myko_django-{__version__}-py3-none-any.whl"
    metadata = _metadata(wheel)
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"


# ---- dependency ranges against the pins -----------------------------------------------------


def _requirements(wheel: Path) -> dict[str | None, list[Requirement]]:
    """Requires-Dist by extra (None: the base install)."""
    metadata = _metadata(wheel)
    extras = metadata.get_all("Provides-Extra") or []
    by_extra: dict[str | None, list[Requirement]] = {None: []}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None:
            by_extra[None].append(requirement)
            continue
        [extra] = [e for e in extras if requirement.marker.evaluate({"extra": e})]
        by_extra.setdefault(extra, []).append(requirement)
    return by_extra


def test_redis_and_postgres_are_extras_a_sqlite_project_does_not_pull(wheel):
    by_extra = _requirements(wheel)
    for extra, names in EXTRAS.items():
        assert {canonicalize_name(r.name) for r in by_extra[extra]} == names, extra
    base = {canonicalize_name(r.name) for r in by_extra[None]}
    assert not base & {"channels-redis", "redis", "psycopg", "psycopg-binary", "psycopg-pool"}
    [psycopg] = [r for r in by_extra["postgres"] if r.name == "psycopg"]
    assert psycopg.extras == {"binary"}


def _check_range(requirement: Requirement, pins: dict[str, Version]) -> list[str]:
    name = canonicalize_name(requirement.name)
    pin = pins.get(name)
    if pin is None:
        return [f"{requirement}: requirements.txt pins no version of {name}, so CI tests none"]
    problems = []
    if not requirement.specifier.contains(pin, prereleases=True):
        problems.append(f"{requirement}: excludes the pinned {name}=={pin}, which CI tests")
    lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    if lower != [pin]:
        problems.append(f"{requirement}: should start at the pinned version, >={pin}")
    if not [s for s in requirement.specifier if s.operator == "<"]:
        problems.append(f"{requirement}: open-ended; stop below the next major (<{pin.major + 1})")
    return problems


def test_every_range_starts_at_the_pinned_version_and_is_capped(wheel):
    pins = _pins()
    problems = [
        problem
        for requirements in _requirements(wheel).values()
        for requirement in requirements
        for problem in _check_range(requirement, pins)
    ]
    assert not problems, "\n".join(problems)


def test_the_build_backend_range_holds_its_pin():
    pins = _pins()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    for line in build["requires"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules the package imports that are neither its own nor the stdlib's,
    with the files importing them."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "myko_django" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_imported_distribution_is_declared(wheel):
    declared = {canonicalize_name(r.name) for reqs in _requirements(wheel).values() for r in reqs}
    providers = importlib.metadata.packages_distributions()
    missing = [
        f"{module} (imported by {', '.join(sorted(files))})"
        for module, files in sorted(_third_party_imports().items())
        if not {canonicalize_name(d) for d in providers.get(module, [module])} & declared
    ]
    assert not missing, "Declare in pyproject.toml (and pin in requirements.txt): " + ", ".join(
        missing
    )


# ---- installed without the extras: a SQLite project --------------------------------------

SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test"
ALLOWED_HOSTS = ["localhost"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "myko_django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MYKO = {"PERMISSIONS": {"Product": "myko_django.permissions.AllowAny"}}
"""

# The README's asgi.py, as a user writes it.
ASGI = """
import os

from myko_django.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_asgi_application()
"""

MODELS = """
from django.db import models

from myko_django import Item


class Product(Item):
    name = models.CharField(max_length=100)
"""

# Runs in the project's folder, with the unpacked wheel on the path instead of the checkout.
PROJECT = """
import asyncio, importlib, importlib.abc, json, os, pkgutil, sys

EXTRAS = ("channels_redis", "redis", "psycopg", "psycopg_pool", "psycopg2")


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NotInstalled())

import myko_django

assert myko_django.__file__.startswith(sys.argv[1]), myko_django.__file__
from mysite.asgi import application  # sets Django up

for module in pkgutil.walk_packages(myko_django.__path__, "myko_django."):
    importlib.import_module(module.name)

from django.core.management import call_command

call_command("migrate", run_syncdb=True, verbosity=0)
call_command("check", fail_level="WARNING")  # a SystemCheckError on any warning

from channels.testing import HttpCommunicator, WebsocketCommunicator
from shop.models import Product

from myko_django.log.tables import Event

Product.objects.create(id="p1", name="first")
events = Event.objects.count()
QUERY = {"queryId": "GetAllProducts", "queryItemType": "Product", "query": {"tx": "q1"}}


async def main():
    host = [(b"host", b"localhost")]
    http = await HttpCommunicator(application, "GET", "/nowhere", headers=host).get_response()
    ws = WebsocketCommunicator(application, "/myko")
    connected, _ = await ws.connect()
    await ws.send_to(text_data=json.dumps({"event": "ws:m:query", "data": QUERY}))
    response = json.loads(await ws.receive_from(timeout=10))
    await ws.disconnect()
    foreign = WebsocketCommunicator(application, "/myko", [(b"origin", b"http://evil.example")])
    refused, _ = await foreign.connect()
    return {
        "events": events,
        "http": http["status"],
        "connected": connected,
        "response": response,
        "foreign_origin_connected": refused,
        "extras_loaded": sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS),
    }


print(json.dumps(asyncio.run(main())), flush=True)
os._exit(0)  # the hub's threads need no orderly stop here
"""


def test_installed_without_extras_a_sqlite_project_runs(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)  # what pip installs of a pure-Python wheel
    project = tmp_path / "project"
    for name, text in {
        "mysite/__init__.py": "",
        "mysite/settings.py": SETTINGS,
        "mysite/asgi.py": ASGI,
        "mysite/urls.py": "urlpatterns = []\n",
        "shop/__init__.py": "",
        "shop/models.py": MODELS,
    }.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PYTHONPATH=f"{site}{os.pathsep}{project}", DJANGO_SETTINGS_MODULE="mysite.settings")
    out = subprocess.run(
        [sys.executable, "-c", PROJECT, str(site)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "events": 1,
        "http": 404,  # Django's, for a URL the project does not have
        "connected": True,
        "response": {
            "event": "ws:m:query-response",
            "data": {
                "tx": "q1",
                "sequence": 0,
                "upserts": [{"itemType": "Product", "item": {"id": "p1", "name": "first"}}],
                "deletes": [],
                "totalCount": 1,
            },
        },
        "foreign_origin_connected": False,
        "extras_loaded": [],
    }
