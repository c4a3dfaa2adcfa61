"""Commands: one transaction each, clear errors, idempotent by (commandId, tx, user)."""

import datetime as dt
import threading
import time

import pytest
from django.db import connections
from django.utils import timezone

from myko_django.log.commands import CommandError, run_command
from myko_django.log.writepath import Change, apply_batch, apply_events
from myko_django.models import CommandResult, Event
from project.demo.models import Target
from tests.testapp.models import Gadget, Owner

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_success_returns_response_and_position(published):
    out = run_command("MakeGadgets", {"labels": ["a", "b"], "tx": "t1"}, tx="t1")
    assert out.response == {"made": 2}
    assert out.position == Event.objects.latest("position").position
    assert [e.tx for e in Event.objects.all()] == ["t1", "t1"]
    assert [e.item["label"] for batch in published for e in batch] == ["a", "b"]


def test_a_command_is_published_once_however_many_writes(published):
    """Subscribers get one update per command, not one per ctx.set."""
    run_command("MakeGadgets", {"labels": ["a", "b", "c"]}, tx="t1")
    assert [[e.item["label"] for e in batch] for batch in published] == [["a", "b", "c"]]


def test_handler_error_rolls_back_everything(published):
    with pytest.raises(CommandError, match="failed after 1"):
        run_command("MakeGadgets", {"labels": ["a", "b"], "failAfter": 1}, tx="t1")
    assert Gadget.objects.count() == 0
    assert Event.objects.count() == 0
    assert CommandResult.objects.count() == 0
    assert published == []
    # A failed command stored nothing: retrying the same tx runs it again.
    assert run_command("MakeGadgets", {"labels": ["a"]}, tx="t1").response == {"made": 1}


@pytest.mark.parametrize(
    "command_id, params, message",
    [
        ("Nope", {}, "Command handler not found: Nope"),
        ("MakeGadgets", {}, 'MakeGadgets: "labels" is required'),
        ("MakeGadgets", {"labels": "a"}, 'MakeGadgets: "labels" must be a list of strings'),
        ("MakeGadgets", {"labels": [1]}, 'MakeGadgets: "labels" must be a list of strings'),
        ("MakeGadgets", {"labels": ["x" * 11]}, "Gadget.label: Ensure this value has at most 10"),
        ("MakeGadgets", {"labels": ["a"], "failAfter": "0"}, '"failAfter" must be an integer'),
        ("RenameTarget", {"id": "t", "name": None}, 'RenameTarget: "name" must be a string'),
        ("RenameTarget", {"id": "missing", "name": "x"}, "Target not found: missing"),
        ("DeleteTarget", {"id": "missing"}, "Target not found: missing"),
        ("DeleteTargets", {"ids": "a"}, 'DeleteTargets: "ids" must be a list of strings'),
        (5, {}, "commandId must be a string"),
    ],
)
def test_bad_commands_get_clear_errors_and_write_nothing(command_id, params, message):
    with pytest.raises(CommandError) as info:
        run_command(command_id, params, tx="t")
    assert message in str(info.value)
    assert Event.objects.count() == 0


def test_derived_delete_commands():
    a, b = Target.objects.create(name="a"), Target.objects.create(name="b")
    ids = [a.pk, b.pk]
    assert run_command("DeleteTarget", {"id": ids[0]}, tx="d1").response == {"deleted": True}
    out = run_command("DeleteTargets", {"ids": [ids[1], "missing"]}, tx="d2")
    assert out.response == {"deletedCount": 1}
    assert Target.objects.count() == 0
    assert list(
        Event.objects.filter(tx__in=["d1", "d2"]).values_list("change_type", "item_id")
    ) == [("DEL", ids[0]), ("DEL", ids[1])]


def test_nested_command_and_context_reads_share_the_transaction():
    out = run_command("Nested", {"label": "n"}, tx="t")
    assert out.response == {"inner": {"made": 1}, "got": "n"}
    with pytest.raises(CommandError):
        run_command("Nested", {"label": "x" * 11}, tx="t2")
    assert list(Gadget.objects.values_list("label", flat=True)) == ["n"]


def test_idempotent_tx_returns_stored_response_without_running_again():
    first = run_command("SlowCount", {"label": "a"}, tx="same")
    again = run_command("SlowCount", {"label": "a"}, tx="same")
    assert (first.response, again.response) == (1, 1)
    assert again.replayed and not first.replayed
    assert Gadget.objects.count() == 1
    # Another tx is another command.
    assert run_command("SlowCount", {"label": "a"}, tx="other").response == 2


def test_idempotency_is_per_user(django_user_model):
    alice = django_user_model.objects.create(username="alice")
    bob = django_user_model.objects.create(username="bob")
    run_command("SlowCount", {"label": "a"}, tx="same", user=alice)
    assert run_command("SlowCount", {"label": "a"}, tx="same", user=bob).response == 2
    assert run_command("SlowCount", {"label": "a"}, tx="same", user=alice).response == 1


def _in_thread(results, *args, **kwargs):
    try:
        results.append(run_command(*args, **kwargs))
    except Exception as exc:  # pragma: no cover - reported by the assertion
        results.append(exc)
    finally:
        connections.close_all()


def test_racing_duplicates_run_once():
    results: list = []
    threads = [
        threading.Thread(
            target=_in_thread,
            args=(results, "SlowCount", {"label": "r", "wait": 0.3}),
            kwargs={"tx": "race"},
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.response for r in results] == [1, 1, 1]
    assert sum(r.replayed for r in results) == 2
    assert Gadget.objects.count() == 1


def test_concurrent_commands_produce_a_gap_free_log():
    results: list = []
    threads = [
        threading.Thread(
            target=_in_thread,
            args=(results, "MakeGadgets", {"labels": [f"c{i}a", f"c{i}b"]}),
            kwargs={"tx": f"c{i}"},
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(r, Exception) for r in results), results
    positions = list(Event.objects.values_list("position", flat=True))
    assert positions == list(range(1, 17))
    # Each command's events are contiguous: positions follow commit order.
    txs = list(Event.objects.values_list("tx", flat=True))
    assert all(txs[i] == txs[i + 1] for i in range(0, 16, 2))


@pytest.mark.parametrize(
    "second",
    [
        ("SetGadgets", {"items": [{"id": "g-same", "label": "second"}]}),  # bulk path
        ("MakeGadgets", {"labels": ["same"]}),  # one ctx.set
    ],
    ids=["set_many", "set"],
)
def test_concurrent_sets_of_one_new_id_both_succeed_last_commit_wins(second):
    """SELECT ... FOR UPDATE cannot lock a row that does not exist yet: the second insert
    of the same id must become a replace, not a unique-key error."""
    results: list = []
    results_first: list = []
    first = threading.Thread(
        target=_in_thread,
        args=(
            results_first,
            "SetGadgetsThenWait",
            {"items": [{"id": "g-same", "label": "first"}], "wait": 0.5},
        ),
        kwargs={"tx": "first"},
    )
    first.start()
    threading.Event().wait(0.15)  # the first has inserted and holds its transaction open
    _in_thread(results, *second, tx="second")
    first.join()
    assert not isinstance(results_first[0], Exception), results_first
    assert not isinstance(results[0], Exception), results
    label = second[1]["items"][0]["label"] if "items" in second[1] else "same"
    assert Gadget.objects.get(pk="g-same").label == label
    assert [(e.tx, e.item["label"]) for e in Event.objects.order_by("position")] == [
        ("first", "first"),
        ("second", label),
    ]


def test_a_long_command_does_not_hold_other_writers_back():
    """Events are appended at the end of a command's transaction, so the log's position
    lock is not held while its handler runs: a quick command started meanwhile commits
    first and takes the lower position."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serializes every writing transaction")
    slow_results: list = []
    slow = threading.Thread(
        target=_in_thread,
        args=(
            slow_results,
            "SetGadgetsThenWait",
            {"items": [{"id": "g-slow", "label": "slow"}], "wait": 1.0},
        ),
        kwargs={"tx": "slow"},
    )
    slow.start()
    threading.Event().wait(0.2)  # the slow command has written its row and is waiting
    started = time.monotonic()
    quick = run_command("MakeGadgets", {"labels": ["quick"]}, tx="quick")
    took = time.monotonic() - started
    slow.join()
    assert took < 0.6, f"the quick command waited {took:.2f}s for the slow one"
    assert [e.tx for e in Event.objects.order_by("position")] == ["quick", "slow"]
    assert quick.position == 1 and slow_results[0].position == 2


def test_a_rolled_back_savepoint_inside_a_command_leaves_no_event(published):
    """Events wait for the end of the command; those of a savepoint that rolled back in
    the meantime are dropped with it."""
    out = run_command("PartlyRolledBack", {}, tx="p")
    assert [(e.position, e.item_id) for e in Event.objects.order_by("position")] == [
        (1, "g-kept"),
        (2, "g-after"),
    ]
    assert sorted(Gadget.objects.values_list("pk", flat=True)) == ["g-after", "g-kept"]
    assert [e.item_id for batch in published for e in batch] == ["g-kept", "g-after"]
    assert out.position == 2


def test_apply_batch_set_replaces_whole_item():
    apply_batch([Change("SET", "Gadget", {"id": "g", "label": "a", "count": 5})])
    apply_batch([Change("SET", "Gadget", {"id": "g", "label": "b"})], tx="x")
    g = Gadget.objects.get(pk="g")
    assert (g.label, g.count) == ("b", 0)
    assert Event.objects.latest("position").item["count"] == 0


def test_event_batch_commits_valid_events_and_reports_each_invalid_one():
    last, rejected = apply_events(
        [
            {"changeType": "SET", "itemType": "Gadget", "item": {"id": "g1", "label": "ok"}},
            {"changeType": "SET", "itemType": "Gadget", "item": {"id": "g2", "label": 5}},
            {"changeType": "PATCH", "itemType": "Gadget", "item": {"id": "g3"}},
            {"changeType": "SET", "itemType": "Nope", "item": {"id": "g4"}},
            "garbage",
            {"changeType": "DEL", "itemType": "Gadget", "item": {"id": "never-existed"}},
            {"changeType": "SET", "itemType": "Gadget", "item": {"id": "g5", "label": "ok2"}},
        ]
    )
    assert [i for i, _, _ in rejected] == [1, 2, 3, 4]
    messages = [m for _, _, m in rejected]
    assert "Gadget.label must be a string" in messages[0]
    assert '"changeType" must be "SET" or "DEL"' in messages[1]
    assert "Unknown item type: Nope" in messages[2]
    assert "must be an object" in messages[3]
    assert sorted(Gadget.objects.values_list("pk", flat=True)) == ["g1", "g5"]
    assert last == Event.objects.latest("position").position == 2


def test_event_the_database_refuses_is_dropped_alone():
    """The batch runs without per-event savepoints until the database refuses an event
    (here a NUL character, which Postgres text cannot hold); then only that event is lost."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores NUL characters in text")
    last, rejected = apply_events(
        [
            {"changeType": "SET", "itemType": "Gadget", "item": {"id": "a", "label": "ok"}},
            {
                "changeType": "SET",
                "itemType": "Gadget",
                "item": {"id": "b", "label": "a\x00b"},
            },
            {"changeType": "SET", "itemType": "Gadget", "item": {"id": "c", "label": 1}},
            {"changeType": "SET", "itemType": "Gadget", "item": {"id": "d", "label": "ok"}},
        ]
    )
    assert [i for i, _, _ in rejected] == [1, 2]
    assert "NUL" in rejected[0][2]
    assert sorted(Gadget.objects.values_list("pk", flat=True)) == ["a", "d"]
    assert list(Event.objects.values_list("item_id", flat=True)) == ["a", "d"]
    assert last == 2


def test_event_refused_inside_a_save_keeps_the_valid_events_before_it():
    """A pre_save receiver that raises runs inside the save's own atomic block (no
    savepoint): the batch must redo with savepoints, not silently drop the valid events."""
    from django.db.models.signals import pre_save

    def refuse(sender, instance, **kwargs):
        if instance.label == "boom":
            raise ValueError("boom is not allowed")

    Gadget.objects.create(id="g", label="old")
    pre_save.connect(refuse, sender=Gadget, dispatch_uid="refuse-boom")
    try:
        last, rejected = apply_events(
            [
                {"changeType": "SET", "itemType": "Gadget", "item": {"id": "h", "label": "ok"}},
                {"changeType": "SET", "itemType": "Gadget", "item": {"id": "g", "label": "boom"}},
            ]
        )
    finally:
        pre_save.disconnect(dispatch_uid="refuse-boom", sender=Gadget)
    assert [(i, m) for i, _, m in rejected] == [(1, "boom is not allowed")]
    assert Gadget.objects.get(pk="h").label == "ok"
    assert Gadget.objects.get(pk="g").label == "old"
    assert last == Event.objects.latest("position").position


def test_set_many_writes_the_same_events_as_one_by_one():
    owner = Owner.objects.create(id="o1", name="o")
    items = [{"id": f"g{i}", "label": f"l{i}", "count": i, "ownerId": "o1"} for i in range(5)]
    run_command("SetGadgets", {"items": items}, tx="bulk")
    Gadget.objects.filter(pk="g0").update(count=99)  # so the next SET updates a changed row
    again = [{"id": "g0", "label": "changed"}, {"id": "g9", "label": "new", "price": "1.50"}]
    run_command("SetGadgets", {"items": again}, tx="bulk2")
    bulk = {e.item_id: e.item for e in Event.objects.filter(tx__in=["bulk", "bulk2"])}
    assert bulk["g0"]["label"] == "changed" and bulk["g0"]["count"] == 0  # whole replace
    assert bulk["g0"]["ownerId"] is None and bulk["g9"]["price"] == "1.50"
    assert Event.objects.filter(tx="bulk").count() == 5
    assert Gadget.objects.get(pk="g3").owner == owner
    # the one-by-one path stores the same item
    run_command("MakeGadgets", {"labels": ["l1"]}, tx="single")
    single = Event.objects.get(tx="single").item
    assert {**single, "id": "g1", "count": 1, "ownerId": "o1"} == bulk["g1"]


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"id": "a", "label": "x", "ownerId": "missing"}], "Gadget.ownerId: Owner missing"),
        ([{"id": "a", "label": 5}], "Gadget.label must be a string"),
        ([{"label": "x"}], "every item must be an object with an id"),
    ],
)
def test_set_many_rejects_bad_items_and_writes_nothing(items, message):
    with pytest.raises(CommandError) as info:
        run_command("SetGadgets", {"items": [{"id": "ok", "label": "ok"}, *items]}, tx="b")
    assert message in str(info.value)
    assert Gadget.objects.count() == 0 and Event.objects.count() == 0


def test_set_many_with_repeated_ids_keeps_the_last():
    run_command(
        "SetGadgets", {"items": [{"id": "a", "label": "1"}, {"id": "a", "label": "2"}]}, tx="r"
    )
    assert Gadget.objects.get(pk="a").label == "2"
    assert [e.item["label"] for e in Event.objects.all()] == ["1", "2"]


def test_expired_stored_response_lets_the_tx_run_again(settings):
    run_command("SlowCount", {"label": "a"}, tx="old")
    CommandResult.objects.update(created_at=timezone.now() - dt.timedelta(days=2))
    again = run_command("SlowCount", {"label": "a"}, tx="old")
    assert (again.response, again.replayed) == (2, False)
    assert CommandResult.objects.count() == 1


def test_a_retry_with_other_parameters_is_refused(django_user_model):
    """Issue 13, item 9: the stored response answers only the same command; a tx reused
    with other parameters is an error, not another command's response."""
    alice = django_user_model.objects.create(username="alice")
    assert run_command("SlowCount", {"label": "a"}, tx="t", user=alice).response == 1
    with pytest.raises(CommandError) as refused:
        run_command("SlowCount", {"label": "b"}, tx="t", user=alice)
    assert str(refused.value) == (
        "SlowCount: tx 't' was already used for a SlowCount with other parameters; a retry "
        "must send the same parameters, a new command needs a new tx"
    )
    # Reserved keys are not parameters: a retry that adds createdAt is the same command.
    again = run_command("SlowCount", {"label": "a", "createdAt": 5}, tx="t", user=alice)
    assert (again.response, again.replayed) == (1, True)
    assert Gadget.objects.count() == 1


def test_anonymous_callers_do_not_share_tx_values():
    """Each connection passes its own anonymous_key: one anonymous client reusing another's
    tx runs its own command instead of getting the other's stored response."""
    assert run_command("SlowCount", {"label": "a"}, tx="t", anonymous_key="c1").response == 1
    theirs = run_command("SlowCount", {"label": "a"}, tx="t", anonymous_key="c2")
    assert (theirs.response, theirs.replayed) == (2, False)
    mine = run_command("SlowCount", {"label": "a"}, tx="t", anonymous_key="c1")
    assert (mine.response, mine.replayed) == (1, True)
    # A UUID-long tx is nobody else's: recognised whichever connection sends it.
    long_tx = "0123456789abcdef0123456789abcdef"
    assert run_command("SlowCount", {"label": "u"}, tx=long_tx, anonymous_key="c1").response == 1
    again = run_command("SlowCount", {"label": "u"}, tx=long_tx, anonymous_key="c2")
    assert (again.response, again.replayed) == (1, True)
