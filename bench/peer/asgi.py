"""ASGI entry point of myko's and the ceiling's fan-out servers: /myko (and /) as in
project/asgi.py, /ceiling the bare broadcast. The peer has its own module (asgi_dcrf.py) so
its model_observer's signal receivers never run in the other servers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from myko_django.routing import websocket_application  # noqa: E402

from .ceiling import ceiling_app  # noqa: E402


def by_path(routes: dict, default):
    """Pick the WebSocket app by the first path segment."""

    async def app(scope, receive, send):
        head = scope["path"].strip("/").split("/", 1)[0]
        return await routes.get(head, default)(scope, receive, send)

    return app


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": by_path({"ceiling": ceiling_app}, websocket_application()),
    }
)
