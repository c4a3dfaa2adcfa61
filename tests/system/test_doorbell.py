"""Writes in another process reach this process's subscribers through the channel layer
(Redis) at once, not at the next poll of the log."""

import asyncio
import os
import subprocess
import sys
import time

import pytest
from django.db import connection

from myko_django.items.registry import registry
from myko_django.live.filters import compile_filter
from myko_django.server import doorbell, hub
from myko_django.testing import current_database_url

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def slow_poll(settings):
    if not os.environ.get("REDIS_URL"):
        pytest.fail("this test needs REDIS_URL (bin/test sets it): the doorbell is Redis")
    settings.MYKO = {**settings.MYKO, "POLL_INTERVAL": 60.0}
    yield
    hub.reset()


def _write_in_another_process(code: str) -> None:
    url = current_database_url()
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); " + code], check=True, env=env
    )


async def test_other_process_write_arrives_through_the_layer(slow_poll):
    rt = await hub.get_hub()
    assert rt.doorbell.layer is not None
    await rt.ensure_store("Scene")
    received = []
    rt.attach("conn", received.append)
    flt = compile_filter(registry.get("Scene").schema, {}, op_name="GetAllScenes")
    rt.deliver([rt.engine.subscribe_query("conn", "q", "Scene", flt, None)])
    await asyncio.wait_for(rt.doorbell.joined.wait(), 5)
    await asyncio.to_thread(
        _write_in_another_process,
        "from project.demo.models import Scene; Scene.objects.create(id='s1', name='rung')",
    )
    started = time.monotonic()
    while len(received) < 2 and time.monotonic() - started < 5:
        await asyncio.sleep(0.02)
    assert [u.sequence for u in received] == [0, 1]
    assert received[1].upserts.items[0]["name"] == "rung"
    assert rt.sequencer.log_reads == 0  # the doorbell carried the event; no log read was needed


def test_group_is_per_database():
    assert doorbell.group_name().startswith("myko.events.")
    assert connection.settings_dict["NAME"] in doorbell.group_name()
