from django.contrib import admin

from myko_django.admin import ItemAdmin

from .models import Scene, Target, TargetStats


@admin.register(Scene)
class SceneAdmin(ItemAdmin):
    list_display = ["name", "id"]


@admin.register(Target)
class TargetAdmin(ItemAdmin):
    list_display = ["name", "category", "scene", "id"]
    list_filter = ["category"]


@admin.register(TargetStats)
class TargetStatsAdmin(ItemAdmin):
    list_display = ["id", "last_name", "sets"]
