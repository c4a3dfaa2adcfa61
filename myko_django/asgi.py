"""The ASGI application of a project that serves myko: Django for HTTP, the myko protocol
for WebSockets. A project's asgi.py is then

    import os

    from myko_django.asgi import get_asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "yourproject.settings")
    application = get_asgi_application()

with `ASGI_APPLICATION = "yourproject.asgi.application"` in the settings.
"""

from __future__ import annotations

from typing import Any

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application as django_asgi_application


def get_asgi_application(*, http: Any = None) -> ProtocolTypeRouter:
    """HTTP through Django (`http`, when given, replaces Django's own ASGI handler, e.g. to
    wrap it in middleware), WebSockets through `myko_django.routing.websocket_application()`:
    the protocol at /myko (and /) behind the origin check, with Django's session and user.

    Sets Django up first, as Django's own `get_asgi_application()` does, so call it after
    DJANGO_SETTINGS_MODULE is set."""
    django_app = django_asgi_application()  # django.setup(): the app registry is ready
    # The routes' consumer builds on the models: importable only once Django is set up.
    from myko_django.routing import websocket_application

    return ProtocolTypeRouter(
        {"http": http if http is not None else django_app, "websocket": websocket_application()}
    )
