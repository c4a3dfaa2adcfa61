"""A worker that lags behind a compaction steps over its holes (issue 13): `myko_compact
--older-than 0` may remove events a running worker has not applied yet; those were
superseded by later events of their items, which the worker reads instead."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from myko_django.log import publish
from myko_django.models import Event
from myko_django.testing import LiveSession
from project.demo.models import Target

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_lagging_worker_steps_over_what_compaction_removed():
    with LiveSession() as worker:
        query = worker.query("GetAllTargets", "Target")
        applied = worker.sequencer.applied
        # The worker hears nothing for a while (no doorbell, no poll yet).
        publish.remove_listener(worker._published)
        Target.objects.create(id="a", name="one")
        Target.objects.filter(id="a").update(name="two")
        Target.objects.filter(id="a").update(name="three")
        Target.objects.create(id="b", name="b")
        Target.objects.filter(id="b").delete()
        Target.objects.create(id="c", name="c")
        before = Event.objects.filter(position__gt=applied).count()

        call_command("myko_compact", "--older-than", "0", stdout=io.StringIO())
        kept = sorted(Event.objects.filter(position__gt=applied).values_list("position", flat=True))
        assert len(kept) == 3 < before  # a's latest, b's DEL, c's SET: holes between

        worker.pump()  # its poll reads the log: it used to wait for the first hole for ever
        assert worker.sequencer.applied == kept[-1]
        assert {i: item["name"] for i, item in query.items.items()} == {"a": "three", "c": "c"}

        Target.objects.create(id="d", name="d")  # and it goes on from there
        worker.pump()
        assert set(query.items) == {"a", "c", "d"}
