"""The WebSocket routes to mount in a project's ASGI application."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from .consumer import MykoConsumer, OriginValidator, ServerSend

websocket_urlpatterns = [
    path("myko", MykoConsumer.as_asgi()),
    path("", MykoConsumer.as_asgi()),
]


def websocket_application():
    """/myko and / with Django auth and our origin check (frames bypass the session
    middleware's send wrapper: see consumer.ServerSend)."""
    from channels.routing import URLRouter

    return ServerSend(OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))))
