"""The server over a real socket: daphne, the ASGI app, and a websockets client."""

import json

import pytest
import websockets

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
