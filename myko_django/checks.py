"""System checks: misconfigured items, settings and operations are reported at start-up with a
hint, not at first use (`manage.py check --tag myko`)."""

import difflib
import os

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import find_commands
from django.db import DatabaseError
from django.db.utils import load_backend

from myko_django import conf
from myko_django.items import operations
from myko_django.items import sagas as declared_sagas
from myko_django.items.errors import OperationError
from myko_django.items.registry import registry
from myko_django.log import adoption
from myko_django.log.managers import uses_item_queryset
from myko_django.server import metrics
from myko_django.wire.envelope import SERVER_QUERIES


@checks.register("myko")
def check_items(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for first, second in registry.duplicates:
        errors.append(
            checks.Error(
                f"Item name {second.name!r} is used by both {first.model._meta.label} and "
                f"{second.model._meta.label}.",
                hint='Item names must be unique across apps: set `myko_name = "..."` on one '
                "model, or pass name=... to myko_django.register().",
                obj=second.model,
                id="myko.E001",
            )
        )
    for item_type in registry:
        model = item_type.model
        if not uses_item_queryset(model._meta.default_manager):
            errors.append(
                checks.Error(
                    f"The default manager of item model {model._meta.label} does not use "
                    "myko's ItemQuerySet, so its bulk writes would bypass the event log.",
                    hint="Declare `objects = myko_django.ItemManager()` first on the "
                    "model, or build your manager with ItemManager / "
                    "YourManager.from_queryset(ItemQuerySet).",
                    obj=model,
                    id="myko.E002",
                )
            )
        if item_type.unsupported:
            errors.append(
                checks.Error(
                    f"Item model {model._meta.label} has fields myko cannot put on the wire: "
                    f"{', '.join(item_type.unsupported)}.",
                    hint="Supported: text, numbers, booleans, decimals, dates and times, UUIDs, "
                    "JSON and foreign keys. Leave a field off the wire with `myko_exclude = "
                    "[...]` on the model (exclude=[...] of myko_django.register()), or model a "
                    "many-to-many as an item with two foreign keys.",
                    obj=model,
                    id="myko.E003",
                )
            )
        if item_type.field_errors:
            errors.append(
                checks.Error(
                    f"The field visibility of item model {model._meta.label} is wrong: "
                    f"{'; '.join(item_type.field_errors)}.",
                    hint="Name model fields in either `myko_fields` or `myko_exclude` on the "
                    "model (or fields=... / exclude=... of myko_django.register()), not both; "
                    "the primary key always travels as id.",
                    obj=model,
                    id="myko.E012",
                )
            )
    return errors


# ---- the MYKO settings dict ----------------------------------------------------------


@checks.register("myko")
def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """A mistyped MYKO key or a value of the wrong type is refused, not silently ignored."""
    known = f"Known keys: {', '.join(sorted(conf.DEFAULTS))}."
    myko = getattr(settings, "MYKO", {})
    if not isinstance(myko, dict):
        return [
            checks.Error(
                f"settings.MYKO must be a dict, got {type(myko).__name__}.",
                hint=f"Every key is optional. {known}",
                id="myko.E004",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for key, value in myko.items():
        if key not in conf.DEFAULTS:
            close = difflib.get_close_matches(str(key), list(conf.DEFAULTS), n=1)
            errors.append(
                checks.Error(
                    f"Unknown MYKO setting {key!r}.",
                    hint=f"Did you mean {close[0]!r}? {known}" if close else known,
                    id="myko.E005",
                )
            )
            continue
        expected = conf.problem(key, value)
        if expected is not None:
            errors.append(
                checks.Error(
                    f"MYKO[{key!r}] must be {expected}, got {value!r:.80} "
                    f"({type(value).__name__}).",
                    hint=_setting_hint(key),
                    id="myko.E006",
                )
            )
    if not errors and conf.get("MAX_QUEUED_BYTES") < conf.get("MAX_MESSAGE_SIZE"):
        errors.append(
            checks.Warning(
                "MYKO['MAX_QUEUED_BYTES'] is smaller than MYKO['MAX_MESSAGE_SIZE']: a client "
                "whose socket is busy would be closed (1013) for one large message waiting.",
                hint="Make MAX_QUEUED_BYTES at least MAX_MESSAGE_SIZE (by default 4 times it).",
                id="myko.W041",
            )
        )
    return errors


def _setting_hint(key: str) -> str:
    if key == "CHANNEL_LAYER":
        aliases = ", ".join(map(repr, getattr(settings, "CHANNEL_LAYERS", {}))) or "none"
        return (
            f"Configured CHANNEL_LAYERS aliases: {aliases}. Leave the key out to use "
            "'default' (one process needs no layer)."
        )
    if key == "PEER_SERVERS":
        return (
            'Each entry is a Server item, e.g. {"id": "eu-1", "address": "eu-1.example.com", '
            '"port": 443}.'
        )
    return f"Leave the key out for the default, {conf.DEFAULTS[key]!r}."


# ---- commands, queries and reports -----------------------------------------------------

_DERIVED = {
    "all": "all items",
    "ids": "items by ids",
    "query": "items by query",
    "count_all": "count of all items",
    "count": "count by query",
    "by_id": "one item by id",
    "create": "create one",
    "delete": "delete one",
    "delete_many": "delete many",
}
_OVERRIDE_HINT = (
    "A user operation replaces the derived one of the same name, for queries, reports and "
    "commands alike. If that is what you meant, silence this with "
    "SILENCED_SYSTEM_CHECKS = ['myko.I001']."
)


@checks.register("myko")
def check_operations(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Two handlers of one name, derived names that collide, and user operations that replace
    derived ones: each is said at start-up instead of one of them silently winning."""
    messages: list[checks.CheckMessage] = []
    for earlier, later in operations.duplicate_registrations():
        first, second = earlier.where, later.where
        if first == second:  # two lambdas, or two functions of one name
            first, second = f"{first} (line {earlier.line})", f"{second} (line {later.line})"
        messages.append(
            checks.Error(
                f"{later.kind.capitalize()} {later.name!r} is registered twice, by "
                f"{first} and by {second}; only the last one is served.",
                hint="Names are unique per kind (commands, queries, reports): rename one "
                "(the decorator's name argument, else the function name in CamelCase).",
                obj=later.where,
                id="myko.E007",
            )
        )
    for kind, name, (kept_what, kept), (lost_what, lost) in operations.derived_collisions():
        messages.append(
            checks.Error(
                f"The derived {kind} {name!r} of item type {lost.name} "
                f"({_DERIVED[lost_what]}) has the same name as the one of item type "
                f"{kept.name} ({_DERIVED[kept_what]}); only {kept.name}'s is served.",
                hint="Give one of them another name or plural: `myko_name` / `myko_plural` "
                "on the model, or register(name=..., plural=...).",
                obj=lost.model,
                id="myko.E009",
            )
        )
    derived = operations.derived()
    for kind in operations.KINDS:
        for name, handler in operations.user_handlers(kind).items():
            messages += _check_handler(handler, derived[kind].get(name))
    return messages


def _check_handler(handler: operations.Handler, replaced) -> list[checks.CheckMessage]:
    kind, name, where = handler.kind, handler.name, handler.where
    title = f"{kind.capitalize()} {name!r}"  # the function is the message's obj
    unknown = [t for t in (handler.item_type, *handler.depends) if t and t not in registry.by_name]
    if unknown:
        known = ", ".join(sorted(registry.by_name)) or "none"
        return [
            checks.Error(
                f"{title} names unknown item type{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}.",
                hint=f"Registered item types: {known}.",
                obj=where,
                id="myko.E011",
            )
        ]
    if kind == "query" and name in SERVER_QUERIES:
        return [
            checks.Error(
                f"{title} is never called: the server answers {name} itself.",
                hint="GetConnectedServer and GetPeerServers are built in (set "
                "MYKO['PEER_SERVERS'] for the latter); give the query another name.",
                obj=where,
                id="myko.E010",
            )
        ]
    if replaced is None:
        return []
    what, it = replaced
    if kind == "query" and handler.item_type != it.name:
        return [
            checks.Error(
                f"{title} replaces the derived query of item type {it.name} but returns "
                f"{handler.item_type} items.",
                hint=f"Clients of {name} expect {it.name} items: return those, or give the "
                "query another name.",
                obj=where,
                id="myko.E008",
            )
        ]
    return [
        checks.Info(
            f"{title} replaces the derived {kind} of item type {it.name} ({_DERIVED[what]}).",
            hint=_OVERRIDE_HINT,
            obj=where,
            id="myko.I001",
        )
    ]


# ---- databases --------------------------------------------------------------------------


@checks.register("myko")
def check_databases(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Postgres without kept or pooled connections: every command opens a new connection."""
    warnings: list[checks.CheckMessage] = []
    for alias, config in settings.DATABASES.items():
        try:
            vendor = load_backend(config.get("ENGINE", "")).DatabaseWrapper.vendor
        except (ImproperlyConfigured, ImportError, AttributeError):
            continue  # Django's own checks and connections say what is wrong
        options = config.get("OPTIONS") or {}
        level = options.get("isolation_level")
        if vendor == "postgresql" and level is not None and int(level) not in (1, 2):
            # psycopg's IsolationLevel: READ_UNCOMMITTED = 1 (Postgres runs it as READ
            # COMMITTED), READ_COMMITTED = 2, REPEATABLE_READ = 3, SERIALIZABLE = 4.
            warnings.append(
                checks.Error(
                    f"Database {alias!r} is PostgreSQL with isolation level {level!r}: "
                    "myko's positioning of committed events (log/append.py) needs READ "
                    "COMMITTED, where each statement sees what committed before it.",
                    hint=f'Remove DATABASES["{alias}"]["OPTIONS"]["isolation_level"] and '
                    "ask for a stricter level only in the transactions that need it.",
                    id="myko.E013",
                )
            )
        if vendor != "postgresql" or config.get("CONN_MAX_AGE", 0) != 0 or options.get("pool"):
            continue
        warnings.append(
            checks.Warning(
                f"Database {alias!r} is PostgreSQL with CONN_MAX_AGE = 0 and no connection "
                "pool: myko's database threads open a new connection for every command "
                "(measured: 18 ms per command instead of 4 ms).",
                hint=f'Enable Django\'s connection pool, DATABASES["{alias}"]["OPTIONS"] = '
                '{"pool": {"min_size": 2, "max_size": 20}} (needs psycopg-pool installed), '
                "or set CONN_MAX_AGE so connections are kept.",
                id="myko.W001",
            )
        )
    return warnings


# ---- rows from before a model was registered -------------------------------------------


@checks.register("myko", checks.Tags.database)
def check_adoption(app_configs=None, databases=None, **kwargs) -> list[checks.CheckMessage]:
    """Item tables with rows the log does not hold yet: a model registered since `migrate`
    last ran. A database check: `migrate` (which then adopts them) and `check --database`."""
    warnings: list[checks.CheckMessage] = []
    for alias in databases or ():
        try:
            waiting = adoption.waiting(alias)
        except DatabaseError:
            continue  # unreachable or not migrated: `migrate` says so itself
        for item_type in waiting:
            warnings.append(
                checks.Warning(
                    f"The table of item type {item_type.name} "
                    f"({item_type.model._meta.db_table}) has rows that are not in the event "
                    "log yet: the model was registered after they were written.",
                    hint="`manage.py migrate` adopts them when it ends (a SET event per row, "
                    "a page at a time), or run `manage.py myko_resync --item-type "
                    f"{item_type.name}`. Until then `myko_rebuild` keeps them but could not "
                    "restore them.",
                    obj=item_type.model,
                    id="myko.W020",
                )
            )
    return warnings


# ---- serving it: daphne, the ASGI application, SQLite's write lock ---------------------

_ASGI_HINT = (
    "In yourproject/asgi.py: `application = myko_django.asgi.get_asgi_application()` "
    '(after DJANGO_SETTINGS_MODULE is set), and ASGI_APPLICATION = "yourproject.asgi.'
    'application" in the settings.'
)


@checks.register("myko")
def check_daphne(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """`manage.py runserver` is the runserver of the first installed app that has one: it
    must be daphne's, or there is no WebSocket at all (a client's handshake at /myko gets a
    plain HTTP 404)."""
    configs = list(apps.get_app_configs())
    names = [config.name for config in configs]
    if "daphne" not in names:
        return [
            checks.Warning(
                "'daphne' is not in INSTALLED_APPS, so `manage.py runserver` is Django's WSGI "
                "server: it serves no WebSocket, and clients connecting to /myko get HTTP 404.",
                hint='Put "daphne" first in INSTALLED_APPS (its runserver serves '
                "ASGI_APPLICATION, WebSockets included). If you only ever serve with the "
                "daphne command, silence this with SILENCED_SYSTEM_CHECKS = ['myko.W030'].",
                id="myko.W030",
            )
        ]
    for config in configs[: names.index("daphne")]:
        if "runserver" in find_commands(os.path.join(config.path, "management")):
            return [
                checks.Warning(
                    f"{config.name!r} comes before 'daphne' in INSTALLED_APPS and has a "
                    "runserver command of its own, which wins: unless it speaks ASGI, "
                    "`manage.py runserver` serves no WebSocket, and clients connecting to "
                    "/myko get HTTP 404.",
                    hint='Move "daphne" to the top of INSTALLED_APPS: of two apps with a '
                    "runserver command, the one listed first wins.",
                    id="myko.W031",
                )
            ]
    return []


@checks.register("myko")
def check_asgi_application(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """daphne's runserver and myko_django.testing.DaphneServer serve ASGI_APPLICATION."""
    if getattr(settings, "ASGI_APPLICATION", None):
        return []
    return [
        checks.Warning(
            "ASGI_APPLICATION is not set: `manage.py runserver` (with daphne) and "
            "myko_django.testing.DaphneServer have no application that serves the myko "
            "protocol.",
            hint=_ASGI_HINT,
            id="myko.W032",
        )
    ]


@checks.register("myko")
def check_sqlite_transactions(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """SQLite's default (DEFERRED) transactions take the write lock at their first write; one
    that has read by then cannot wait for it and fails at once with "database is locked".
    Every write of myko reads first, so concurrent clients' writes fail."""
    warnings: list[checks.CheckMessage] = []
    for alias, config in settings.DATABASES.items():
        try:
            vendor = load_backend(config.get("ENGINE", "")).DatabaseWrapper.vendor
        except (ImproperlyConfigured, ImportError, AttributeError):
            continue  # Django's own checks and connections say what is wrong
        mode = (config.get("OPTIONS") or {}).get("transaction_mode")
        if vendor != "sqlite" or str(mode).upper() in ("IMMEDIATE", "EXCLUSIVE"):
            continue
        warnings.append(
            checks.Warning(
                f"Database {alias!r} is SQLite in the DEFERRED transaction mode: when "
                'clients write at the same time, their writes fail with "database is '
                'locked" (measured: 6 threads writing at once lost 127 to 173 of 240 '
                "writes; clients get only an event-error).",
                hint=f'Set DATABASES["{alias}"]["OPTIONS"] = {{"transaction_mode": '
                '"IMMEDIATE", "timeout": 20}: each write transaction then takes the lock '
                "when it begins, and waits up to 20 s for it.",
                id="myko.W033",
            )
        )
    return warnings


# ---- operations: /metrics ----------------------------------------------------------------


@checks.register("myko")
def check_metrics(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """MYKO["METRICS"] on needs prometheus-client, or every scrape of /metrics fails."""
    myko = getattr(settings, "MYKO", {})
    if not isinstance(myko, dict) or myko.get("METRICS") is not True or metrics.available():
        return []  # off, available, or settings that check_settings reports
    return [
        checks.Error(
            'MYKO["METRICS"] is True, but prometheus-client is not installed: /metrics '
            "would answer every scrape with an error.",
            hint='pip install "myko-django[metrics]", or leave METRICS out (it is off by default).',
            id="myko.E040",
        )
    ]


@checks.register("myko")
def check_sagas(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """A saga over an unknown item type, with a filter that cannot match, or two sagas of one
    name: said at start-up, not when `manage.py myko_sagas` first runs it."""
    messages: list[checks.CheckMessage] = []
    for earlier, later in declared_sagas.duplicate_registrations():
        messages.append(
            checks.Error(
                f"Saga {later.name!r} is registered twice, by {earlier.where} and by "
                f"{later.where}; only the last one runs.",
                hint="Saga names are unique (they key the checkpoint): rename one (the "
                "decorator's name argument, else the function name in CamelCase).",
                obj=later.where,
                id="myko.E050",
            )
        )
    for saga in declared_sagas.registered().values():
        try:
            saga.compiled_filter()
        except OperationError as exc:
            messages.append(
                checks.Error(
                    f"Saga {saga.name!r} ({saga.where}): {exc}",
                    hint="Name a registered item type (its wire name or model) and filter "
                    "on its wire fields.",
                    obj=saga.where,
                    id="myko.E051",
                )
            )
    return messages
