"""Sagas in-process: what a handler gets, what its writes look like in the log, the
checkpoint, parking, the admin's retry and skip, replay, and sagas triggering sagas.

The runner as a separate process (SIGKILL, two runners, catch-up) is
tests/system/test_sagas.py."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from myko_django import saga
from myko_django.checks import check_sagas
from myko_django.items import sagas as saga_registry
from myko_django.log.read import high_water, read_logged
from myko_django.models import Event, ParkedEvent, SagaState
from myko_django.sagas import runtime
from myko_django.sagas.runner import Runner
from project.demo.models import Note, Target, TargetStats
from tests.testapp.models import Gadget, Owner

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def declared():
    """Register sagas for one test; they are removed afterwards."""
    names: list[str] = []

    def declare(*args, **kwargs):
        def wrap(func):
            saga(*args, **kwargs)(func)
            names.append(kwargs.get("name") or func.__name__)
            return saga_registry.get(names[-1])

        return wrap

    yield declare
    for name in names:
        saga_registry.unregister(name)


def run(*names: str, start: str | int | None = 0) -> None:
    """Handle everything waiting for these sagas, in this process."""
    Runner([saga_registry.get(n) for n in names], start=start, listen=False).run(once=True)


def set_counts() -> dict[str, int]:
    """Per Target id, its SET events in the log: what TargetStats.sets must say."""
    counts: dict[str, int] = {}
    for item_id in Event.objects.filter(item_type="Target", change_type="SET").values_list(
        "item_id", flat=True
    ):
        counts[item_id] = counts.get(item_id, 0) + 1
    return counts


def test_the_handler_gets_item_event_previous_and_writes_with_the_sagas_tx(declared):
    seen = []

    @declared("Target", name="Watch")
    def watch(ctx, item, event):
        seen.append((event.change_type, item["name"], (ctx.previous or {}).get("name")))
        ctx.set("Owner", {"id": f"w-{event.position}", "name": item["name"][:50]})

    t = Target.objects.create(name="one")
    run("Watch")  # events as they come: one transaction each
    t.name = "two"
    t.save()
    run("Watch")
    t.delete()
    run("Watch")
    assert seen == [("SET", "one", None), ("SET", "two", "one"), ("DEL", "two", "two")]
    written = list(Event.objects.filter(item_type="Owner").order_by("position"))
    triggers = list(Event.objects.filter(item_type="Target").order_by("position"))
    assert [e.tx for e in written] == [f"saga:Watch:{e.position}" for e in triggers]
    assert {e.source_id for e in written} == {"saga:Watch"}
    # Events waiting together are handled in one transaction, whose tx names them all.
    t2 = Target.objects.create(name="three")
    t2.save()
    run("Watch")
    first, last = [e.position for e in Event.objects.filter(item_id=t2.pk)]
    assert set(Event.objects.filter(position__gt=last).values_list("tx", flat=True)) == {
        f"saga:Watch:{first}-{last}"
    }
    assert SagaState.objects.get(name="Watch").position == high_water()
    # Nothing is handled twice: a second run finds nothing to do.
    run("Watch")
    assert len(seen) == 5


def test_a_new_saga_starts_at_the_head_unless_asked(declared):
    seen = []

    @declared("Target", name="FromHead")
    def from_head(ctx, item, event):
        seen.append(item["name"])

    Target.objects.create(name="before")
    run("FromHead", start=None)  # the declaration's default: "head"
    assert seen == []
    Target.objects.create(name="after")
    run("FromHead", start=None)
    assert seen == ["after"]


def test_change_types_and_filter_choose_the_events(declared):
    seen = []

    @declared("Target", on="DEL", name="Deletes", filter={"category": "x"})
    def deletes(ctx, item, event):
        seen.append(item["name"])

    a = Target.objects.create(name="a", category="x")
    b = Target.objects.create(name="b", category="y")
    a.delete()
    b.delete()
    run("Deletes")
    assert seen == ["a"]
    assert SagaState.objects.get(name="Deletes").position == high_water()


def test_a_batched_saga_gets_lists_and_writes_once_per_batch(declared):
    batches = []

    @declared("Target", on="SET", name="Batched", batch=50)
    def batched(ctx, events):
        batches.append([e.item["name"] for e in events])
        ctx.set_many("Owner", [{"id": f"b-{e.item['id']}", "name": "x"} for e in events])

    Target.objects.bulk_create([Target(name=f"t{i}") for i in range(120)])
    run("Batched")
    assert [len(b) for b in batches] == [50, 50, 20]
    txs = set(Event.objects.filter(item_type="Owner").values_list("tx", flat=True))
    assert len(txs) == 3 and all(tx.startswith("saga:Batched:") and "-" in tx for tx in txs)
    assert Owner.objects.count() == 120


def test_the_demo_saga_counts_sets_and_replay_from_zero_rebuilds_it():
    targets = [Target.objects.create(name=f"t{i}") for i in range(5)]
    for i, t in enumerate(targets):
        for n in range(i):
            t.name = f"t{i}-{n}"
            t.save()
    run("TargetStats")
    stats = {s.pk: (s.sets, s.last_name) for s in TargetStats.objects.all()}
    assert {k: v[0] for k, v in stats.items()} == set_counts()
    assert stats[targets[3].pk] == (4, "t3-2")

    TargetStats.objects.all().delete()
    call_command("myko_sagas", "TargetStats", "--set-checkpoint", "0")
    run("TargetStats")
    assert {s.pk: (s.sets, s.last_name) for s in TargetStats.objects.all()} == stats


def test_a_sagas_writes_trigger_another_saga():
    t = Target.objects.create(name="a")
    t.save()
    run("TargetStats", "StatsMirror")
    assert Owner.objects.get(pk=f"stats-{t.pk}").name == "2"
    mirror = Event.objects.filter(item_type="Owner").last()
    assert mirror.tx.startswith("saga:StatsMirror:")
    trigger = Event.objects.get(position=int(mirror.tx.rsplit(":", 1)[1]))
    # The demo saga is batched: both SETs of the Target in one batch, one write.
    first, last = Event.objects.filter(item_type="Target").values_list("position", flat=True)
    assert (trigger.item_type, trigger.tx) == ("TargetStats", f"saga:TargetStats:{first}-{last}")


def test_a_stale_checkpoint_commits_nothing():
    """A second runner that read the same checkpoint loses: its transaction sees the
    checkpoint moved and rolls back, so no event is handled twice."""
    Target.objects.create(name="a")
    demo = saga_registry.get("TargetStats")
    start = runtime.load_checkpoint(demo, 0)
    events = read_logged(start, high_water())
    runtime.commit(demo, start, events, high_water())
    with pytest.raises(runtime.CheckpointMoved):
        runtime.commit(demo, start, events, high_water())
    assert TargetStats.objects.get().sets == 1


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_a_poison_event_is_parked_later_ones_go_on_then_the_admin_retries_it(
    admin_client, monkeypatch
):
    monkeypatch.delenv("MYKO_TEST_CURE", raising=False)
    Gadget.objects.create(id="p1", label="poison")
    Gadget.objects.create(id="ok1", label="fine")
    run("GadgetPoison")
    [parked] = ParkedEvent.objects.all()
    assert (parked.saga, parked.item_id, parked.status) == ("GadgetPoison", "p1", "parked")
    assert parked.attempts == 3  # the first try and retries=2
    assert "ValueError: poison gadget p1" in parked.error and "Traceback" in parked.traceback
    assert Owner.objects.filter(pk="seen-ok1").exists()  # the later event went on
    assert {s.name: s.parked for s in runtime.status()}["GadgetPoison"] == 1

    url = reverse("admin:myko_django_parkedevent_changelist")
    listing = admin_client.get(url)
    assert listing.status_code == 200 and b"poison gadget p1" in listing.content

    # Still poisonous: the retry fails, the event stays parked with the new attempt.
    form = {"action": "retry", "_selected_action": [str(parked.pk)]}
    response = admin_client.post(url, form, follow=True)
    assert b"failed again" in response.content
    parked.refresh_from_db()
    assert (parked.status, parked.attempts) == ("parked", 4)

    monkeypatch.setenv("MYKO_TEST_CURE", "1")  # the fix is deployed
    response = admin_client.post(url, form, follow=True)
    assert response.status_code == 200 and b"handled" in response.content
    parked.refresh_from_db()
    assert (parked.status, parked.resolved_by) == ("retried", "root")
    assert Owner.objects.get(pk="seen-p1").name == "poison"
    written = Event.objects.filter(item_type="Owner", item_id="seen-p1").get()
    assert written.tx == f"saga:GadgetPoison:{parked.position}"
    # A second retry does nothing: the event's effects happened once.
    admin_client.post(url, form, follow=True)
    assert Event.objects.filter(item_type="Owner", item_id="seen-p1").count() == 1


def test_the_admin_skips_a_parked_event(admin_client, monkeypatch):
    monkeypatch.delenv("MYKO_TEST_CURE", raising=False)
    Gadget.objects.create(id="p2", label="poison")
    run("GadgetPoison")
    parked = ParkedEvent.objects.get()
    url = reverse("admin:myko_django_parkedevent_changelist")
    admin_client.post(url, {"action": "skip", "_selected_action": [str(parked.pk)]})
    parked.refresh_from_db()
    assert parked.status == "skipped" and parked.resolved_at is not None
    assert {s.name: s.parked for s in runtime.status()}["GadgetPoison"] == 0
    assert not Owner.objects.filter(pk="seen-p2").exists()


def test_sagas_run_as_the_system_and_read_with_queries(declared):
    got = {}

    @declared("Target", on="SET", name="Reader")
    def reader(ctx, item, event):
        got["vault"] = ctx.run("TouchVault", id="v1")  # needs a signed-in user otherwise
        got["long"] = sorted(g["label"] for g in ctx.query("GetLongLabelGadgets", {"length": 4}))
        got["gadget"] = ctx.get("Gadget", "g1")["label"]
        got["notes"] = [n["text"] for n in ctx.query("GetAllNotes")]  # rows of every user

    Gadget.objects.create(id="g1", label="abc")
    Gadget.objects.create(id="g2", label="abcd")
    owner = User.objects.create_user("someone")
    Note.objects.create(owner=owner, text="private")  # visible to its owner only
    Target.objects.create(name="go")
    run("Reader")
    assert got == {"vault": None, "long": ["abcd"], "gadget": "abc", "notes": ["private"]}


def test_the_decorator_refuses_bad_declarations():
    with pytest.raises(ValueError, match="on must be 'SET', 'DEL' or both"):
        saga("Target", on="PUT")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        saga("Target", batch=0)
    with pytest.raises(ValueError, match="start must be 'head' or a position"):
        saga("Target", start="tail")


def test_the_command_refuses_unknown_sagas_and_lists_them(capsys):
    with pytest.raises(CommandError, match="Unknown saga: Nope"):
        call_command("myko_sagas", "Nope")
    with pytest.raises(CommandError, match="needs the names"):
        call_command("myko_sagas", "--set-checkpoint", "0")
    with pytest.raises(CommandError, match="expected 'head' or a log position, got 'tail'"):
        call_command("myko_sagas", "--start", "tail")
    call_command("myko_sagas", "--list")
    assert "TargetStats: not started, 0 behind, 0 parked" in capsys.readouterr().out


def test_system_checks_name_a_saga_over_an_unknown_type_or_field(declared):
    assert check_sagas() == []

    @declared("Nothing", name="Lost")
    def lost(ctx, item, event):
        pass

    @declared("Target", name="Misfiltered", filter={"colour": "red"})
    def misfiltered(ctx, item, event):
        pass

    errors = {e.msg.split(" (")[0]: e for e in check_sagas()}
    assert errors["Saga 'Lost'"].id == "myko.E051"
    assert "Unknown item type: Nothing" in errors["Saga 'Lost'"].msg
    assert errors["Saga 'Misfiltered'"].id == "myko.E051"
    assert "colour" in errors["Saga 'Misfiltered'"].msg


@pytest.mark.django_db(transaction=True)
def test_metrics_count_parked_events_and_lag(client: Client, settings, monkeypatch):
    monkeypatch.delenv("MYKO_TEST_CURE", raising=False)
    settings.MYKO = {"METRICS": True}
    Gadget.objects.create(id="p3", label="poison")
    run("GadgetPoison")
    Gadget.objects.create(id="later", label="fine")  # not handled yet: 1 position behind
    text = client.get("/metrics").content.decode()
    assert 'myko_saga_parked_events{saga="GadgetPoison"} 1.0' in text
    assert 'myko_saga_lag_positions{saga="GadgetPoison"} 1.0' in text
    assert 'myko_saga_lag_positions{saga="TargetStats"} 0.0' in text  # never ran


def test_a_poison_event_in_a_batch_parks_alone(declared):
    @declared("Target", on="SET", name="BatchPoison", batch=10, retries=1, backoff=0.01)
    def batch_poison(ctx, events):
        if any(e.item["name"] == "bad" for e in events):
            raise ValueError("a bad target")
        ctx.set_many("Owner", [{"id": f"bp-{e.item_id}", "name": e.item["name"]} for e in events])

    for pk, name in (("a", "ok"), ("b", "bad"), ("c", "ok")):
        Target.objects.create(id=pk, name=name)
    run("BatchPoison")
    [parked] = ParkedEvent.objects.all()
    assert (parked.item_id, parked.attempts) == ("b", 2)
    assert set(Owner.objects.values_list("id", flat=True)) == {"bp-a", "bp-c"}
    assert SagaState.objects.get(name="BatchPoison").position == high_water()
