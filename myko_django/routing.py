"""The WebSocket routes to mount in a project's ASGI application."""

from channels.auth import AuthMiddleware
from channels.routing import URLRouter
from channels.sessions import CookieMiddleware
from django.urls import path

from myko_django.server.endpoint import (
    MykoConsumer,
    OriginValidator,
    SessionFromCookie,
    fix_daphne_close_codes,
)

websocket_urlpatterns = [
    path("myko", MykoConsumer.as_asgi()),
    path("", MykoConsumer.as_asgi()),
]


def websocket_application() -> OriginValidator:
    """/myko and / with our origin check and Django's session and user in the scope
    (Channels' auth stack, with a session middleware that leaves frames alone)."""
    fix_daphne_close_codes()  # before daphne accepts the first socket (under daphne only)
    return OriginValidator(
        CookieMiddleware(SessionFromCookie(AuthMiddleware(URLRouter(websocket_urlpatterns))))
    )
