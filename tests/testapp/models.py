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


def new_api_token() -> str:
    return "tok-default"


@myko_django.register(name="Account", exclude=["api_token", "avatar", "referrer"])
class Account(models.Model):
    """An existing model with a secret, a file and a foreign key kept off the wire."""

    name = models.CharField(max_length=40)
    api_token = models.CharField(max_length=64, default=new_api_token)
    avatar = models.FileField(upload_to="avatars/", blank=True)
    referrer = models.ForeignKey("self", null=True, on_delete=models.SET_NULL, related_name="+")

    objects = ItemManager()


class Badge(Item):
    """Only `label` and `level` travel; `code` is required without a default, so clients
    cannot create badges (the server can)."""

    myko_fields = ["label", "level"]

    label = models.CharField(max_length=20)
    level = models.IntegerField(default=1)
    code = models.CharField(max_length=20)
    issued = models.DateTimeField(auto_now_add=True)


class Vault(Item):
    """An item type with the library's default permissions (Django's model permissions),
    unlike the test app's others, which tests/settings.py opens to anyone."""

    name = models.CharField(max_length=40)
    level = models.IntegerField(default=0)
