"""Row visibility in the live engine (issue 9): a user's row filter combined with every query,
count, window, by-id and custom report, and live results shared by users who see the same
rows (no Django)."""

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import myko_django.live.engine as core
from myko_django.live.committed import CommittedEvent as Event
from myko_django.live.engine import Engine
from myko_django.live.filters import Filter, ItemSchema, both, compile_filter
from myko_django.live.updates import QueryUpdate, ReportSpec
from myko_django.live.visibility import VisibleItems, visible_item

T = "Target"
SCHEMA = ItemSchema(T, {"id": "id", "name": "str", "category": "str", "ownerId": "fk", "n": "int"})
SCENE = ItemSchema("Scene", {"id": "id", "name": "str"})


def q(params=None):
    return compile_filter(SCHEMA, params or {}, op_name="GetTargetsByQuery")


def owner(user):
    """The row filter of `user`: their own Targets (compiled anew, as per request)."""
    return compile_filter(SCHEMA, {"ownerId": user}, op_name="Target visibility")


def it(id, owner="a", category="x", n=1):
    return {"id": id, "name": f"n{id}", "category": category, "ownerId": owner, "n": n}


class Log:
    def __init__(self):
        self.pos = 0

    def set(self, item, type=T):
        self.pos += 1
        return Event(self.pos, type, item["id"], "SET", item)

    def delete(self, id, type=T):
        self.pos += 1
        return Event(self.pos, type, id, "DEL", None)


def engine(items=(), scenes=()):
    e = Engine({T: SCHEMA, "Scene": SCENE})
    e.load_store(T, list(items), 0)
    e.load_store("Scene", list(scenes), 0)
    return e


def wire(updates, conn, tx="t"):
    got = [u for u in updates if u.conn == conn and u.tx == tx]
    assert len(got) <= 1, got
    if not got:
        return None
    return got[0].to_wire() if isinstance(got[0], QueryUpdate) else got[0].value


def upserted(w):
    return sorted(u["item"]["id"] for u in w["upserts"])


# -- queries --------------------------------------------------------------------------------


def test_row_leaving_visibility_is_a_delete_and_entering_it_an_upsert():
    log = Log()
    e = engine([it("1", "a"), it("2", "b"), it("3", "a", category="y")])
    snap_a = e.subscribe_query("A", "t", T, both(q({"category": "x"}), owner("a")), None)
    snap_b = e.subscribe_query("B", "t", T, both(q({"category": "x"}), owner("b")), None)
    assert upserted(snap_a.to_wire()) == ["1"] and snap_a.total_count == 1
    assert upserted(snap_b.to_wire()) == ["2"] and snap_b.total_count == 1

    ups = e.apply([log.set(it("1", "b"))])  # 1 goes from a to b
    a, b = wire(ups, "A"), wire(ups, "B")
    assert a["deletes"] == ["1"] and a["upserts"] == [] and a["totalCount"] == 0
    assert upserted(b) == ["1"] and b["deletes"] == [] and b["totalCount"] == 2

    ups = e.apply([log.set(it("3", "a", category="x"))])  # into the query, a's row
    assert upserted(wire(ups, "A")) == ["3"] and wire(ups, "B") is None

    ups = e.apply([log.set(it("2", "b", n=5))])  # stays visible to b only
    assert wire(ups, "A") is None and upserted(wire(ups, "B")) == ["2"]

    ups = e.apply([log.set(it("1", "b", category="y"))])  # out of the query, still b's
    assert wire(ups, "A") is None and wire(ups, "B")["deletes"] == ["1"]

    ups = e.apply([log.delete("3")])
    assert wire(ups, "A")["deletes"] == ["3"] and wire(ups, "B") is None


def test_same_visibility_shares_one_live_result_different_does_not():
    log = Log()
    e = engine([it("1", "a"), it("2", "b")])
    # Users a1 and a2 see the same rows (their team's, say): filters compiled separately.
    e.subscribe_query("a1", "t", T, both(q({"category": "x"}), owner("a")), None)
    e.subscribe_query("a2", "t", T, both(q({"category": "x"}), owner("a")), None)
    assert e.stats()["live_results"] == 1
    e.subscribe_query("b1", "t", T, both(q({"category": "x"}), owner("b")), None)
    assert e.stats()["live_results"] == 2
    e.subscribe_query("everyone", "t", T, q({"category": "x"}), None)  # no row filter
    assert e.stats()["live_results"] == 3
    ups = e.apply([log.set(it("1", "a", n=2))])
    assert sorted(u.conn for u in ups) == ["a1", "a2", "everyone"]
    shared = {id(u.upserts) for u in ups}
    assert len(shared) == 1  # the item is listed once for all who receive it
    e.drop_connection("a1")
    assert e.stats()["live_results"] == 3
    e.drop_connection("a2")
    assert e.stats()["live_results"] == 2


def test_total_counts_only_visible_rows_and_count_reports():
    log = Log()
    e = engine([it("1", "a"), it("2", "b"), it("3", "a")])
    snap = e.subscribe_query("A", "q", T, q(), None)
    assert snap.total_count == 3
    snap = e.subscribe_query("A", "t", T, both(q(), owner("a")), None)
    assert snap.total_count == 2
    count_a = ReportSpec.count(T, both(q(), owner("a")))
    count_b = ReportSpec.count(T, both(q(), owner("b")))
    assert count_a.key != count_b.key
    assert e.subscribe_report("A", "c", count_a).value == {"count": 2}
    assert e.subscribe_report("B", "c", count_b).value == {"count": 1}
    assert e.subscribe_report("A2", "c", ReportSpec.count(T, both(q(), owner("a")))).value == {
        "count": 2
    }
    assert e.stats()["report_groups"] == 2
    ups = e.apply([log.set(it("2", "a"))])
    assert wire(ups, "A", "c") == {"count": 3} and wire(ups, "A2", "c") == {"count": 3}
    assert wire(ups, "B", "c") == {"count": 0}
    assert wire(ups, "A")["totalCount"] == 3
    assert wire(ups, "A", "q")["totalCount"] == 3
    ups = e.apply([log.set(it("2", "a", n=7))])  # visible change, no count change
    assert wire(ups, "A", "c") is None and wire(ups, "B", "c") is None


def test_windows_page_over_visible_rows():
    log = Log()
    rows = [it(str(i), "a" if i % 2 else "b") for i in range(1, 9)]  # a: 1 3 5 7; b: 2 4 6 8
    e = engine(rows)
    w = e.subscribe_query("A", "t", T, both(q(), owner("a")), {"offset": 1, "limit": 2})
    w = w.to_wire()
    assert upserted(w) == ["3", "5"] and w["totalCount"] == 4
    assert w["changes"][0]["ids"] == ["3", "5"]
    ups = e.apply([log.set(it("2", "a"))])  # enters before the page: shifts it
    w = wire(ups, "A")
    assert upserted(w) == ["2"] and w["deletes"] == ["5"] and w["totalCount"] == 5
    assert w["changes"][0]["ids"] == ["2", "3"]
    ups = e.apply([log.set(it("8", "a"))])  # enters after the page: the total only
    w = wire(ups, "A")
    assert w["upserts"] == [] and w["deletes"] == [] and w["totalCount"] == 6
    ups = e.apply([log.set(it("4", "b", n=3))])  # not visible: nothing
    assert ups == []
    ups = e.apply([log.set(it("1", "b"))])  # leaves before the page
    w = wire(ups, "A")
    assert upserted(w) == ["5"] and w["deletes"] == ["2"] and w["totalCount"] == 5
    assert w["changes"][0]["ids"] == ["3", "5"]


# -- by-id reports ------------------------------------------------------------------------


def test_get_by_id_is_the_item_only_while_visible():
    log = Log()
    e = engine([it("1", "a")])
    spec_a = ReportSpec.by_id(T, "1", visible=owner("a"))
    spec_b = ReportSpec.by_id(T, "1", visible=owner("b"))
    assert spec_a.key != spec_b.key != ReportSpec.by_id(T, "1").key
    assert ReportSpec.by_id(T, "1").key == ("by_id", T, "1")
    assert e.subscribe_report("A", "r", spec_a).value == it("1", "a")
    assert e.subscribe_report("A2", "r", ReportSpec.by_id(T, "1", owner("a"))).value == it("1")
    assert e.subscribe_report("B", "r", spec_b).value is None
    assert e.subscribe_report("Z", "r", ReportSpec.by_id(T, "1")).value == it("1", "a")
    assert e.stats()["report_groups"] == 3  # A and A2 share

    ups = e.apply([log.set(it("1", "b"))])
    assert [u.value for u in ups if u.conn == "A"] == [None]
    assert [u.value for u in ups if u.conn == "A2"] == [None]
    assert wire(ups, "B", "r") == it("1", "b") and wire(ups, "Z", "r") == it("1", "b")

    ups = e.apply([log.set(it("1", "b", n=2))])  # still hidden from a: nothing for a
    assert sorted(u.conn for u in ups) == ["B", "Z"]

    ups = e.apply([log.set(it("1", "a", n=2))])
    assert wire(ups, "A", "r") == it("1", "a", n=2)
    assert [u.value for u in ups if u.conn == "B"] == [None]

    ups = e.apply([log.delete("1")])
    assert [u.value for u in ups if u.conn == "A"] == [None]
    assert sorted(u.conn for u in ups if u.value is None) == ["A", "A2", "Z"]  # B had None


def test_visibility_predicate_that_raises_hides_the_item():
    def boom(item):
        raise RuntimeError("visibility bug")

    bad = Filter.from_predicate(boom, "boom")
    e = engine([it("1")])
    assert visible_item(bad, it("1")) is None and visible_item(None, it("1")) == it("1")
    assert e.subscribe_report("A", "r", ReportSpec.by_id(T, "1", bad)).value is None
    spec = ReportSpec.custom("n", (T,), lambda v: len(v.items(T)), visible={T: bad})
    assert e.subscribe_report("A", "c", spec).value == 0
    assert e.apply([Event(1, T, "1", "SET", it("1", n=2))]) == []


# -- custom reports -----------------------------------------------------------------------


def total_n(view):
    return sum(x["n"] for x in view.items(T).values())


def test_custom_report_sees_only_visible_rows_and_shares_by_visibility():
    log = Log()
    e = engine([it("1", "a", n=1), it("2", "b", n=10)], scenes=[{"id": "s", "name": "s"}])
    calls = []

    def compute(view):
        calls.append(1)
        return {"n": total_n(view), "scenes": len(view.items("Scene"))}

    def spec(user):
        return ReportSpec.custom(("total", ()), (T, "Scene"), compute, visible={T: owner(user)})

    assert spec("a").key != spec("b").key
    assert spec("a").key == spec("a").key
    assert ReportSpec.custom("k", (T,), compute, visible={}).key == ("custom", "k")
    assert ReportSpec.custom("k", (T,), compute, visible={T: None}).visible is None
    assert e.subscribe_report("A", "r", spec("a")).value == {"n": 1, "scenes": 1}
    assert e.subscribe_report("A2", "r", spec("a")).value == {"n": 1, "scenes": 1}
    assert e.subscribe_report("B", "r", spec("b")).value == {"n": 10, "scenes": 1}
    everything = ReportSpec.custom(("total", ()), (T, "Scene"), compute)
    assert e.subscribe_report("Z", "r", everything).value == {"n": 11, "scenes": 1}
    assert e.stats()["report_groups"] == 3 and len(calls) == 3

    ups = e.apply([log.set(it("2", "a", n=10))])  # b's row moves to a
    assert {u.conn: u.value["n"] for u in ups} == {"A": 11, "A2": 11, "B": 0}
    ups = e.apply([log.set(it("3", "b", n=5))])
    assert {u.conn: u.value["n"] for u in ups} == {"B": 5, "Z": 16}
    ups = e.apply([log.set({"id": "t", "name": "t"}, type="Scene")])  # no row filter
    assert {u.conn: u.value["scenes"] for u in ups} == {"A": 2, "A2": 2, "B": 2, "Z": 2}


def test_custom_report_view_is_a_read_only_filter_over_the_store():
    e = engine([it("1", "a", n=1), it("2", "b", n=2), it("3", "a", n=3)])
    seen = {}

    def compute(view):
        items = view.items(T)
        assert view.items(T) is items  # one per type per computation
        seen["items"] = items
        assert isinstance(items, Mapping) and isinstance(items, VisibleItems)
        assert len(items) == 2 and sorted(items) == ["1", "3"] and list(items.keys()) == ["1", "3"]
        assert "1" in items and "2" not in items and "nope" not in items
        assert items["1"] == it("1", "a", n=1) and items.get("2") is None
        with pytest.raises(KeyError):
            items["2"]
        with pytest.raises(TypeError):
            items["9"] = it("9")  # type: ignore[index]
        assert dict(items.items()) == {"1": it("1", "a", n=1), "3": it("3", "a", n=3)}
        assert [x["id"] for x in items.values()] == ["1", "3"] and len(items.values()) == 2
        assert items == {"1": it("1", "a", n=1), "3": it("3", "a", n=3)}
        assert "2 of 3" in repr(items)
        return sum(x["n"] for x in items.values())

    before = e.predicate_evaluations
    spec = ReportSpec.custom("sum", (T,), compute, visible={T: owner("a")})
    assert e.subscribe_report("A", "r", spec).value == 4
    assert e.predicate_evaluations == before  # reports scan; they are no live result
    # Nothing copied: the view reads the engine's store.
    assert seen["items"]._items is not None  # noqa: SLF001
    assert dict(seen["items"]._items) == dict(e.items(T))  # noqa: SLF001


# -- indexing ------------------------------------------------------------------------------


def test_users_row_filters_on_one_query_do_not_all_share_one_index_slot():
    """100 users on one query, each with their own rows: a touched item is tested against
    the live results of its owner (and one more), not against every user's."""
    log = Log()
    e = engine([it(str(i), f"u{i % 100}") for i in range(300)])
    for u in range(100):
        e.subscribe_query(f"c{u}", "t", T, both(q({"category": "x"}), owner(f"u{u}")), None)
    assert e.stats()["live_results"] == 100
    before = e.predicate_evaluations
    ups = e.apply([log.set(it("5", "u5", n=9))])
    assert [u.conn for u in ups] == ["c5"]
    assert e.predicate_evaluations - before <= 2
    ups = e.apply([log.set(it("5", "u6", n=9))])  # from u5 to u6
    assert sorted(u.conn for u in ups) == ["c5", "c6"]
    assert e.predicate_evaluations - before <= 5
    for u in range(100):
        e.cancel(f"c{u}", "t")
    assert e.stats()["live_results"] == 0 and not e._by_field  # noqa: SLF001


# -- property: every user's live state equals a brute-force scan ---------------------------

IDS = ["1", "2", "3", "10", "11", "a", "b"]
CATS = ["x", "y", "z"]
OWNERS = ["u1", "u2", "u3"]

item_st = st.builds(
    lambda id, cat, who, n: {"id": id, "name": "nm", "category": cat, "ownerId": who, "n": n},
    st.sampled_from(IDS),
    st.sampled_from(CATS + [None]),
    st.sampled_from(OWNERS + [None]),
    st.integers(0, 3),
)
event_st = st.one_of(
    st.tuples(st.just("SET"), item_st),
    st.tuples(st.just("DEL"), st.sampled_from(IDS)),
)
query_st = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"category": st.sampled_from(CATS)}),
    st.fixed_dictionaries({"ownerId": st.sampled_from(OWNERS)}),
    st.fixed_dictionaries({"id": st.sampled_from(IDS)}),
    st.fixed_dictionaries({"category": st.sampled_from(CATS), "n": st.integers(0, 3)}),
    st.fixed_dictionaries(
        {"n": st.fixed_dictionaries({"kind": st.just("range"), "value": st.just({"min": 2})})}
    ),
)
# A user's visibility: everything (None), own rows, some categories, some ids, own rows in
# one category, or a predicate (no index hints).
visibility_st = st.one_of(
    st.none(),
    st.fixed_dictionaries({"ownerId": st.sampled_from(OWNERS)}),
    st.fixed_dictionaries(
        {
            "category": st.fixed_dictionaries(
                {"kind": st.just("in"), "value": st.lists(st.sampled_from(CATS), max_size=2)}
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "id": st.fixed_dictionaries(
                {"kind": st.just("in"), "value": st.lists(st.sampled_from(IDS), max_size=4)}
            )
        }
    ),
    st.fixed_dictionaries({"ownerId": st.sampled_from(OWNERS), "category": st.sampled_from(CATS)}),
    st.sampled_from(["n>=2"]),
)
window_st = st.one_of(
    st.none(),
    st.builds(lambda o, n: {"offset": o, "limit": n}, st.integers(0, 3), st.integers(1, 3)),
)


def _model_match(params, x):
    """The brute-force reading of a query or visibility spec (what the filters mean)."""
    if params is None:
        return True
    if params == "n>=2":
        return x["n"] >= 2
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


def _visibility(spec):
    if spec is None:
        return None
    if spec == "n>=2":
        return Filter.from_predicate(lambda x: x["n"] >= 2, "n>=2")
    return compile_filter(SCHEMA, spec, op_name="Target visibility")


class Client:
    def __init__(self):
        self.state, self.seq, self.total = {}, None, None

    def feed(self, u):
        w = u.to_wire()
        if w["sequence"] == 0:
            assert self.seq is None
        else:
            assert w["sequence"] == self.seq + 1
        self.seq = w["sequence"]
        for d in w["deletes"]:
            self.state.pop(d, None)
        for up in w["upserts"]:
            self.state[up["item"]["id"]] = up["item"]
        self.total = w["totalCount"]


@settings(max_examples=150, deadline=None)
@given(
    initial=st.lists(item_st, max_size=7),
    users=st.lists(visibility_st, min_size=1, max_size=4),
    subs=st.lists(
        st.tuples(st.integers(0, 3), query_st, window_st, st.sampled_from(IDS)),
        min_size=1,
        max_size=6,
    ),
    batches=st.lists(st.lists(event_st, min_size=1, max_size=4), max_size=6),
    store_index=st.booleans(),
)
def test_property_visible_live_state_equals_a_scan(initial, users, subs, batches, store_index):
    """For random items, events and users' visibility, each subscriber's query (whole or a
    window), count, by-id and custom report equal scanning the store with the query and the
    user's visibility; subscriptions with equal keys share one live result. `store_index`:
    new live results find their candidates through the store index, as on a large store."""
    old = core.INDEX_STORES_FROM
    core.INDEX_STORES_FROM = 0 if store_index else old
    try:
        _visible_live_state_equals_a_scan(initial, users, subs, batches)
    finally:
        core.INDEX_STORES_FROM = old


def _visible_live_state_equals_a_scan(initial, users, subs, batches):
    store = {x["id"]: x for x in initial}
    e = engine(store.values())
    log = Log()
    clients, reports, plan = [], {}, []
    for n, (who, params, window, by_id) in enumerate(subs):
        vis_spec = users[who % len(users)]
        visible = _visibility(vis_spec)
        c = Client()
        c.feed(e.subscribe_query(n, "q", T, both(q(params), visible), window))
        clients.append(c)
        plan.append((vis_spec, params, window, by_id))
        specs = {
            "count": ReportSpec.count(T, both(q(params), visible)),
            "by_id": ReportSpec.by_id(T, by_id, visible),
            "custom": ReportSpec.custom(
                "ids", (T,), lambda v: sorted(v.items(T)), None if visible is None else {T: visible}
            ),
        }
        for kind, spec in specs.items():
            reports[(n, kind)] = e.subscribe_report(n, kind, spec).value

    # Equal (query, visibility) keys share one live result; distinct keys do not.
    keys = {both(q(p), _visibility(v)).key for v, p, _, _ in plan}
    assert e.stats()["live_results"] == len(keys)

    def check():
        for n, (vis_spec, params, window, by_id) in enumerate(plan):
            seen = {i: x for i, x in store.items() if _model_match(vis_spec, x)}
            rows = sorted(i for i, x in seen.items() if _model_match(params, x))
            page = rows if window is None else rows[window["offset"] :][: window["limit"]]
            assert clients[n].state == {i: store[i] for i in page}, (n, vis_spec, params)
            assert clients[n].total == len(rows)
            assert reports[(n, "count")] == {"count": len(rows)}
            assert reports[(n, "by_id")] == seen.get(by_id)
            assert reports[(n, "custom")] == sorted(seen)

    check()
    for batch in batches:
        events = []
        for kind, x in batch:
            if kind == "SET":
                events.append(log.set(x))
                store[x["id"]] = x
            else:
                events.append(log.delete(x))
                store.pop(x, None)
        for u in e.apply(events):
            if isinstance(u, QueryUpdate):
                clients[u.conn].feed(u)
            else:
                reports[(u.conn, u.tx)] = u.value
        check()
