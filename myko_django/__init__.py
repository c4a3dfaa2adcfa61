"""myko-django: Django models as live myko items, backed by an append-only event log.

The public API is importable from here without configured settings: each name is loaded
on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from myko_django.version import __version__

if TYPE_CHECKING:
    from myko_django.items.operations import command, query, report
    from myko_django.items.registry import register
    from myko_django.items.sagas import saga
    from myko_django.log.managers import ItemManager
    from myko_django.models import Item

__all__ = [
    "Item",
    "ItemManager",
    "__version__",
    "command",
    "query",
    "register",
    "report",
    "saga",
]

_LAZY = {
    "Item": "myko_django.models",
    "ItemManager": "myko_django.log.managers",
    "command": "myko_django.items.operations",
    "query": "myko_django.items.operations",
    "report": "myko_django.items.operations",
    "register": "myko_django.items.registry",
    "saga": "myko_django.items.sagas",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'myko_django' has no attribute {name!r}")
    return getattr(import_module(module), name)
