"""Where `ItemManager` and `ItemQuerySet` used to live; they are in `myko_django.log.managers`
(or `from myko_django import ItemManager`). Kept for one release."""

from myko_django.log.managers import ItemManager, ItemQuerySet

__all__ = ["ItemManager", "ItemQuerySet"]
