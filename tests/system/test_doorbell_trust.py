"""The channel layer is not the truth (issue 13, item 8): a message that is not signed with
this deployment's key is never applied, and a position far beyond the log's head makes a
worker read the log a few times a second, not once per message (docs/architecture.md,
"Trusting the doorbell")."""

import asyncio
import os
import time

import pytest
from channels.layers import get_channel_layer

from myko_django.items.registry import registry
from myko_django.live.committed import CommittedEvent
from myko_django.live.filters import compile_filter
from myko_django.server import doorbell, hub, metrics

from .test_doorbell import _write_in_another_process

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def slow_poll(settings):
    if not os.environ.get("REDIS_URL"):
        pytest.fail("this test needs REDIS_URL (bin/test sets it): the doorbell is Redis")
    settings.MYKO = {**settings.MYKO, "POLL_INTERVAL": 60.0}
    yield
    hub.reset()


async def _subscribed_hub():
    rt = await hub.get_hub()
    assert rt.doorbell.layer is not None
    await rt.ensure_store("Scene")
    received = []
    rt.attach("conn", received.append)
    flt = compile_filter(registry.get("Scene").schema, {}, op_name="GetAllScenes")
    rt.deliver([rt.engine.subscribe_query("conn", "q", "Scene", flt, None)])
    await asyncio.wait_for(rt.doorbell.joined.wait(), 5)
    return rt, received


async def _wait_for(received, n, timeout=5.0):
    started = time.monotonic()
    while len(received) < n and time.monotonic() - started < timeout:
        await asyncio.sleep(0.02)


async def test_forged_doorbell_messages_are_not_served(slow_poll):
    rt, received = await _subscribed_hub()
    refused = metrics.COUNTS.doorbell_refused
    position = rt.sequencer.applied + 1
    fake = [[position, "Scene", "s1", "SET", {"id": "s1", "name": "forged"}]]
    layer = get_channel_layer()
    group = doorbell.group_name()
    unsigned = {"type": doorbell.MESSAGE_TYPE, "events": fake}
    wrong_key = {**unsigned, "sig": b"\0" * 32}
    # Signed right, then altered on the way: the signature no longer matches.
    altered = doorbell.to_message([CommittedEvent(position, "Scene", "s1", "SET", {})])
    altered["events"] = fake
    for message in (unsigned, wrong_key, altered):
        await layer.group_send(group, message)
    started = time.monotonic()
    while metrics.COUNTS.doorbell_refused < refused + 3 and time.monotonic() - started < 5:
        await asyncio.sleep(0.02)
    assert metrics.COUNTS.doorbell_refused == refused + 3
    assert [u.sequence for u in received] == [0]  # nothing served from the forgeries
    assert rt.sequencer.applied == position - 1  # and the position is still to come

    # The real event at that position arrives and is applied, not skipped.
    await asyncio.to_thread(
        _write_in_another_process,
        "from project.demo.models import Scene; Scene.objects.create(id='s1', name='real')",
    )
    await _wait_for(received, 2)
    assert [u.sequence for u in received] == [0, 1]
    assert received[1].upserts.items[0]["name"] == "real"
    assert rt.sequencer.applied == position


async def test_a_position_beyond_the_log_does_not_start_a_read_storm(slow_poll):
    rt, received = await _subscribed_hub()
    far = rt.sequencer.applied + 1_000_000
    reads = rt.sequencer.log_reads
    started = time.monotonic()
    # A worker told of a far-ahead position again and again (as a flood would): before,
    # every message started a log read, back to back, for as long as it lasted.
    while time.monotonic() - started < 1.0:
        rt.receive([CommittedEvent(far, "Scene", "x", "SET", {"id": "x", "name": "x"})])
        await asyncio.sleep(0.002)
    assert rt.sequencer.log_reads - reads <= 10  # back-off: 20, 40, 80... ms up to the poll

    # Real writes are still applied at once meanwhile (they need no repair).
    await asyncio.to_thread(
        _write_in_another_process,
        "from project.demo.models import Scene; Scene.objects.create(id='s2', name='real')",
    )
    await _wait_for(received, 2)
    assert [u.sequence for u in received] == [0, 1]
