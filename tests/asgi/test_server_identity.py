"""GetConnectedServer names the worker without revealing its host or process (issue 13,
item 11), unless MYKO["SERVER_NAME"] says what to call it."""

import os
import socket

import pytest

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_the_default_id_reveals_neither_host_nor_pid(client):
    _, data = await client.subscribe("GetConnectedServer", "Server")
    server_id = data["upserts"][0]["item"]["id"]
    assert socket.gethostname() not in server_id
    assert str(os.getpid()) not in server_id
    assert server_id.startswith("myko-") and len(server_id) == 17


async def test_server_name_names_it(client, settings):
    settings.MYKO = {**getattr(settings, "MYKO", {}), "SERVER_NAME": "eu-west-2a/worker-3"}
    _, data = await client.subscribe("GetConnectedServer", "Server")
    assert data["upserts"][0]["item"]["id"] == "eu-west-2a/worker-3"
