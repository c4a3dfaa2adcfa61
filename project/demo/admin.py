from django.contrib import admin

from myko_django.admin import ItemAdmin

from .models import Scene, Target


@admin.register(Scene)
class SceneAdmin(ItemAdmin):
    list_display = ["name", "id"]


@admin.register(Target)
class TargetAdmin(ItemAdmin):
    list_display = ["name", "category", "scene", "id"]
    list_filter = ["category"]
