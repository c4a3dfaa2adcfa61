"""Who may do what: permission classes, in the style of Django REST framework's, checked
before every query, report, command and client event.

Nothing is open unless a setting opens it. The default class, `DjangoModelPermissions`,
asks Django's model permissions: `view` for queries and reports, `add` / `change` for a
SET of a new / existing id, `delete` for DEL and the derived deletes; a user command needs
a signed-in, active user. Superusers may do everything, inactive users nothing.

Which class applies: an operation's own (`@command(..., permission=...)`), else the item
type's (`MYKO["PERMISSIONS"]["Target"]`, `myko_permission` on the model, or
`register(permission=...)`), else `MYKO["DEFAULT_PERMISSION"]`.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_permission_codename
from django.utils.module_loading import import_string

from myko_django import conf
from myko_django.items.errors import OperationError

VIEW, ADD, CHANGE, DELETE, RUN = "view", "add", "change", "delete", "run"


class PermissionDenied(OperationError):
    """An operation the user may not do; the client's message starts "Permission denied"."""

    def __init__(self, what: str) -> None:
        super().__init__(f"Permission denied: {what}")


def signed_in(user: Any) -> bool:
    """An authenticated, active user (an anonymous or deactivated one is not)."""
    return (
        user is not None
        and getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", False)
    )


class BasePermission:
    """Subclass and override `allows`. `item_type` is the ItemType acted on (None for a user
    command, which names no item type); `action` is one of view, add, change, delete, run."""

    def allows(self, user: Any, action: str, item_type: Any) -> bool:
        return False


class AllowAny(BasePermission):
    """Everyone, signed in or not (a demo, public data)."""

    def allows(self, user: Any, action: str, item_type: Any) -> bool:
        return True


class IsAuthenticated(BasePermission):
    """Any signed-in, active user."""

    def allows(self, user: Any, action: str, item_type: Any) -> bool:
        return signed_in(user)


class IsStaff(BasePermission):
    """Signed-in, active staff users (those who may use the admin)."""

    def allows(self, user: Any, action: str, item_type: Any) -> bool:
        return signed_in(user) and bool(getattr(user, "is_staff", False))


class DjangoModelPermissions(BasePermission):
    """Django's model permissions (`app.view_model`, `add_`, `change_`, `delete_`); a user
    command needs a signed-in, active user. The default."""

    def allows(self, user: Any, action: str, item_type: Any) -> bool:
        if not signed_in(user):
            return False
        if user.is_superuser or item_type is None or action == RUN:
            return True
        opts = item_type.model._meta
        return user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


_by_path: dict[str, Any] = {}


def load(permission: Any) -> BasePermission:
    """A permission instance from a class, an instance or a dotted path."""
    if isinstance(permission, str):
        path = permission
        permission = _by_path.get(path)
        if permission is None:
            permission = _by_path[path] = import_string(path)
    if isinstance(permission, type):
        permission = permission()
    if not callable(getattr(permission, "allows", None)):
        raise TypeError(f"{permission!r} is not a permission class (it has no allows())")
    return permission


def for_item_type(item_type: Any) -> BasePermission:
    """The permission class of an item type (settings, then the model's, then the default)."""
    by_type = conf.get("PERMISSIONS")
    if item_type is not None and item_type.name in by_type:
        return load(by_type[item_type.name])
    if item_type is not None and item_type.permission is not None:
        return load(item_type.permission)
    return load(conf.get("DEFAULT_PERMISSION"))


class _System:
    """Writes made by the server itself (management commands, sagas, server code calling
    the write path directly): no permission applies, as for Django's own commands."""

    is_authenticated = False
    is_active = False

    def __repr__(self) -> str:
        return "SYSTEM"


SYSTEM = _System()


def check(user: Any, action: str, item_type: Any, what: str, permission: Any = None) -> None:
    """Raise PermissionDenied unless `user` may do `action` on `item_type` (`what` names it
    for the message); `permission` is an operation's own class, if it has one."""
    if user is SYSTEM:
        return
    chosen = load(permission) if permission is not None else for_item_type(item_type)
    if not chosen.allows(user, action, item_type):
        who = "anonymous" if not getattr(user, "is_authenticated", False) else str(user)
        raise PermissionDenied(f"{who} may not {what}")
