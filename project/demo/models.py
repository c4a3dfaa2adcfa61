"""The demo items of the myko docs: Scenes holding Targets (open to anyone, see settings),
and Notes, each visible to its owner only."""

from django.conf import settings
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


class Note(Item):
    """A signed-in user's own note: others never see it. Who may add, change and delete
    Notes: any signed-in user (the library's default would ask for Django's model
    permissions); which ones: their own (`myko_visible_to`)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.TextField(blank=True)

    myko_permission = "myko_django.permissions.IsAuthenticated"

    @classmethod
    def myko_visible_to(cls, user) -> dict:
        if not getattr(user, "is_authenticated", False):
            return {"id": {"kind": "in", "value": []}}  # nothing
        return {"ownerId": str(user.pk)}

    def __str__(self) -> str:
        return self.text[:50]


class TargetStats(Item):
    """Derived by the `TargetStats` saga (myko.py): per Target (same id), how many SETs of it
    the log holds and its latest name. Rebuilt exactly by replaying the log from 0."""

    sets = models.IntegerField(default=0)
    last_name = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.last_name}: {self.sets} sets"
