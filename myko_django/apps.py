"""Builds the item registry and wires event capture when Django starts."""

from django.apps import AppConfig, apps
from django.utils.module_loading import autodiscover_modules


class MykoConfig(AppConfig):
    name = "myko_django"
    verbose_name = "myko"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import capture, checks, doorbell, publish  # noqa: F401  (checks self-register)
        from .managers import ItemQuerySet, atomic_save_base
        from .models import Item
        from .registry import ItemType, explicit_registrations, registry

        explicit = explicit_registrations()
        for model in apps.get_models():
            if model._meta.abstract or model._meta.proxy:
                continue
            if issubclass(model, Item) or model in explicit:
                registry.add(ItemType.for_model(model, **explicit.get(model, {})))
        for item_type in registry:
            model = item_type.model
            if not getattr(model.save_base, "myko_atomic", False):
                model.save_base = atomic_save_base(model.save_base)
            # Related managers and on_delete updates use the base manager: make it ours.
            default = model._meta.default_manager
            if default is not None and issubclass(default._queryset_class, ItemQuerySet):
                if not issubclass(model._base_manager._queryset_class, ItemQuerySet):
                    model._meta.base_manager_name = default.name
                    model._meta.__dict__.pop("base_manager", None)
        capture.connect()
        publish.add_listener(doorbell.ring_from_thread)
        # User commands, queries and reports live in each app's myko.py.
        autodiscover_modules("myko")
