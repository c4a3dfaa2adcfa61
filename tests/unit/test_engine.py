"""Engine: live query diffs, windows, coalescing, indexes, sharing and reports (no Django)."""

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from myko_django.live.committed import CommittedEvent as Event
from myko_django.live.engine import Engine
from myko_django.live.filters import Filter, ItemSchema, compile_filter, field_key, filter_for_ids
from myko_django.live.updates import EngineError, QueryUpdate, ReportSpec, ReportUpdate
from myko_django.wire.envelope import WindowError

T = "Target"
SCHEMA = ItemSchema(
    T, {"id": "id", "name": "str", "category": "str", "n": "int", "price": "decimal"}
)
OTHER = ItemSchema("Scene", {"id": "id", "name": "str"})


def q(params=None):
    return compile_filter(SCHEMA, params or {}, op_name="GetTargetsByQuery")


def it(id, category="a", n=1, **kw):
    return {"id": id, "name": f"n{id}", "category": category, "n": n, **kw}


class Log:
    """Hands out gap-free positions, like the event log."""

    def __init__(self, start=0):
        self.pos = start

    def set(self, item, type=T):
        self.pos += 1
        return Event(self.pos, type, item["id"], "SET", item)

    def delete(self, id, type=T):
        self.pos += 1
        return Event(self.pos, type, id, "DEL", None)


def engine(items=(), position=0, scene=False):
    e = Engine({T: SCHEMA, "Scene": OTHER})
    e.load_store(T, list(items), position)
    if scene:
        e.load_store("Scene", [], position)
    return e


def for_tx(updates, tx, conn="c1"):
    return [u for u in updates if u.conn == conn and u.tx == tx]


def one(updates, tx, conn="c1"):
    got = for_tx(updates, tx, conn)
    assert len(got) == 1, got
    return got[0].to_wire() if isinstance(got[0], QueryUpdate) else got[0]


def ids_of(wire):
    return sorted(u["item"]["id"] for u in wire["upserts"])


# -- basic protocol ------------------------------------------------------------


def test_snapshot_of_empty_type_is_sequence_zero():
    e = engine()
    u = e.subscribe_query("c1", "t1", T, q(), None)
    assert u.to_wire() == {"tx": "t1", "sequence": 0, "upserts": [], "deletes": [], "totalCount": 0}


def test_snapshot_has_complete_result():
    e = engine([it("1"), it("2", "b")])
    w = e.subscribe_query("c1", "t1", T, q({"category": "a"}), None).to_wire()
    assert w["upserts"] == [{"item": it("1"), "itemType": T}]
    assert w["totalCount"] == 1 and w["deletes"] == []


def test_set_then_del_sequences():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    w = one(e.apply([log.set(it("1"))]), "t1")
    assert w == {
        "tx": "t1",
        "sequence": 1,
        "upserts": [{"item": it("1"), "itemType": T}],
        "deletes": [],
        "totalCount": 1,
    }
    w = one(e.apply([log.delete("1")]), "t1")
    assert w == {"tx": "t1", "sequence": 2, "upserts": [], "deletes": ["1"], "totalCount": 0}


def test_change_keeps_matching_leaves_and_unrelated():
    log = Log()
    e = engine([it("1"), it("2", "b")])
    e.subscribe_query("c1", "t1", T, q({"category": "a"}), None)
    w = one(e.apply([log.set(it("1", n=5))]), "t1")
    assert ids_of(w) == ["1"] and w["upserts"][0]["item"]["n"] == 5 and w["totalCount"] == 1
    assert e.apply([log.set(it("2", "b", n=9))]) == []  # unrelated
    w = one(e.apply([log.set(it("1", "b"))]), "t1")  # leaves the filter
    assert w["upserts"] == [] and w["deletes"] == ["1"] and w["totalCount"] == 0
    w = one(e.apply([log.set(it("2", "a"))]), "t1")  # enters
    assert ids_of(w) == ["2"] and w["totalCount"] == 1 and w["sequence"] == 3


def test_identical_set_sends_nothing():
    log = Log()
    e = engine([it("1")])
    e.subscribe_query("c1", "t1", T, q(), None)
    assert e.apply([log.set(it("1"))]) == []


def test_del_of_missing_id_is_noop():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    assert e.apply([log.delete("nope")]) == []


def test_duplicate_subscribe_ignored():
    e, log = engine(), Log()
    assert e.subscribe_query("c1", "t1", T, q(), None) is not None
    e.apply([log.set(it("1"))])
    assert e.subscribe_query("c1", "t1", T, q({"category": "z"}), None) is None
    w = one(e.apply([log.set(it("2"))]), "t1")
    assert w["sequence"] == 2  # not reset, filter unchanged
    assert e.subscribe_query("c2", "t1", T, q(), None) is not None  # other connection


def test_cancel_and_drop_connection_stop_updates():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    e.subscribe_query("c1", "t2", T, q({"category": "a"}), None)
    e.subscribe_query("c2", "t1", T, q(), None)
    e.cancel("c1", "t1")
    e.cancel("c1", "nope")  # unknown: no-op
    ups = e.apply([log.set(it("1"))])
    assert {(u.conn, u.tx) for u in ups} == {("c1", "t2"), ("c2", "t1")}
    e.drop_connection("c1")
    ups = e.apply([log.set(it("2"))])
    assert {(u.conn, u.tx) for u in ups} == {("c2", "t1")}
    e.drop_connection("c2")
    assert e.stats()["live_results"] == 0 and e.stats()["subscriptions"] == 0
    assert e.apply([log.set(it("3"))]) == []


def test_subscribe_requires_loaded_store():
    e = Engine({T: SCHEMA, "Scene": OTHER})
    with pytest.raises(EngineError, match="not loaded"):
        e.subscribe_query("c1", "t1", T, q(), None)
    e.load_store(T, [], 0)
    with pytest.raises(EngineError, match="already loaded"):
        e.load_store(T, [], 0)
    with pytest.raises(EngineError, match="unknown item type"):
        e.load_store("Nope", [], 0)


def test_store_position_and_ignored_events():
    log = Log(10)
    e = engine([it("1")], position=10)
    assert e.has_store(T) and not e.has_store("Scene")
    assert e.store_position(T) == 10 and e.store_position("Scene") is None
    e.subscribe_query("c1", "t1", T, q(), None)
    # At or below the store position: already in the snapshot.
    stale = [Event(9, T, "x", "SET", it("x")), Event(10, T, "1", "DEL", None)]
    assert e.apply(stale) == []
    assert set(e.items(T)) == {"1"}
    # Unloaded types are ignored.
    assert e.apply([log.set({"id": "s1", "name": "x"}, type="Scene")]) == []
    ev = log.set(it("2"))
    assert len(e.apply([ev])) == 1
    assert e.store_position(T) == ev.position
    assert e.apply([ev]) == []  # replay is idempotent


def test_items_view_is_read_only():
    e = engine([it("1")])
    view = e.items(T)
    assert view["1"] == it("1")
    with pytest.raises(TypeError):
        view["2"] = it("2")  # type: ignore[index]


def test_bad_event_does_not_break_batch():
    log = Log()
    e = engine()
    e.subscribe_query("c1", "t1", T, q(), None)
    bad = Event(log.pos + 1, T, "x", "SET", None)
    log.pos += 1
    weird = Event(log.pos + 1, T, "y", "PATCH", {"id": "y"})
    log.pos += 1
    w = one(e.apply([bad, weird, log.set(it("1"))]), "t1")
    assert ids_of(w) == ["1"]


def test_failing_custom_predicate_counts_as_no_match():
    log = Log()
    e = engine()

    def boom(item):
        if item["id"] == "bad":
            raise KeyError("x")
        return True

    e.subscribe_query("c1", "t1", T, Filter.from_predicate(boom, "boom"), None)
    w = one(e.apply([log.set(it("bad")), log.set(it("ok"))]), "t1")
    assert ids_of(w) == ["ok"]


# -- coalescing ------------------------------------------------------------------


def test_coalesce_set_set_to_final_state():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    w = one(e.apply([log.set(it("1", n=1)), log.set(it("1", n=2))]), "t1")
    assert w["upserts"] == [{"item": it("1", n=2), "itemType": T}]
    assert w["sequence"] == 1


def test_coalesce_set_del_of_new_item_sends_nothing():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    assert e.apply([log.set(it("1")), log.delete("1")]) == []


def test_coalesce_set_del_of_visible_item_is_delete():
    e, log = engine([it("1")]), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    w = one(e.apply([log.set(it("1", n=3)), log.delete("1")]), "t1")
    assert w["upserts"] == [] and w["deletes"] == ["1"]


def test_one_response_per_subscription_per_batch():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    ups = e.apply([log.set(it(str(i))) for i in range(5)] + [log.delete("0")])
    w = one(ups, "t1")
    assert ids_of(w) == ["1", "2", "3", "4"] and w["deletes"] == [] and w["totalCount"] == 4


# -- windows ----------------------------------------------------------------------


def items_n(*ids):
    return [it(i) for i in ids]


def test_window_orders_by_str_and_echoes():
    e = engine(items_n("9", "10", "100", "2", "1"))
    w = e.subscribe_query("c1", "t1", T, q(), {"offset": 0, "limit": 3}).to_wire()
    page = ["1", "10", "100"]
    assert [u["item"]["id"] for u in w["upserts"]] == page
    assert w["window"] == {"offset": 0, "limit": 3}
    assert w["totalCount"] == 5 and w["sequence"] == 0
    assert w["changes"] == [
        {"kind": "windowOrder", "ids": page, "total_count": 5, "window": {"offset": 0, "limit": 3}}
    ]


def test_move_window_diffs_pages():
    e = engine(items_n("a", "b", "c", "d", "e"))
    e.subscribe_query("c1", "t1", T, q(), {"offset": 0, "limit": 2})
    w = e.set_window("c1", "t1", {"offset": 1, "limit": 2}).to_wire()
    assert ids_of(w) == ["c"] and w["deletes"] == ["a"] and w["sequence"] == 1
    assert w["changes"][0]["ids"] == ["b", "c"] and w["window"] == {"offset": 1, "limit": 2}
    assert e.set_window("c1", "t1", {"offset": 1, "limit": 2}) is None  # same window
    assert e.set_window("c1", "nope", {"offset": 0, "limit": 1}) is None  # unknown tx


def test_remove_window_sends_newly_visible_rows():
    e = engine(items_n("a", "b", "c"))
    e.subscribe_query("c1", "t1", T, q(), {"offset": 0, "limit": 1})
    w = e.set_window("c1", "t1", None).to_wire()
    assert ids_of(w) == ["b", "c"] and w["deletes"] == [] and w["totalCount"] == 3
    assert "window" not in w and "changes" not in w
    assert e.set_window("c1", "t1", None) is None


def test_add_window_to_unwindowed_deletes_rows_off_page():
    e = engine(items_n("a", "b", "c"))
    e.subscribe_query("c1", "t1", T, q(), None)
    w = e.set_window("c1", "t1", {"offset": 1, "limit": 1}).to_wire()
    assert w["upserts"] == [] and w["deletes"] == ["a", "c"]
    assert w["changes"][0]["ids"] == ["b"]


def test_changes_outside_page_send_nothing():
    log = Log()
    e = engine(items_n("a", "b", "c", "d"))
    e.subscribe_query("c1", "t1", T, q(), {"offset": 0, "limit": 2})
    assert e.apply([log.set(it("d", n=7))]) == []  # changed off page
    assert e.apply([log.set(it("e")), log.delete("c")]) == []  # total unchanged, page unchanged


def test_insert_after_page_sends_total_only():
    log = Log()
    e = engine(items_n("a", "b"))
    e.subscribe_query("c1", "t1", T, q(), {"offset": 0, "limit": 2})
    w = one(e.apply([log.set(it("z"))]), "t1")
    assert w["upserts"] == [] and w["deletes"] == [] and w["totalCount"] == 3


def test_insert_before_page_shifts_page():
    log = Log()
    e = engine(items_n("b", "c", "d"))
    e.subscribe_query("c1", "t1", T, q(), {"offset": 1, "limit": 2})  # page c, d
    w = one(e.apply([log.set(it("a"))]), "t1")  # sorted a b c d -> page b, c
    assert ids_of(w) == ["b"] and w["deletes"] == ["d"] and w["totalCount"] == 4
    assert w["changes"][0]["ids"] == ["b", "c"]


def test_change_on_page_is_upsert():
    log = Log()
    e = engine(items_n("a", "b", "c"))
    e.subscribe_query("c1", "t1", T, q(), {"offset": 0, "limit": 2})
    w = one(e.apply([log.set(it("b", n=5))]), "t1")
    assert w["upserts"] == [{"item": it("b", n=5), "itemType": T}] and w["deletes"] == []


def test_bad_window_rejected():
    e = engine()
    for bad in ({"offset": -1, "limit": 2}, {"offset": 0}, {"offset": 0, "limit": True}, [0, 1]):
        with pytest.raises(WindowError):
            e.subscribe_query("c1", "t1", T, q(), bad)
    assert e.stats()["subscriptions"] == 0


# -- sharing and indexes ----------------------------------------------------------------


def test_identical_subscriptions_share_live_result_and_items():
    e, log = engine([it("1")]), Log()
    s = [e.subscribe_query(f"c{i}", "t", T, q({"category": "a"}), None) for i in range(3)]
    # A lone subscriber's snapshot is not kept; from the second on it is shared.
    assert s[1].upserts is s[2].upserts and s[0].upserts is not s[1].upserts
    w = [
        e.subscribe_query(f"w{i}", "t", T, q({"category": "a"}), {"offset": 0, "limit": 5})
        for i in range(2)
    ]
    assert w[0].upserts is w[1].upserts
    assert e.stats()["live_results"] == 1
    ups = e.apply([log.set(it("2"))])
    assert len(ups) == 5
    assert len({id(u.upserts) for u in ups}) == 1  # one item set -> one SharedItems
    assert [u.sequence for u in ups] == [1] * 5


def test_distinct_subscriptions_keep_no_snapshot_and_no_index_dicts():
    """Memory per distinct subscription: no kept copy of its sequence 0, and an index key
    with one live result holds it bare; a second result on the key shares a dict."""
    e = engine([it("1", category="a"), it("2", category="b")])
    e.subscribe_query("c1", "t", T, q({"category": "a"}), None)
    live = next(iter(e._lives.values()))  # noqa: SLF001
    assert live.snapshot is None and live.windows is None and live.counts is None
    key = field_key("str", "a")
    assert e._by_field[T]["category"][key] is live  # noqa: SLF001
    starts_x = {"kind": "startsWith", "value": "x"}  # not an equality: indexed by category
    e.subscribe_query("c1", "t2", T, q({"category": "a", "name": starts_x}), None)
    assert len(e._by_field[T]["category"][key]) == 2  # noqa: SLF001
    e.cancel("c1", "t2")
    assert e._by_field[T]["category"][key] is live  # noqa: SLF001
    e.cancel("c1", "t")
    assert not e._by_field  # noqa: SLF001


def test_shared_items_across_different_filters_same_batch():
    e, log = engine(), Log()
    e.subscribe_query("c1", "t1", T, q(), None)
    e.subscribe_query("c1", "t2", T, q({"category": "a"}), None)
    ups = e.apply([log.set(it("1"))])
    assert len(ups) == 2 and ups[0].upserts is ups[1].upserts


def test_index_on_equality_field_visits_only_matching_results():
    log = Log()
    e = engine()
    for i in range(50):
        e.subscribe_query("c", f"cat{i}", T, q({"category": f"c{i}"}), None)
    e.subscribe_query("c", "byid", T, filter_for_ids(SCHEMA, ["zz"]), None)
    before = e.predicate_evaluations
    ups = e.apply([log.set(it("1", "c7"))])
    assert [u.tx for u in ups] == ["cat7"]
    assert e.predicate_evaluations - before == 1
    before = e.predicate_evaluations
    ups = e.apply([log.set(it("1", "c8"))])  # moves: old result told, new one evaluated
    assert {u.tx for u in ups} == {"cat7", "cat8"}
    assert e.predicate_evaluations - before == 1
    before = e.predicate_evaluations
    assert e.apply([log.set(it("2", "elsewhere"))]) == []
    assert e.predicate_evaluations - before == 0


def test_index_on_id_and_scan_list():
    log = Log()
    e = engine()
    e.subscribe_query("c", "ids", T, filter_for_ids(SCHEMA, ["1", "2"]), None)
    e.subscribe_query("c", "one", T, q({"id": "3"}), None)
    e.subscribe_query("c", "scan", T, q({"n": {"kind": "range", "value": {"min": 5}}}), None)
    before = e.predicate_evaluations
    ups = e.apply([log.set(it("2", n=1))])
    assert [u.tx for u in ups] == ["ids"]
    assert e.predicate_evaluations - before == 2  # the id result and the scanned one
    ups = e.apply([log.set(it("9", n=6))])
    assert [u.tx for u in ups] == ["scan"]


def test_empty_id_set_next_to_other_id_results_cancels_cleanly():
    """An empty id set matches nothing; released after another id result of its type, it
    must not look for an index entry that went with the other one."""
    log = Log()
    e = engine([it("1")])
    e.subscribe_query("c", "one", T, filter_for_ids(SCHEMA, ["1"]), None)
    e.subscribe_query("c", "none", T, filter_for_ids(SCHEMA, []), None)
    e.subscribe_query("c", "in-none", T, q({"id": {"kind": "in", "value": []}}), None)
    assert e.apply([log.set(it("2"))]) == []
    e.cancel("c", "one")
    e.cancel("c", "none")
    e.drop_connection("c")
    assert e.stats()["subscriptions"] == 0 and e.stats()["live_results"] == 0


def test_in_empty_is_never_visited():
    log = Log()
    e = engine([it("1")])
    u = e.subscribe_query("c", "t", T, q({"category": {"kind": "in", "value": []}}), None)
    assert u.total_count == 0
    before = e.predicate_evaluations
    assert e.apply([log.set(it("2"))]) == []
    assert e.predicate_evaluations == before


def test_memory_per_extra_subscriber_is_small():
    e = engine([it(str(i)) for i in range(200)])
    flt = q({"category": "a"})
    e.subscribe_query("c0", "t", T, flt, None)
    e.subscribe_query("w0", "t", T, flt, {"offset": 0, "limit": 20})
    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        keep = []
        for i in range(1, 501):
            keep.append(e.subscribe_query(f"c{i}", "t", T, flt, None))
            keep.append(e.subscribe_query(f"w{i}", "t", T, flt, {"offset": 0, "limit": 20}))
        keep.clear()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(base, "filename"))
    assert grown / 1000 < 2048, grown / 1000


# -- reports ------------------------------------------------------------------------


def test_count_reports():
    log = Log()
    e = engine([it("1"), it("2", "b")])
    r = e.subscribe_report("c1", "r1", ReportSpec.count(T, q()))
    assert isinstance(r, ReportUpdate) and r.value == {"count": 2}
    r = e.subscribe_report("c1", "r2", ReportSpec.count(T, q({"category": "a"})))
    assert r.value == {"count": 1}
    ups = e.apply([log.set(it("3", "b"))])
    assert [(u.tx, u.value) for u in ups] == [("r1", {"count": 3})]
    assert e.apply([log.set(it("3", "b", n=8))]) == []  # no count change
    # Same totals: r1 gains 4 and loses 1, r2 swaps 1 for 3.
    ups = e.apply([log.set(it("3", "a")), log.set(it("4", "b")), log.delete("1")])
    assert ups == []


def test_get_by_id_report():
    log = Log()
    e = engine()
    assert e.subscribe_report("c1", "r", ReportSpec.by_id(T, "1")).value is None
    assert e.apply([log.set(it("2"))]) == []
    assert one(e.apply([log.set(it("1"))]), "r").value == it("1")
    assert e.apply([log.set(it("1"))]) == []  # same value
    assert one(e.apply([log.set(it("1", n=2))]), "r").value == it("1", n=2)
    assert one(e.apply([log.delete("1")]), "r").value is None


def test_custom_report_recomputes_only_for_its_types_and_sends_on_change():
    log = Log()
    e = engine(scene=True)
    calls = []

    def total_n(engine):
        calls.append(1)
        return sum(x["n"] for x in engine.items(T).values())

    spec = ReportSpec.custom("total_n", (T,), total_n)
    assert e.subscribe_report("c1", "r", spec).value == 0
    assert e.subscribe_report("c2", "r", ReportSpec.custom("total_n", (T,), total_n)).value == 0
    assert len(calls) == 1  # shared computation
    ups = e.apply([log.set(it("1", n=1))])
    assert sorted((u.conn, u.value) for u in ups) == [("c1", 1), ("c2", 1)]
    assert len(calls) == 2
    assert e.apply([log.set({"id": "s", "name": "x"}, type="Scene")]) == []
    assert len(calls) == 2  # other type: not recomputed
    assert e.apply([log.set(it("1", "b", n=1))]) == []  # recomputed, same value
    assert len(calls) == 3
    ups = e.apply([log.set(it("2", n=1.0)), log.delete("1")])  # 1.0 == 1 numerically
    assert ups == []


def test_custom_report_strict_value_compare_and_failure():
    log = Log()
    e = engine()
    state = {"v": 1, "fail": False}

    def compute(engine):
        if state["fail"]:
            raise RuntimeError("boom")
        return state["v"]

    e.subscribe_report("c1", "r", ReportSpec.custom("k", (T,), compute))
    e.subscribe_query("c1", "q", T, q(), None)
    state["v"] = True
    assert [u.value for u in e.apply([log.set(it("1"))]) if u.tx == "r"] == [True]
    state["fail"] = True
    ups = e.apply([log.set(it("2"))])  # report fails, the query still updates
    assert [u.tx for u in ups] == ["q"]


def test_report_replaces_same_tx_and_cancel():
    log = Log()
    e = engine([it("1")])
    e.subscribe_query("c1", "t", T, q(), None)
    r = e.subscribe_report("c1", "t", ReportSpec.count(T, q()))  # replaces the query
    assert r.value == {"count": 1}
    assert e.subscribe_report("c1", "t", ReportSpec.count(T, q())).value == {"count": 1}
    r = e.subscribe_report("c1", "t", ReportSpec.by_id(T, "1"))
    assert r.value == it("1")
    ups = e.apply([log.set(it("2"))])
    assert ups == []
    e.cancel("c1", "t")
    assert e.apply([log.delete("1")]) == []
    assert e.stats() == {
        "stores": 1,
        "live_results": 0,
        "subscriptions": 0,
        "report_groups": 0,
        "predicate_evaluations": e.predicate_evaluations,
    }
    assert e.subscribe_query("c1", "t", T, q(), None) is not None
    with pytest.raises(EngineError):
        e.subscribe_report("c1", "x", ReportSpec.custom("k", ("Scene",), lambda en: 1))
    assert e.unload_store(T) is False
    e.cancel("c1", "t")
    assert e.unload_store(T) is True


# -- property: subscriber state equals the filtered final store ---------------------------

IDS = ["1", "2", "3", "10", "11", "20", "9", "a", "b"]
CATS = ["a", "b", "c"]

item_st = st.builds(
    lambda id, cat, n: {"id": id, "name": "x", "category": cat, "n": n},
    st.sampled_from(IDS),
    st.sampled_from(CATS + [None]),
    st.integers(0, 3),
)
event_st = st.one_of(
    st.tuples(st.just("SET"), item_st),
    st.tuples(st.just("DEL"), st.sampled_from(IDS)),
)
params_st = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"category": st.sampled_from(CATS)}),
    st.fixed_dictionaries({"id": st.sampled_from(IDS)}),
    st.fixed_dictionaries({"category": st.sampled_from(CATS), "n": st.integers(0, 3)}),
    st.fixed_dictionaries(
        {"n": st.fixed_dictionaries({"kind": st.just("range"), "value": st.just({"min": 2})})}
    ),
    st.fixed_dictionaries(
        {
            "id": st.fixed_dictionaries(
                {"kind": st.just("in"), "value": st.lists(st.sampled_from(IDS), max_size=4)}
            )
        }
    ),
)
window_st = st.one_of(
    st.none(),
    st.builds(lambda o, n: {"offset": o, "limit": n}, st.integers(0, 4), st.integers(0, 4)),
)


def expected(store, params, window):
    def ok(x):
        for k, v in params.items():
            if isinstance(v, dict) and v["kind"] == "range":
                if x.get(k) is None or x[k] < v["value"]["min"]:
                    return False
            elif isinstance(v, dict) and v["kind"] == "in":
                if x.get(k) not in v["value"]:
                    return False
            elif x.get(k) != v:
                return False
        return True

    rows = sorted(i for i, x in store.items() if ok(x))
    total = len(rows)
    if window is not None:
        rows = rows[window["offset"] : window["offset"] + window["limit"]]
    return {i: store[i] for i in rows}, total


class Client:
    def __init__(self):
        self.state, self.seq, self.total = {}, None, None

    def feed(self, u):
        w = u.to_wire()
        before = (dict(self.state), self.total)
        if w["sequence"] == 0:
            assert self.seq is None
            self.state = {}
        else:
            assert w["sequence"] == self.seq + 1
        self.seq = w["sequence"]
        for d in w["deletes"]:
            self.state.pop(d, None)
        for up in w["upserts"]:
            assert up["itemType"] == T
            self.state[up["item"]["id"]] = up["item"]
        self.total = w["totalCount"]
        if "changes" in w:
            assert w["changes"][0]["ids"] == sorted(self.state)
        return before != (self.state, self.total)


@settings(max_examples=150, deadline=None)
@given(
    initial=st.lists(item_st, max_size=6),
    subs=st.lists(st.tuples(params_st, window_st), min_size=1, max_size=5),
    batches=st.lists(st.lists(event_st, min_size=1, max_size=4), max_size=6),
    moves=st.lists(window_st, max_size=6),
)
def test_property_subscriber_state_matches_store(initial, subs, batches, moves):
    store = {x["id"]: x for x in initial}
    e = engine(store.values())
    log = Log()
    clients, windows = [], []
    for n, (params, window) in enumerate(subs):
        c = Client()
        c.feed(e.subscribe_query("c", str(n), T, q(params), window))
        clients.append(c)
        windows.append(window)
    for step, batch in enumerate(batches):
        events = []
        for kind, x in batch:
            if kind == "SET":
                events.append(log.set(x))
                store[x["id"]] = x
            else:
                events.append(log.delete(x))
                store.pop(x, None)
        for u in e.apply(events):
            assert clients[int(u.tx)].feed(u), "a response that changes nothing visible"
        if step < len(moves):  # move the first subscriber's window
            u = e.set_window("c", "0", moves[step])
            if u is not None:
                clients[0].feed(u)
                windows[0] = moves[step]
            else:
                assert moves[step] == windows[0]
        for n, (params, _) in enumerate(subs):
            want, total = expected(store, params, windows[n])
            assert clients[n].state == want
            assert clients[n].total == total


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["SET", "DEL"]),
            st.sampled_from(["1", "2", "3", "4", "5"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from([1, 1.0, 2, "1", True]),
        ),
        max_size=25,
    ),
    st.sampled_from([{"category": "a"}, {"category": "b", "n": 1}, {"n": 1}, {"n": 1.0}]),
)
def test_new_subscription_through_the_store_index_equals_a_scan(ops, params):
    """A new live result on a large store looks its equality field up in an index kept
    current by every event; it must find exactly what scanning the store finds."""
    import myko_django.live.engine as core

    indexed, scanned, log = engine(), engine(), Log()
    scanned_events = []
    # Build the index early on `indexed` (threshold 0), then let events maintain it.
    old = core.INDEX_STORES_FROM
    core.INDEX_STORES_FROM = 0
    try:
        indexed.subscribe_query("warm", "t", T, q(params), None)
        for change, id, category, n in ops:
            ev = (
                log.set({"id": id, "name": "x", "category": category, "n": n, "price": None})
                if change == "SET"
                else log.delete(id)
            )
            scanned_events.append(ev)
            indexed.apply([ev])
        indexed.cancel("warm", "t")  # the index stays with the store; the live result goes
        assert indexed._stores[T].by_field  # noqa: SLF001
        got = indexed.subscribe_query("new", "t", T, q(params), None)
    finally:
        core.INDEX_STORES_FROM = old
    scanned.apply(scanned_events)
    want = scanned.subscribe_query("new", "t", T, q(params), None)
    assert sorted(i["id"] for i in got.upserts.items) == sorted(i["id"] for i in want.upserts.items)


def test_a_report_reads_only_the_types_it_depends_on():
    """A type a report did not declare would be neither filtered for the user nor
    recomputed when it changes: reading it is an error, not a silently stale value."""
    e = engine([it("1")], scene=True)
    sneaky = ReportSpec.custom("sneaky", (T,), lambda view: len(view.items("Scene")))
    with pytest.raises(KeyError, match="not in its depends"):
        e.subscribe_report("c", "r", sneaky)
    honest = ReportSpec.custom("honest", (T,), lambda view: len(view.items(T)))
    assert e.subscribe_report("c", "r", honest).value == 1
