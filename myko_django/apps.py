"""Builds the item registry and wires event capture when Django starts."""

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

from myko_django.items.registry import ItemType, explicit_registrations, registry
from myko_django.log import publish
from myko_django.server import doorbell


class MykoConfig(AppConfig):
    name = "myko_django"
    verbose_name = "myko"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django imports this module before any models module: what defines or imports a
        # model class (the log's tables) can only be imported once the registry is ready.
        from myko_django import checks  # noqa: F401  (checks register themselves)
        from myko_django.log import adoption, capture, managers
        from myko_django.models import Item

        explicit = explicit_registrations()
        for model in apps.get_models():
            if model._meta.abstract or model._meta.proxy:
                continue
            if issubclass(model, Item) or model in explicit:
                registry.add(ItemType.for_model(model, **explicit.get(model, {})))
        for item_type in registry:
            managers.adopt(item_type.model)
        capture.connect()
        # `migrate` adopts the rows that predate a model's registration (log/adoption.py).
        post_migrate.connect(adoption.after_migrate, sender=self, dispatch_uid="myko_adopt")
        publish.add_listener(doorbell.ring_from_thread)
        # User commands, queries and reports live in each app's myko.py.
        autodiscover_modules("myko")
