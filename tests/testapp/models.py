"""Models that exercise every field kind and on_delete rule the capture must handle."""

import datetime as dt
import decimal

from django.db import models

import myko_django
from myko_django import ItemManager
from myko_django.models import Item


def fallback_owner() -> str | None:
    return None


class Owner(Item):
    name = models.CharField(max_length=50)


class Gadget(Item):
    myko_name = "Gadget"

    label = models.CharField(max_length=10)
    note = models.TextField(blank=True)
    count = models.IntegerField(default=0)
    ratio = models.FloatField(null=True)
    active = models.BooleanField(default=False)
    price = models.DecimalField(max_digits=8, decimal_places=2, null=True)
    seen_at = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    at = models.TimeField(null=True)
    token = models.UUIDField(null=True)
    extra = models.JSONField(null=True)
    owner = models.ForeignKey(Owner, null=True, on_delete=models.CASCADE, related_name="gadgets")
    keeper = models.ForeignKey(
        Owner, null=True, on_delete=models.SET(fallback_owner), related_name="kept"
    )
    backup = models.ForeignKey(
        Owner, null=True, default=None, on_delete=models.SET_DEFAULT, related_name="backed"
    )


class Stamp(Item):
    """Database and auto defaults, re-read after the write."""

    hits = models.IntegerField(db_default=7)
    created = models.DateTimeField(auto_now_add=True)
    changed = models.DateTimeField(auto_now=True)


@myko_django.register(name="Legacy", plural="Legacies")
class LegacyRow(models.Model):
    """An existing model with an integer primary key, registered without changing its table."""

    title = models.CharField(max_length=40)
    amount = models.DecimalField(max_digits=6, decimal_places=2, default=decimal.Decimal("0"))
    when = models.DateField(default=dt.date(2020, 1, 1))

    objects = ItemManager()


class Note(models.Model):
    """Not an item: points at an item; rebuilding items must never cascade it away."""

    gadget = models.ForeignKey(Gadget, on_delete=models.CASCADE, related_name="notes")
    text = models.CharField(max_length=50)


class ShinyGadget(Gadget):
    """A proxy of an item model: its writes are the item's writes."""

    class Meta:
        proxy = True
