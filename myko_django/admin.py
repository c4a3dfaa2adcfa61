"""The event log, read-only in the admin, and a base ModelAdmin linking items to their history.

Admin writes need nothing special: they go through the ORM, whose writes are captured.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from myko_django.items.registry import registry
from myko_django.log.tables import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["position", "change_type", "item_type", "item_id", "tx", "created_at"]
    list_filter = ["item_type", "change_type"]
    search_fields = ["=item_id", "=tx"]
    ordering = ["-position"]
    readonly_fields = [f.name for f in Event._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ItemAdmin(admin.ModelAdmin):
    """ModelAdmin for item models: shows a link to the item's events in the log."""

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "myko_history"]

    @admin.display(description="Event log")
    def myko_history(self, obj) -> str:
        item_type = registry.for_model(type(obj)) if obj is not None else None
        if obj is None or obj._state.adding or item_type is None:
            return "-"
        url = reverse("admin:myko_django_event_changelist")
        query = urlencode({"item_type": item_type.name, "item_id": str(obj.pk)})
        return format_html('<a href="{}?{}">History of this {}</a>', url, query, item_type.name)
