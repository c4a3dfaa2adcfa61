"""The WebSocket routes to mount in a project's ASGI application."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from .consumer import MykoConsumer, OriginValidator

websocket_urlpatterns = [
    path("myko", MykoConsumer.as_asgi()),
    path("", MykoConsumer.as_asgi()),
]


def websocket_application():
    """/myko and / with Django auth and our origin check."""
    from channels.routing import URLRouter

    return OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
