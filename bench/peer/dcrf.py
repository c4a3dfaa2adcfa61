"""The peer: live updates of Target the way Django teams do it today, with
djangochannelsrestframework's `model_observer` (post_save -> on_commit -> group_send on the
channel layer -> one layer message per subscribed consumer -> JSON to its socket).

A client subscribes with `{"action": "subscribe_category", "category": C, "request_id": R}`
and then gets `{"action": "update", "data": <Target>, "request_id": R, ...}` for every saved
Target of category C, which is the same filter as myko's GetTargetsByQuery {category: C}.
"""

from __future__ import annotations

from djangochannelsrestframework.decorators import action
from djangochannelsrestframework.generics import GenericAsyncAPIConsumer
from djangochannelsrestframework.observer import model_observer
from rest_framework import serializers

from project.demo.models import Target


class TargetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Target
        fields = ["id", "name", "category", "scene"]


class TargetPeerConsumer(GenericAsyncAPIConsumer):
    """DCRF's documented pattern: a model observer grouped by the filter value."""

    queryset = Target.objects.all()
    serializer_class = TargetSerializer

    @model_observer(Target)
    async def target_activity(
        self, message, observer=None, action=None, subscribing_request_ids=(), **kwargs
    ):
        for request_id in subscribing_request_ids:
            await self.reply(data=message, action=action, request_id=request_id)

    @target_activity.serializer
    def target_activity(self, instance, action, **kwargs):
        return TargetSerializer(instance).data

    @target_activity.groups_for_signal
    def target_activity(self, instance, **kwargs):
        yield f"category-{instance.category}"

    @target_activity.groups_for_consumer
    def target_activity(self, category=None, **kwargs):
        yield f"category-{category}"

    @action()
    async def subscribe_category(self, category, request_id, **kwargs):
        await self.target_activity.subscribe(category=category, request_id=request_id)
        return {"subscribed": category}, 201
