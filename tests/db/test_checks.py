"""System checks tagged `myko`: MYKO settings, operation names and the precedence rule, and
Postgres connections. Each check fires on a mistake and stays quiet on the project's own
settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.core import checks
from django.core.management import call_command, get_commands
from django.core.management.base import SystemCheckError

from myko_django import checks as myko_checks
from myko_django import conf
from myko_django.items import operations
from myko_django.items.registry import ItemType, registry
from myko_django.log.commands import CommandError, run_command
from myko_django.permissions import AllowAny
from project.demo.models import Target
from tests.testapp.models import Gadget, Note

ROOT = Path(__file__).resolve().parents[2]
MYKO_CHECKS = [
    myko_checks.check_items,
    myko_checks.check_settings,
    myko_checks.check_operations,
    myko_checks.check_databases,
    myko_checks.check_daphne,
    myko_checks.check_asgi_application,
    myko_checks.check_sqlite_transactions,
]


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages]


# ---- the project's own settings are clean ------------------------------------------------


def test_every_myko_check_is_registered_with_the_myko_tag():
    registered = checks.registry.registry.get_checks()
    for check in MYKO_CHECKS:
        assert check in registered
        assert "myko" in check.tags


def test_test_settings_pass_every_check_without_a_message():
    assert checks.run_checks() == []
    call_command("check", "--fail-level", "INFO")  # raises SystemCheckError otherwise


@pytest.mark.parametrize("module", ["project.settings", "tests.settings"])
def test_manage_py_check_is_clean(module):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": module}
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "INFO"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "System check identified no issues" in out.stdout


# ---- MYKO settings -------------------------------------------------------------------------


def test_every_setting_has_a_rule_and_every_default_passes_it():
    assert set(conf.EXPECTED) == set(conf.DEFAULTS)
    for name, value in conf.DEFAULTS.items():
        assert conf.problem(name, value) is None, name


def test_myko_must_be_a_dict(settings):
    settings.MYKO = [("POLL_INTERVAL", 1.0)]
    [error] = myko_checks.check_settings()
    assert error.id == "myko.E004"
    assert error.level == checks.ERROR
    assert error.msg == "settings.MYKO must be a dict, got list."
    assert "POLL_INTERVAL" in error.hint


def test_a_mistyped_key_is_an_error_with_a_did_you_mean(settings):
    settings.MYKO = {"POLL_INTERVALL": 0.5, "COMMAND_RESULT_TTL": 60}
    [error] = myko_checks.check_settings()
    assert error.id == "myko.E005"
    assert error.msg == "Unknown MYKO setting 'POLL_INTERVALL'."
    assert error.hint.startswith("Did you mean 'POLL_INTERVAL'? Known keys: ")
    assert error.hint.endswith(f"{', '.join(sorted(conf.DEFAULTS))}.")


def test_an_unknown_key_lists_the_known_ones(settings):
    settings.MYKO = {"FROBNICATE": True, 7: "x"}
    errors = myko_checks.check_settings()
    assert ids(errors) == ["myko.E005", "myko.E005"]
    assert errors[0].hint.startswith("Known keys: ALLOW_CLIENT_EVENTS, ")
    assert errors[1].msg == "Unknown MYKO setting 7."


def test_manage_py_check_fails_on_a_mistyped_key(settings):
    settings.MYKO = {"MAX_MESAGE_SIZE": 1024}
    with pytest.raises(SystemCheckError, match=r"myko\.E005.*MAX_MESAGE_SIZE"):
        call_command("check", "--tag", "myko")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("POLL_INTERVAL", "1", "a positive number of seconds"),
        ("POLL_INTERVAL", 0, "a positive number of seconds"),
        ("POLL_INTERVAL", -1.5, "a positive number of seconds"),
        ("POLL_INTERVAL", True, "a positive number of seconds"),
        ("POLL_INTERVAL", float("inf"), "a positive number of seconds"),
        ("COMMAND_RESULT_TTL", None, "a positive number of seconds"),
        ("COMMAND_RESULT_TTL", "1d", "a positive number of seconds"),
        ("COMMAND_RESULT_TTL", 0, "a positive number of seconds"),
        ("MAX_MESSAGE_SIZE", 1.5, "a positive whole number of bytes"),
        ("MAX_MESSAGE_SIZE", 0, "a positive whole number of bytes"),
        ("MAX_MESSAGE_SIZE", "16MB", "a positive whole number of bytes"),
        ("PEER_SERVERS", {"id": "a"}, 'a list of server dicts, each with a string "id"'),
        ("PEER_SERVERS", ["ws://a"], 'a list of server dicts, each with a string "id"'),
        ("PEER_SERVERS", [{"address": "a"}], 'a list of server dicts, each with a string "id"'),
        ("ALLOW_CLIENT_EVENTS", "yes", "True or False"),
        ("ALLOW_CLIENT_EVENTS", 1, "True or False"),
        ("CHANNEL_LAYER", "redis", "the name of a CHANNEL_LAYERS alias (or 'default')"),
        ("CHANNEL_LAYER", "", "the name of a CHANNEL_LAYERS alias (or 'default')"),
        ("CHANNEL_LAYER", None, "the name of a CHANNEL_LAYERS alias (or 'default')"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_an_error(settings, key, value, expected):
    settings.MYKO = {key: value}
    [error] = myko_checks.check_settings()
    assert error.id == "myko.E006"
    assert error.msg == f"MYKO[{key!r}] must be {expected}, got {value!r} ({type(value).__name__})."


def test_the_hints_for_values(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.MYKO = {"CHANNEL_LAYER": "redis", "POLL_INTERVAL": 0, "PEER_SERVERS": [1]}
    layer, peers, poll = sorted(myko_checks.check_settings(), key=lambda e: e.msg)
    assert layer.hint == (
        "Configured CHANNEL_LAYERS aliases: 'default'. Leave the key out to use 'default' "
        "(one process needs no layer)."
    )
    assert poll.hint == "Leave the key out for the default, 1.0."
    assert peers.hint.startswith('Each entry is a Server item, e.g. {"id": "eu-1"')


@pytest.mark.parametrize(
    "myko",
    [
        {},
        dict(conf.DEFAULTS),
        {"POLL_INTERVAL": 2, "COMMAND_RESULT_TTL": 0.5, "MAX_MESSAGE_SIZE": 1},
        {"PEER_SERVERS": ({"id": "eu-1", "address": "eu-1.example.com", "port": 443},)},
        {"ALLOW_CLIENT_EVENTS": False, "CHANNEL_LAYER": "doorbell"},
    ],
)
def test_good_values_are_quiet(settings, myko):
    settings.CHANNEL_LAYERS = {"doorbell": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.MYKO = myko
    assert myko_checks.check_settings() == []


def test_the_default_layer_alias_may_be_unconfigured(settings):
    """One process needs no layer: CHANNEL_LAYER 'default' without CHANNEL_LAYERS is fine."""
    del settings.CHANNEL_LAYERS
    settings.MYKO = {"CHANNEL_LAYER": "default"}
    assert myko_checks.check_settings() == []


# ---- operations ------------------------------------------------------------------------


@pytest.fixture
def register() -> Iterator[Callable]:
    """`register(kind, name, func, **extra)` registers a handler by its decorator for the
    test; every name registered is unregistered afterwards and the registry is as before."""
    before = {kind: operations.user_handlers(kind) for kind in operations.KINDS}
    duplicates = operations.duplicate_registrations()
    added: list[tuple[str, str]] = []

    def do(kind: str, name: str, func: Callable, **extra) -> Callable:
        decorator = getattr(operations, kind)
        added.append((kind, name))
        return decorator(name, **extra)(func)

    yield do
    for kind, name in added:
        operations.unregister(kind, name)
    assert {kind: operations.user_handlers(kind) for kind in operations.KINDS} == before
    assert operations.duplicate_registrations() == duplicates


def labelled_a(**params):
    return {"label": "a"}


def other_labelled_a(**params):
    return {"label": "a"}


def test_project_operations_are_quiet():
    assert myko_checks.check_operations() == []


def test_two_handlers_of_one_name_are_an_error(register):
    register("query", "GetTwice", labelled_a, item="Gadget")
    register("query", "GetTwice", other_labelled_a, item="Gadget")
    [error] = myko_checks.check_operations()
    here = f"{__name__}."
    assert error.id == "myko.E007"
    assert error.msg == (
        f"Query 'GetTwice' is registered twice, by {here}labelled_a and by "
        f"{here}other_labelled_a; only the last one is served."
    )
    assert error.obj == f"{here}other_labelled_a"
    # The rule is the same for commands.
    register("command", "DoTwice", lambda ctx: None)
    register("command", "DoTwice", lambda ctx: 1)
    errors = myko_checks.check_operations()
    assert ids(errors) == ["myko.E007", "myko.E007"]
    assert re.fullmatch(
        rf"Command 'DoTwice' is registered twice, by {here}test_two_handlers_of_one_name_are_"
        r"an_error\.<locals>\.<lambda> \(line \d+\) and by .*<lambda> \(line \d+\); "
        "only the last one is served.",
        errors[1].msg,
    )


def test_registering_the_same_function_again_is_not_a_duplicate(register):
    """A module imported twice (a reload) registers the same function again: no error."""
    register("query", "GetOnce", labelled_a, item="Gadget")
    register("query", "GetOnce", labelled_a, item="Gadget")
    assert myko_checks.check_operations() == []


def test_unregister_brings_the_derived_operation_back(register):
    register("query", "GetAllGadgets", labelled_a, item="Gadget")
    assert operations.resolve_query("GetAllGadgets", None, {}, None)[1].key[0] != "all"
    assert operations.unregister("query", "GetAllGadgets").func is labelled_a
    assert operations.unregister("query", "GetAllGadgets") is None
    item_type, flt = operations.resolve_query("GetAllGadgets", None, {}, None)
    assert (item_type, flt.matches({"id": "x", "label": "b"})) == ("Gadget", True)


def test_a_user_query_replaces_the_derived_one(register):
    calls = []

    def only_a(*, prefix: str = ""):
        calls.append(prefix)
        return {"label": "a"}

    register("query", "GetAllGadgets", only_a, item=Gadget)
    item_type, flt = operations.resolve_query("GetAllGadgets", "Gadget", {"tx": "t"}, None)
    assert (item_type, calls) == ("Gadget", [""])
    assert flt.matches({"id": "1", "label": "a"}) and not flt.matches({"id": "2", "label": "b"})
    [info] = myko_checks.check_operations()
    assert info.id == "myko.I001"
    assert info.level == checks.INFO
    assert info.obj == f"{__name__}.{only_a.__qualname__}"
    assert info.msg == (
        "Query 'GetAllGadgets' replaces the derived query of item type Gadget (all items)."
    )
    assert info.hint == (
        "A user operation replaces the derived one of the same name, for queries, reports and "
        "commands alike. If that is what you meant, silence this with "
        "SILENCED_SYSTEM_CHECKS = ['myko.I001']."
    )


def test_a_user_report_replaces_the_derived_one(register):
    register("report", "CountAllGadgets", lambda view: {"count": -1}, depends=["Gadget"])
    spec = operations.resolve_report("CountAllGadgets", {}, None)
    assert spec.kind == "custom"
    assert spec.compute(None) == {"count": -1}
    [info] = myko_checks.check_operations()
    assert (
        info.id,
        info.msg.endswith("replaces the derived report of item type Gadget (count of all items)."),
    ) == ("myko.I001", True)


def test_a_user_command_replaces_the_derived_one(register):
    def delete_target(ctx, *, id: str) -> dict:
        raise ValueError(f"Target {id} is protected")

    register("command", "DeleteTarget", delete_target)
    assert operations.resolve_command("DeleteTarget").func is delete_target
    [info] = myko_checks.check_operations()
    assert info.id == "myko.I001"
    assert info.msg.endswith("replaces the derived command of item type Target (delete one).")


@pytest.mark.django_db(transaction=True)
def test_the_replaced_command_is_what_runs(register):
    target = Target.objects.create(name="keep")

    def delete_target(ctx, *, id: str) -> dict:
        raise ValueError(f"Target {id} is protected")

    register("command", "DeleteTarget", delete_target, permission=AllowAny)
    with pytest.raises(CommandError, match="is protected"):
        run_command("DeleteTarget", {"id": target.pk}, tx="t1")
    assert Target.objects.filter(pk=target.pk).exists()
    operations.unregister("command", "DeleteTarget")
    assert run_command("DeleteTarget", {"id": target.pk}, tx="t2").response == {"deleted": True}


def test_a_replacing_query_of_another_item_type_is_an_error(register):
    register("query", "GetAllGadgets", labelled_a, item=Target)
    [error] = myko_checks.check_operations()
    assert error.id == "myko.E008"
    assert error.msg == (
        "Query 'GetAllGadgets' replaces the derived query of item type Gadget but returns "
        "Target items."
    )
    assert error.hint == (
        "Clients of GetAllGadgets expect Gadget items: return those, or give the query "
        "another name."
    )


def test_derived_names_that_collide_are_an_error(monkeypatch):
    # An item type named like Gadget's plural: its DeleteGadgets deletes one, Gadget's many.
    gadgets = ItemType(model=Note, name="Gadgets", plural="GadgetsList")
    monkeypatch.setitem(registry.by_name, "Gadgets", gadgets)
    [error] = myko_checks.check_operations()
    assert error.id == "myko.E009"
    assert error.msg == (
        "The derived command 'DeleteGadgets' of item type Gadgets (delete one) has the same "
        "name as the one of item type Gadget (delete many); only Gadget's is served."
    )
    assert error.obj is Note
    assert "myko_plural" in error.hint
    # The first registered keeps the name, as the check says.
    assert operations.resolve_command("DeleteGadgets").params[0].name == "ids"


def test_a_plural_equal_to_the_name_collides_with_itself(monkeypatch):
    monkeypatch.setitem(
        registry.by_name, "Sheep", ItemType(model=Note, name="Sheep", plural="Sheep")
    )
    [error] = myko_checks.check_operations()
    assert error.id == "myko.E009"
    assert error.msg.startswith(
        "The derived command 'DeleteSheep' of item type Sheep (delete many)"
    )


def test_a_user_query_named_like_a_built_in_is_an_error(register):
    register("query", "GetPeerServers", labelled_a, item="Gadget")
    [error] = myko_checks.check_operations()
    assert (error.id, error.obj) == ("myko.E010", f"{__name__}.labelled_a")
    assert error.msg == (
        "Query 'GetPeerServers' is never called: the server answers GetPeerServers itself."
    )


def test_an_unknown_item_type_is_an_error(register):
    register("query", "GetWidgets", labelled_a, item="Widget")
    register("report", "WidgetCount", lambda view: 0, depends=["Gadget", "Widget", "Gizmo"])
    query_error, report_error = myko_checks.check_operations()
    assert (query_error.id, report_error.id) == ("myko.E011", "myko.E011")
    assert query_error.msg.endswith("names unknown item type Widget.")
    assert report_error.msg.endswith("names unknown item types Widget, Gizmo.")
    assert query_error.hint.startswith("Registered item types: ")
    assert "Gadget" in query_error.hint


# ---- databases ---------------------------------------------------------------------------

POSTGRES = "django.db.backends.postgresql"


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    "config",
    [
        {"ENGINE": POSTGRES, "NAME": "app", "CONN_MAX_AGE": 0},
        {"ENGINE": POSTGRES, "NAME": "app"},
        {"ENGINE": POSTGRES, "NAME": "app", "CONN_MAX_AGE": 0, "OPTIONS": {"pool": False}},
    ],
)
def test_postgres_without_kept_or_pooled_connections_is_a_warning(settings, config):
    settings.DATABASES = {**settings.DATABASES, "app": config}
    [warning] = myko_checks.check_databases()
    assert warning.id == "myko.W001"
    assert warning.level == checks.WARNING
    assert warning.msg == (
        "Database 'app' is PostgreSQL with CONN_MAX_AGE = 0 and no connection pool: myko's "
        "database threads open a new connection for every command (measured: 18 ms per "
        "command instead of 4 ms)."
    )
    assert warning.hint == (
        'Enable Django\'s connection pool, DATABASES["app"]["OPTIONS"] = {"pool": '
        '{"min_size": 2, "max_size": 20}} (needs psycopg-pool installed), or set '
        "CONN_MAX_AGE so connections are kept."
    )


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    "config",
    [
        {"ENGINE": POSTGRES, "NAME": "app", "OPTIONS": {"pool": True}},
        {"ENGINE": POSTGRES, "NAME": "app", "OPTIONS": {"pool": {"min_size": 2}}},
        {"ENGINE": POSTGRES, "NAME": "app", "CONN_MAX_AGE": 60},
        {"ENGINE": POSTGRES, "NAME": "app", "CONN_MAX_AGE": None},
        {"ENGINE": "django.db.backends.sqlite3", "NAME": "app.sqlite3"},
        {"ENGINE": "no.such.backend", "NAME": "app"},
    ],
)
def test_kept_or_pooled_connections_are_quiet(settings, config):
    settings.DATABASES = {**settings.DATABASES, "app": config}
    assert myko_checks.check_databases() == []


# ---- serving it: daphne, ASGI_APPLICATION, SQLite's transaction mode ----------------------


def _installed(monkeypatch, *labels: str) -> None:
    """The app registry lists these installed apps, in this order (changing INSTALLED_APPS
    itself would reload the registry)."""
    configs = [django_apps.get_app_config(label) for label in labels]
    monkeypatch.setattr(myko_checks.apps, "get_app_configs", lambda: configs)


@pytest.mark.parametrize(
    "labels",
    [
        ("daphne", "staticfiles", "myko_django"),
        ("auth", "daphne", "staticfiles", "myko_django"),  # no runserver before daphne
        ("contenttypes", "myko_django", "daphne"),  # no staticfiles: anywhere will do
    ],
)
def test_daphne_before_other_runservers_is_quiet(monkeypatch, labels):
    _installed(monkeypatch, *labels)
    assert myko_checks.check_daphne() == []


def test_no_daphne_is_a_warning_that_runserver_serves_no_websocket(monkeypatch):
    _installed(monkeypatch, "staticfiles", "myko_django")
    [warning] = myko_checks.check_daphne()
    assert (warning.id, warning.level) == ("myko.W030", checks.WARNING)
    assert "clients connecting to /myko get HTTP 404" in warning.msg
    assert warning.hint.startswith('Put "daphne" first in INSTALLED_APPS')


def test_an_app_with_its_own_runserver_before_daphne_is_a_warning(monkeypatch):
    _installed(monkeypatch, "auth", "staticfiles", "daphne", "myko_django")
    [warning] = myko_checks.check_daphne()
    assert (warning.id, warning.level) == ("myko.W031", checks.WARNING)
    assert warning.msg.startswith(
        "'django.contrib.staticfiles' comes before 'daphne' in INSTALLED_APPS and has a "
        "runserver command of its own, which wins"
    )
    assert warning.hint.startswith('Move "daphne" to the top of INSTALLED_APPS')


def test_runserver_is_the_first_listed_apps_one():
    """What W030/W031 rely on: of two apps with a runserver command, the first listed wins."""
    assert get_commands()["runserver"] == "daphne"  # listed before django.contrib.staticfiles


@pytest.mark.parametrize("value", [None, ""])
def test_no_asgi_application_is_a_warning_with_the_helper(settings, value):
    settings.ASGI_APPLICATION = value
    [warning] = myko_checks.check_asgi_application()
    assert (warning.id, warning.level) == ("myko.W032", checks.WARNING)
    assert "myko_django.asgi.get_asgi_application()" in warning.hint
    del settings.ASGI_APPLICATION
    assert ids(myko_checks.check_asgi_application()) == ["myko.W032"]


SQLITE = "django.db.backends.sqlite3"


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    "options", [None, {}, {"timeout": 20}, {"transaction_mode": "DEFERRED"}, {"init_command": ""}]
)
def test_sqlite_without_immediate_transactions_is_a_warning(settings, options):
    config = {"ENGINE": SQLITE, "NAME": "app.sqlite3"}
    if options is not None:
        config["OPTIONS"] = options
    settings.DATABASES = {**settings.DATABASES, "app": config}
    [warning] = myko_checks.check_sqlite_transactions()
    assert (warning.id, warning.level) == ("myko.W033", checks.WARNING)
    assert 'fail with "database is locked"' in warning.msg
    assert warning.hint.startswith(
        'Set DATABASES["app"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}'
    )


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    "config",
    [
        {"ENGINE": SQLITE, "NAME": "a.sqlite3", "OPTIONS": {"transaction_mode": "IMMEDIATE"}},
        {"ENGINE": SQLITE, "NAME": "a.sqlite3", "OPTIONS": {"transaction_mode": "exclusive"}},
        {"ENGINE": POSTGRES, "NAME": "app", "CONN_MAX_AGE": 60},
        {"ENGINE": "no.such.backend", "NAME": "app"},
    ],
)
def test_sqlite_with_immediate_transactions_and_other_databases_are_quiet(settings, config):
    settings.DATABASES = {**settings.DATABASES, "app": config}
    assert myko_checks.check_sqlite_transactions() == []


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_postgres_above_read_committed_is_an_error(settings):
    from psycopg import IsolationLevel

    for level in (IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE):
        config = {"ENGINE": POSTGRES, "NAME": "app", "CONN_MAX_AGE": 60}
        settings.DATABASES = {
            **settings.DATABASES,
            "app": {**config, "OPTIONS": {"isolation_level": level}},
        }
        [error] = myko_checks.check_databases()
        assert error.id == "myko.E013"
        assert error.level == checks.ERROR
        assert "needs READ COMMITTED" in error.msg
    settings.DATABASES = {
        **settings.DATABASES,
        "app": {**config, "OPTIONS": {"isolation_level": IsolationLevel.READ_COMMITTED}},
    }
    assert myko_checks.check_databases() == []
