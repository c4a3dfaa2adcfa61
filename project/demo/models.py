"""The demo items of the myko docs: Scenes holding Targets."""

from django.db import models

from myko_django.models import Item


class Scene(Item):
    name = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.name


class Target(Item):
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=100, null=True, blank=True)
    scene = models.ForeignKey(Scene, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return self.name
