"""ASGI entry point of the peer's server: DCRF at /peer with Django auth (as a Django team
mounts it), and /myko for the writer's command, which saves Targets in this process so
their post_save signals reach the model observer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402

from myko_django.routing import websocket_application  # noqa: E402

from .asgi import by_path  # noqa: E402
from .dcrf import TargetPeerConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": by_path(
            {"peer": AuthMiddlewareStack(TargetPeerConsumer.as_asgi())}, websocket_application()
        ),
    }
)
