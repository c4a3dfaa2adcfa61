"""System checks: misconfigured items are reported at start-up with a hint, not at first use."""

from django.core import checks

from myko_django.items.registry import registry
from myko_django.log.managers import uses_item_queryset


@checks.register()
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
                    hint="Declare `objects = myko_django.managers.ItemManager()` first on the "
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
                    "JSON and foreign keys. Model a many-to-many as an item with two foreign "
                    "keys, or keep the field on a model that is not an item.",
                    obj=model,
                    id="myko.E003",
                )
            )
    return errors
