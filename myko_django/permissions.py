"""The permission classes to name in settings and decorators (defined in
`myko_django.items.permissions`): `AllowAny`, `IsAuthenticated`, `IsStaff`,
`DjangoModelPermissions` (the default), and `BasePermission` to subclass."""

from myko_django.items.permissions import (
    AllowAny,
    BasePermission,
    DjangoModelPermissions,
    IsAuthenticated,
    IsStaff,
    PermissionDenied,
)

__all__ = [
    "AllowAny",
    "BasePermission",
    "DjangoModelPermissions",
    "IsAuthenticated",
    "IsStaff",
    "PermissionDenied",
]
