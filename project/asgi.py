"""ASGI entry point: HTTP through Django, the myko WebSocket protocol at /myko (and /)."""

import os

from myko_django.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_asgi_application()
