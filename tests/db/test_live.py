"""Live queries and reports in-process: ORM writes and commands reach subscribers as diffs."""

import collections

import pytest
from django.db import transaction

from myko_django.items.errors import OperationError
from myko_django.items.registry import registry
from myko_django.live.engine import Engine
from myko_django.live.sequencer import LogRead, Sequencer, run_sync
from myko_django.log.read import high_water, read, read_request, read_snapshot
from myko_django.testing import LiveSession
from project.demo.models import Scene, Target
from tests.testapp.models import Gadget

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def session():
    with LiveSession() as s:
        yield s


def test_empty_type_gives_one_empty_snapshot(session):
    q = session.query("GetAllTargets", "Target")
    assert q.responses == [
        {"tx": q.tx, "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0}
    ]


def test_set_then_del_reach_the_subscriber(session):
    q = session.query("GetAllTargets", "Target")
    t = Target.objects.create(name="a")
    tid = t.pk
    session.pump()
    assert q.responses[1]["sequence"] == 1
    assert q.responses[1]["upserts"] == [
        {"item": {"id": tid, "name": "a", "category": None, "sceneId": None}, "itemType": "Target"}
    ]
    t.delete()
    session.pump()
    assert q.responses[2] == {
        "tx": q.tx,
        "sequence": 2,
        "upserts": [],
        "deletes": [tid],
        "totalCount": 0,
    }


def test_query_by_fields_sees_items_enter_and_leave(session):
    a = Target.objects.create(name="a", category="x")
    Target.objects.create(name="b", category="y")
    q = session.query("GetTargetsByQuery", "Target", {"category": "x", "tx": "ignored"})
    assert set(q.items) == {a.pk}
    session.command("RenameTarget", {"id": a.pk, "name": "a2"})
    assert q.items[a.pk]["name"] == "a2"
    Target.objects.filter(pk=a.pk).update(category="y")
    session.pump()
    assert q.items == {} and q.responses[-1]["deletes"] == [a.pk]
    n = len(q.responses)
    Target.objects.create(name="c", category="z")
    session.pump()
    assert len(q.responses) == n  # nothing visible changed: no message


def test_cascade_set_null_reaches_subscribers(session):
    scene = Scene.objects.create(name="s")
    t = Target.objects.create(name="t", scene=scene)
    by_scene = session.query("GetTargetsByQuery", "Target", {"sceneId": scene.pk})
    scenes = session.query("GetAllScenes", "Scene")
    assert set(by_scene.items) == {t.pk}
    scene.delete()
    session.pump()
    assert by_scene.items == {} and scenes.items == {}


def test_commands_deliver_updates_before_returning(session):
    q = session.query("GetAllGadgets", "Gadget")
    count = session.report("CountAllGadgets")
    session.command("MakeGadgets", {"labels": ["a", "b"]})
    assert set(q.items) == {"g-a", "g-b"}
    assert count.values == [{"count": 0}, {"count": 2}]


def test_reports_send_only_on_change(session):
    labels = session.report("GadgetLabels", {"prefix": "a"})
    by_id = session.report("GetGadgetById", {"id": "g-a1"})
    session.command("MakeGadgets", {"labels": ["a1", "b1"]})
    session.command("MakeGadgets", {"labels": ["b2"]})
    assert labels.values == [[], ["a1"]]
    assert by_id.values[0] is None and by_id.value["label"] == "a1"
    Gadget.objects.filter(pk="g-a1").delete()
    session.pump()
    assert by_id.value is None and labels.value == []


def test_windowed_query_pages_by_id(session):
    for i in (3, 1, 10, 2):
        Gadget.objects.create(id=str(i), label=f"l{i}")
    q = session.query("GetAllGadgets", "Gadget", window={"offset": 0, "limit": 2})
    assert q.responses[0]["changes"][0]["ids"] == ["1", "10"]
    assert q.responses[0]["totalCount"] == 4
    q.set_window({"offset": 2, "limit": 2})
    assert q.responses[-1]["changes"][0]["ids"] == ["2", "3"]


def test_user_queries_with_params_and_predicates(session):
    session.command("MakeGadgets", {"labels": ["a", "bbbb"]})
    Gadget.objects.filter(pk="g-a").update(count=5)
    busy = session.query("GetGadgetsByMinCount", "Gadget", {"minCount": 3})
    long = session.query("GetLongLabelGadgets", "Gadget", {"length": 4})
    assert set(busy.items) == {"g-a"} and set(long.items) == {"g-bbbb"}
    with pytest.raises(OperationError, match='"minCount" must be an integer'):
        session.query("GetGadgetsByMinCount", "Gadget", {"minCount": "3"})


@pytest.mark.parametrize(
    "query_id, item_type, params, message",
    [
        ("GetNothing", "Target", {}, "Query handler not found: GetNothing"),
        ("GetAllTargets", "Scene", {}, "GetAllTargets returns Target items, not 'Scene'"),
        ("GetTargetsByIds", "Target", {"ids": "x"}, '"ids" must be a list of strings'),
        ("GetTargetsByQuery", "Target", {"name": 5}, '"name" must be'),
        ("GetTargetsByQuery", "Target", {"name": {"kind": "nope", "value": 1}}, "nope"),
    ],
)
def test_bad_queries_get_clear_errors(session, query_id, item_type, params, message):
    with pytest.raises(OperationError) as info:
        session.query(query_id, item_type, params)
    assert message in str(info.value)


def _sequencer() -> Sequencer:
    return Sequencer(Engine({it.name: it.schema for it in registry}), high_water())


def _load(sequencer: Sequencer, item_type: str) -> None:
    run_sync(sequencer.install(read_snapshot(item_type)), read_request)


def test_sequencer_repairs_gaps_and_ignores_duplicates_and_stale_events():
    sequencer = _sequencer()
    _load(sequencer, "Target")
    with transaction.atomic():
        Target.objects.create(name="a")
    with transaction.atomic():
        Target.objects.create(name="b")
    first, second = list(read(0))
    sequencer.offer([second])  # first never rang the doorbell: read from the log
    assert sequencer.gap() == (first.position - 1, second.position)
    run_sync(sequencer.fill_gaps(), read_request)
    assert sequencer.applied == second.position and sequencer.log_reads == 1
    assert {i["name"] for i in sequencer.engine.items("Target").values()} == {"a", "b"}
    assert sequencer.offer([first, second]) == []  # already applied: ignored


def test_store_loaded_behind_the_sequencer_replays_what_it_missed():
    sequencer = _sequencer()
    t = Target.objects.create(name="a")
    snapshot = read_snapshot("Target")
    Target.objects.filter(pk=t.pk).update(name="b")  # after the snapshot
    run_sync(sequencer.poll(), read_request)  # applied before the store exists
    install = sequencer.install(snapshot)
    with pytest.raises(StopIteration):  # the history covers it: no log read
        next(install)
    assert sequencer.engine.items("Target")[t.pk]["name"] == "b"


def test_store_loaded_further_behind_than_history_reads_the_gap_from_the_log():
    """The sequencer keeps recent events only; an install that needs older ones asks for a
    log read (so the server can do it off its event loop) and finishes with what was read."""
    sequencer = _sequencer()
    sequencer._history = collections.deque(maxlen=1)  # noqa: SLF001 - a tiny history
    t = Target.objects.create(name="a")
    snapshot = read_snapshot("Target")
    for name in ("b", "c", "d"):
        Target.objects.filter(pk=t.pk).update(name=name)
    run_sync(sequencer.poll(), read_request)
    install = sequencer.install(snapshot)
    request = next(install)
    assert request == LogRead(snapshot.position, sequencer.applied, "Target")
    with pytest.raises(StopIteration):
        install.send(read_request(request))
    assert sequencer.engine.items("Target")[t.pk]["name"] == "d"


def test_store_install_behind_many_events_of_other_types_finishes():
    """The log read for an install returns only its own type's events; what it covered is
    the range read, not its last event (else it would ask again forever)."""
    sequencer = _sequencer()
    sequencer._history = collections.deque(maxlen=1)  # noqa: SLF001 - a tiny history
    t = Target.objects.create(name="a")
    snapshot = read_snapshot("Target")
    Target.objects.filter(pk=t.pk).update(name="b")
    for i in range(3):
        Scene.objects.create(name=f"s{i}")  # later events, none of them Targets
    run_sync(sequencer.poll(), read_request)
    install = sequencer.install(snapshot)
    request = next(install)
    with pytest.raises(StopIteration):  # one read is enough
        install.send(read_request(request))
    assert sequencer.engine.items("Target")[t.pk]["name"] == "b"
