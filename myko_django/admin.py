"""The event log, read-only in the admin, and a base ModelAdmin linking items to their history.

Admin writes need nothing special: they go through the ORM, whose writes are captured.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from myko_django.items.registry import registry
from myko_django.log.tables import Event
from myko_django.sagas import runtime as sagas
from myko_django.sagas.tables import ParkedEvent, SagaState


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


@admin.register(SagaState)
class SagaStateAdmin(admin.ModelAdmin):
    """Each saga's checkpoint, read-only (`manage.py myko_sagas --set-checkpoint` moves one)."""

    list_display = ["name", "position", "updated_at"]
    readonly_fields = ["name", "position", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ParkedEvent)
class ParkedEventAdmin(admin.ModelAdmin):
    """Events a saga kept failing on. Retry runs the handler again here and now (its writes
    and the row's "retried" commit together); skip gives up on the event, keeping the row."""

    list_display = [
        "saga",
        "position",
        "change_type",
        "item_type",
        "item_id",
        "status",
        "attempts",
        "short_error",
        "parked_at",
    ]
    list_filter = ["status", "saga"]
    search_fields = ["=item_id", "=saga"]
    ordering = ["-parked_at"]
    readonly_fields = [f.name for f in ParkedEvent._meta.fields] + ["log_event"]
    actions = ["retry", "skip"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="error")
    def short_error(self, obj) -> str:
        return obj.error if len(obj.error) <= 120 else obj.error[:119] + "…"

    @admin.display(description="Event")
    def log_event(self, obj) -> str:
        url = reverse("admin:myko_django_event_changelist")
        query = urlencode({"position": obj.position})
        return format_html('<a href="{}?{}">#{} in the log</a>', url, query, obj.position)

    @admin.action(description="Retry the selected parked events", permissions=["change"])
    def retry(self, request, queryset) -> None:
        for row in queryset.order_by("position"):
            result = sagas.retry_parked(row.pk, by=request.user.get_username())
            self.message_user(
                request, result.message, messages.SUCCESS if result.ok else messages.ERROR
            )

    @admin.action(description="Skip the selected parked events", permissions=["change"])
    def skip(self, request, queryset) -> None:
        skipped = [
            row for row in queryset if sagas.skip_parked(row.pk, by=request.user.get_username())
        ]
        self.message_user(request, f"Skipped {len(skipped)} parked event(s).", messages.WARNING)
