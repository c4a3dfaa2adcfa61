"""The server over a real socket: daphne, the ASGI app, and a websockets client."""

import json
import os
import subprocess
import sys

import pytest
import websockets
from django.db import connection

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_query_and_command_over_a_real_socket(daphne_server):
    async with websockets.connect(daphne_server) as ws:
        await ws.send(
            json.dumps(
                {
                    "event": "ws:m:query",
                    "data": {
                        "query": {"tx": "q"},
                        "queryId": "GetAllTargets",
                        "queryItemType": "Target",
                    },
                }
            )
        )
        first = json.loads(await ws.recv())
        assert first["data"]["sequence"] == 0 and first["data"]["upserts"] == []
        await ws.send(
            json.dumps(
                {
                    "event": "ws:m:event",
                    "data": {
                        "changeType": "SET",
                        "itemType": "Target",
                        "item": {"id": "t1", "name": "a"},
                    },
                }
            )
        )
        update = json.loads(await ws.recv())
        assert update["data"]["sequence"] == 1
        assert update["data"]["upserts"][0]["item"]["name"] == "a"
        await ws.send(
            json.dumps(
                {
                    "event": "ws:m:command",
                    "data": {
                        "command": {"tx": "c", "id": "t1", "name": "b"},
                        "commandId": "RenameTarget",
                    },
                }
            )
        )
        update, response = json.loads(await ws.recv()), json.loads(await ws.recv())
        assert update["data"]["upserts"][0]["item"]["name"] == "b"
        assert response == {"event": "ws:m:command-response", "data": {"response": None, "tx": "c"}}


async def test_writes_from_another_process_reach_subscribers(daphne_server):
    """A management command or shell in another process has no doorbell: the hub polls."""
    async with websockets.connect(daphne_server) as ws:
        await ws.send(
            json.dumps(
                {
                    "event": "ws:m:query",
                    "data": {
                        "query": {"tx": "q"},
                        "queryId": "GetAllScenes",
                        "queryItemType": "Scene",
                    },
                }
            )
        )
        assert json.loads(await ws.recv())["data"]["sequence"] == 0
        db = connection.settings_dict
        env_url = (
            f"postgres://postgres@127.0.0.1:5432/{db['NAME']}"
            if db["ENGINE"].endswith("postgresql")
            else f"sqlite:///{db['NAME']}"
        )
        code = (
            "import django; django.setup(); from project.demo.models import Scene; "
            "Scene.objects.create(id='s1', name='from elsewhere')"
        )
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            env={**os.environ, "DATABASE_URL": env_url, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        )
        update = json.loads(await ws.recv())
        assert update["data"]["upserts"][0]["item"] == {"id": "s1", "name": "from elsewhere"}
