"""The server over a real socket: daphne, the ASGI app, and a websockets client."""

import os
import subprocess
import sys

import pytest

from myko_django.testing import current_database_url
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_query_and_command_over_a_real_socket(daphne_server):
    async with await WsClient.socket(daphne_server) as ws:
        await ws.query("GetAllTargets", "Target", tx="q")
        first = await ws.recv()
        assert first["data"]["sequence"] == 0 and first["data"]["upserts"] == []
        await ws.event("SET", "Target", {"id": "t1", "name": "a"})
        update = await ws.recv()
        assert update["data"]["sequence"] == 1
        assert update["data"]["upserts"][0]["item"]["name"] == "a"
        await ws.command("RenameTarget", {"id": "t1", "name": "b"}, tx="c")
        update, response = await ws.recv(), await ws.recv()
        assert update["data"]["upserts"][0]["item"]["name"] == "b"
        assert response == {"event": "ws:m:command-response", "data": {"response": None, "tx": "c"}}


async def test_writes_from_another_process_reach_subscribers(daphne_server):
    """A management command or shell in another process has no doorbell: the hub polls."""
    async with await WsClient.socket(daphne_server) as ws:
        await ws.query("GetAllScenes", "Scene", tx="q")
        assert (await ws.recv())["data"]["sequence"] == 0
        code = (
            "import django; django.setup(); from project.demo.models import Scene; "
            "Scene.objects.create(id='s1', name='from elsewhere')"
        )
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            env={
                **os.environ,
                "DATABASE_URL": current_database_url(),
                "DJANGO_SETTINGS_MODULE": "tests.settings",
            },
        )
        update = await ws.recv()
        assert update["data"]["upserts"][0]["item"] == {"id": "s1", "name": "from elsewhere"}
