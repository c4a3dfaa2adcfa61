"""The sequencer steps over positions that compaction removed, and only over those: a hole
is a position below the top of a read of the whole log that the read did not return."""

from myko_django.live.committed import CommittedEvent
from myko_django.live.engine import Engine
from myko_django.live.filters import ItemSchema
from myko_django.live.sequencer import Sequencer, run_sync

T = "Target"
SCHEMA = ItemSchema(T, {"id": "id", "name": "str"})


def ev(position: int, item_id: str, name: str) -> CommittedEvent:
    return CommittedEvent(position, T, item_id, "SET", {"id": item_id, "name": name})


def sequencer() -> Sequencer:
    engine = Engine({T: SCHEMA})
    engine.load_store(T, [], 0)
    return Sequencer(engine, 0)


def reader(log: dict[int, CommittedEvent]):
    def read(request):
        top = max(log) if request.upto is None else request.upto
        return [log[p] for p in sorted(log) if request.after < p <= top]

    return read


def test_holes_below_what_the_log_returned_are_stepped_over():
    # Positions 1, 2, 4 were superseded and compacted away; 3, 5, 6 are kept.
    log = {3: ev(3, "b", "b"), 5: ev(5, "a", "a3"), 6: ev(6, "c", "c")}
    seq = sequencer()
    run_sync(seq.poll(), reader(log))
    assert seq.applied == 6 and seq.holes_skipped == 3
    assert {i: it["name"] for i, it in seq.engine.items(T).items()} == {
        "a": "a3",
        "b": "b",
        "c": "c",
    }


def test_a_gap_the_doorbell_shows_is_waited_for_not_skipped():
    seq = sequencer()
    seq.offer([ev(3, "x", "x")])  # heard of 3, positions 1 and 2 not yet
    assert seq.applied == 0 and seq.gap() == (0, 3)
    # The log does not return 1 and 2 yet (a reader that lags): nothing is skipped...
    run_sync(seq.fill_gaps(), lambda request: [])
    assert seq.applied == 0 and seq.holes_skipped == 0
    # ...until a read of the log returns positions above them.
    run_sync(seq.fill_gaps(), reader({1: ev(1, "y", "y"), 3: ev(3, "x", "x")}))
    assert seq.applied == 3 and seq.holes_skipped == 1
