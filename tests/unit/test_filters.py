"""Query filters: strict equality, filter objects, validation messages, index hints."""

import pytest

from myko_django.live.filters import (
    Filter,
    FilterError,
    FilterKeyError,
    ItemSchema,
    compile_filter,
    field_key,
    filter_for_ids,
    strict_equal,
    value_key,
)

SCHEMA = ItemSchema(
    "Target",
    {
        "id": "id",
        "name": "str",
        "count": "int",
        "ratio": "float",
        "active": "bool",
        "price": "decimal",
        "at": "datetime",
        "day": "date",
        "clock": "time",
        "uid": "uuid",
        "data": "json",
        "sceneId": "fk",
    },
)
OP = "GetTargetsByQuery"


def f(params):
    return compile_filter(SCHEMA, params, op_name=OP)


def item(**kw):
    base = {"id": "1", "name": "Alpha", "count": 1, "active": True}
    base.update(kw)
    return base


# -- strict equality and keys ------------------------------------------------


def test_strict_equal():
    assert strict_equal(1, 1.0)
    assert not strict_equal(1, True)
    assert not strict_equal(0, False)
    assert strict_equal(True, True)
    assert not strict_equal("1", 1)
    assert not strict_equal(None, 0)
    assert strict_equal({"a": [1, {"b": True}]}, {"a": [1.0, {"b": True}]})
    assert not strict_equal({"a": [1]}, {"a": [True]})
    assert not strict_equal({"a": 1}, {"a": 1, "b": 2})
    assert not strict_equal([1, 2], [1])
    assert strict_equal(None, None)


def test_value_key_keeps_types_apart():
    keys = {value_key(1), value_key(True), value_key("1"), value_key(None)}
    assert len(keys) == 4
    assert value_key(1) == value_key(1.0)
    assert value_key({"a": 1, "b": [True]}) == value_key({"b": [True], "a": 1.0})
    assert value_key([1]) != value_key([True])
    assert value_key({"a": 1}) != value_key({"a": True})


def test_field_key_decodes():
    assert field_key("decimal", "1.5") == field_key("decimal", "1.50")
    assert field_key("datetime", "2024-01-01T00:00:00Z") == field_key(
        "datetime", "2024-01-01T00:00:00+00:00"
    )
    assert field_key("str", "1.5") != field_key("str", "1.50")


# -- equality ------------------------------------------------------------------


def req(params):
    """GetTargetsByQuery parameters as a request carries them: fields and request data."""
    return compile_filter(SCHEMA, params, op_name=OP, request=True)


def test_empty_and_null_params_match_everything():
    """null is "no filter on this field", not "the field is null" (docs/protocol.md,
    "Filters"), in a request and in a handler's filter alike."""
    for params in ({}, {"name": None}, {"name": None, "sceneId": None}):
        for flt in (f(params), req(params)):
            assert flt.matches(item())
            assert flt.matches(item(sceneId="s"))
            assert flt.matches({"id": "2"})
    assert f({}).key == f({"name": None}).key == req({"name": None, "tx": "abc"}).key


def test_request_data_next_to_the_fields_is_no_filter():
    """The reserved keys (holding anything but an object) and the extension key serviceId
    are request data the protocol lets clients put next to the fields: never filters,
    never errors."""
    data = {"tx": "t", "createdAt": "2024-01-01T00:00:00Z", "seq": 0, "userToken": "u"}
    for extra in ({}, {"serviceId": "svc"}, {"seq": None, "serviceId": 7}):
        flt = req({**data, **extra})
        assert flt.key == f({}).key
        assert flt.matches(item())
    assert req({**data, "serviceId": "s", "name": "Alpha"}).key == f({"name": "Alpha"}).key


def test_an_unknown_key_is_an_error_naming_it_and_the_fields():
    """It used to be ignored, so a misspelt filter silently matched every item (issue 10,
    point 6); now it is refused, in a request and in a handler's filter, whatever its value
    (null included: a misspelt key is no less misspelt)."""
    fields = ", ".join(SCHEMA.fields)
    for compile_ in (f, req):
        for value in (5, None, {"kind": "eq", "value": 1}):
            with pytest.raises(FilterKeyError) as e:
                compile_({"name": "Alpha", "nope": value})
            assert str(e.value) == f'{OP}: unknown field "nope"; Target has: {fields}'
    with pytest.raises(FilterKeyError, match=r'unknown fields "b", "a"; Target has: id, '):
        req({"b": 1, "a": 2})
    many = {f"k{i}": 1 for i in range(8)}
    with pytest.raises(FilterKeyError, match=r'"k3", "k4" and 3 more; Target has'):
        req(many)
    assert issubclass(FilterKeyError, FilterError)


@pytest.mark.parametrize(
    "key,meant",
    [
        ("scene_id", "sceneId"),  # snake_case, the model's own spelling
        ("SceneID", "sceneId"),
        ("scene", "sceneId"),  # a foreign key by its Django name
        ("pri", "price"),  # the one field it begins
        ("naem", "name"),  # a typo
    ],
)
def test_an_unknown_key_hints_at_the_field_it_probably_means(key, meant):
    with pytest.raises(FilterKeyError) as e:
        req({key: "x"})
    assert str(e.value).startswith(f'{OP}: unknown field "{key}" (did you mean "{meant}"?); ')


def test_no_hint_when_nothing_is_close():
    with pytest.raises(FilterKeyError) as e:
        req({"buyer_id": "x"})
    assert "did you mean" not in str(e.value)


def test_a_reserved_key_used_as_a_filter_is_an_error():
    """Where a reserved key cannot be request data it can only be meant as a filter, and
    reserved keys never filter: an object under it in a request (request data is never an
    object), and any reserved key in a handler's filter or a visibility rule (no request
    data there)."""
    for params in ({"createdAt": {"kind": "range", "value": {"min": "x"}}}, {"seq": {}}):
        with pytest.raises(FilterKeyError, match=r"is reserved for request data \("):
            req(params)
    for key in ("tx", "createdAt", "seq", "userToken"):
        with pytest.raises(FilterKeyError) as e:
            f({key: "x"})
        assert str(e.value).startswith(f'{OP}: "{key}" is reserved for request data (')
        assert str(e.value).endswith(f"Target has: {', '.join(SCHEMA.fields)}")
    with pytest.raises(FilterKeyError, match="serviceId"):
        f({"serviceId": "svc"})  # only a request carries request data


def test_reserved_keys_never_filter_even_if_fields():
    """An item field named like a reserved key: in a request a plain value under it is
    request data (no filter), and an attempt to filter on it is refused with a hint."""
    schema = ItemSchema("T", {"id": "id", "createdAt": "str"})
    flt = compile_filter(schema, {"createdAt": "abc"}, op_name="Q", request=True)
    assert flt.matches({"id": "1", "createdAt": "other"})
    for params, request in (
        ({"createdAt": {"kind": "eq", "value": "a"}}, True),
        ({"createdAt": "a"}, False),
    ):
        with pytest.raises(FilterKeyError, match="a T field of that name can be filtered by"):
            compile_filter(schema, params, op_name="Q", request=request)


def test_an_extension_key_that_is_a_field_filters():
    schema = ItemSchema("T", {"id": "id", "serviceId": "str"})
    flt = compile_filter(schema, {"serviceId": "a"}, op_name="Q", request=True)
    assert flt.matches({"id": "1", "serviceId": "a"})
    assert not flt.matches({"id": "1", "serviceId": "b"})


def test_string_equality_case_sensitive():
    flt = f({"name": "Alpha"})
    assert flt.matches(item())
    assert not flt.matches(item(name="alpha"))
    assert not flt.matches(item(name=None))


def test_one_is_not_true():
    assert f({"count": 1}).matches(item(count=1))
    assert f({"count": 1}).matches(item(count=1.0))
    assert not f({"count": 1}).matches(item(count=True))
    assert f({"active": True}).matches(item(active=True))
    assert not f({"active": True}).matches(item(active=1))
    assert f({"data": 1}).key != f({"data": True}).key
    assert f({"data": 1}).key == f({"data": 1.0}).key


def test_id_is_a_field_with_id_hint():
    flt = f({"id": "1"})
    assert flt.matches(item())
    assert not flt.matches(item(id="2"))
    assert flt.ids == frozenset({"1"})
    assert f({"name": "x"}).ids is None


def test_eq_keys_hint():
    flt = f({"name": "Alpha", "count": 1})
    assert dict(flt.eq_keys) == {"name": ("s", "Alpha"), "count": ("n", 1)}
    assert dict(f({"name": {"kind": "eq", "value": "Alpha"}}).eq_keys) == {"name": ("s", "Alpha")}
    assert f({"name": {"kind": "contains", "value": "A"}}).eq_keys == ()


def test_plain_and_eq_object_share_key():
    assert f({"name": "a"}).key == f({"name": {"kind": "eq", "value": "a"}}).key
    assert f({"name": "a", "count": 2}).key == f({"count": 2, "name": "a"}).key
    assert f({"name": "a"}).key != f({"name": "b"}).key


def test_decimal_and_datetime_equality_decoded():
    assert f({"price": "1.5"}).matches(item(price="1.50"))
    assert not f({"price": "1.5"}).matches(item(price="1.51"))
    assert f({"at": "2024-01-01T10:00:00Z"}).matches(item(at="2024-01-01T10:00:00+00:00"))
    assert f({"at": "2024-01-01T10:00:00Z"}).matches(item(at="2024-01-01T12:00:00+02:00"))
    assert not f({"at": "2024-01-01T10:00:00Z"}).matches(item(at="2024-01-01T10:00:00"))


def test_json_equality_strict_recursive():
    flt = f({"data": {"a": [1, "x"]}})
    assert flt.matches(item(data={"a": [1.0, "x"]}))
    assert not flt.matches(item(data={"a": [True, "x"]}))
    assert not flt.matches(item(data={"a": [1, "x"], "b": 1}))
    assert f({"data": [1, 2]}).matches(item(data=[1, 2]))


def test_json_field_filter_object():
    flt = f({"data": {"kind": "in", "value": [1, "a"]}})
    assert flt.matches(item(data=1))
    assert not flt.matches(item(data=True))
    # A dict that is not a well-formed filter object is a plain JSON value.
    assert f({"data": {"kind": "weird"}}).matches(item(data={"kind": "weird"}))


# -- filter objects -------------------------------------------------------------


def test_null_item_never_matches_filter_object():
    for spec in (
        {"kind": "eq", "value": "a"},
        {"kind": "in", "value": ["a"]},
        {"kind": "range", "value": {"min": "a"}},
        {"kind": "contains", "value": ""},
        {"kind": "startsWith", "value": ""},
    ):
        assert not f({"name": spec}).matches(item(name=None)), spec
        assert not f({"name": spec}).matches({"id": "1"}), spec


def test_in():
    flt = f({"name": {"kind": "in", "value": ["a", "b"]}})
    assert flt.matches(item(name="a"))
    assert not flt.matches(item(name="c"))
    assert not f({"count": {"kind": "in", "value": [1]}}).matches(item(count=True))
    assert f({"count": {"kind": "in", "value": [1]}}).matches(item(count=1))


def test_in_empty_matches_nothing():
    flt = f({"name": {"kind": "in", "value": []}})
    assert not flt.matches(item())
    assert flt.ids == frozenset()
    flt = f({"id": {"kind": "in", "value": []}})
    assert not flt.matches(item())
    assert flt.ids == frozenset()


def test_in_on_id_gives_ids_hint():
    flt = f({"id": {"kind": "in", "value": ["1", "2"]}, "name": "Alpha"})
    assert flt.ids == frozenset({"1", "2"})
    assert flt.matches(item())
    assert not flt.matches(item(name="B"))


def test_range_decimal_numeric_not_lexical():
    flt = f({"price": {"kind": "range", "value": {"min": "9.1"}}})
    assert flt.matches(item(price="10.5"))
    assert not flt.matches(item(price="9.05"))
    assert flt.matches(item(price="9.10"))  # inclusive
    flt = f({"price": {"kind": "range", "value": {"max": "10"}}})
    assert flt.matches(item(price="9.99"))
    assert flt.matches(item(price="10.00"))
    assert not flt.matches(item(price="10.01"))
    assert not flt.matches(item(price="garbage"))


def test_range_datetime():
    flt = f(
        {
            "at": {
                "kind": "range",
                "value": {"min": "2024-01-01T00:00:00Z", "max": "2024-01-31T23:59:59+00:00"},
            }
        }
    )
    assert flt.matches(item(at="2024-01-15T00:00:00Z"))
    assert flt.matches(item(at="2024-01-01T01:00:00+01:00"))  # equals min, inclusive
    assert not flt.matches(item(at="2023-12-31T23:00:00+00:00"))
    assert not flt.matches(item(at="2024-02-01T00:00:00Z"))
    # Naive vs aware: not a match, not a crash.
    assert not flt.matches(item(at="2024-01-15T00:00:00"))


def test_range_date_time_numbers_strings():
    assert f({"day": {"kind": "range", "value": {"min": "2024-01-02"}}}).matches(
        item(day="2024-01-10")
    )
    assert not f({"clock": {"kind": "range", "value": {"max": "09:00"}}}).matches(
        item(clock="10:00:00")
    )
    flt = f({"count": {"kind": "range", "value": {"min": 2, "max": 10}}})
    assert flt.matches(item(count=10))
    assert not flt.matches(item(count=11))
    assert not flt.matches(item(count=True))
    flt = f({"name": {"kind": "range", "value": {"min": "B"}}})
    assert flt.matches(item(name="a"))  # code point: "a" > "B"
    assert not flt.matches(item(name="A"))


def test_contains_and_starts_with_case_sensitive():
    assert f({"name": {"kind": "contains", "value": "lph"}}).matches(item())
    assert not f({"name": {"kind": "contains", "value": "LPH"}}).matches(item())
    assert f({"name": {"kind": "startsWith", "value": "Al"}}).matches(item())
    assert not f({"name": {"kind": "startsWith", "value": "al"}}).matches(item())
    assert f({"sceneId": {"kind": "startsWith", "value": "4"}}).matches(item(sceneId="42"))


# -- validation ---------------------------------------------------------------------

ERRORS = [
    ({"name": 5}, '"name" must be a string or a filter object, got 5'),
    ({"name": ["a"]}, '"name" must be a string or a filter object, got ["a"]'),
    ({"count": "1"}, '"count" must be a number or a filter object, got "1"'),
    ({"count": True}, '"count" must be a number or a filter object, got true'),
    ({"active": 1}, '"active" must be a boolean or a filter object, got 1'),
    ({"price": "1.2.3"}, '"price" must be a decimal string'),
    ({"price": 1}, '"price" must be a decimal string'),
    ({"at": "yesterday"}, '"at" must be an ISO-8601 datetime string'),
    ({"day": "2024-13-01"}, '"day" must be an ISO-8601 date string'),
    ({"id": 7}, '"id" must be a string'),
    ({"sceneId": 7}, '"sceneId" must be a string id'),
    ({"name": {"value": "a"}}, '"name" must be a string or a filter object {"kind"'),
    ({"name": {"kind": "like", "value": "a"}}, 'unknown kind "like"; use one of eq, in, range'),
    ({"name": {"kind": "eq"}}, 'has a "eq" filter object without "value"'),
    ({"name": {"kind": "eq", "value": None}}, "value null"),
    ({"name": {"kind": "eq", "value": 3}}, '"name" "eq" value must be a string, got 3'),
    ({"name": {"kind": "in", "value": "a"}}, '"in" value must be a list, got "a"'),
    ({"name": {"kind": "in", "value": ["a", 2]}}, '"in" value item 1 must be a string, got 2'),
    ({"name": {"kind": "in", "value": [None]}}, '"in" value item 0 must not be null'),
    ({"count": {"kind": "range", "value": {}}}, '"range" needs "min", "max" or both'),
    ({"count": {"kind": "range", "value": 5}}, '"range" value must be an object'),
    ({"count": {"kind": "range", "value": {"min": "1"}}}, '"range" min must be a number'),
    ({"price": {"kind": "range", "value": {"max": "x"}}}, '"range" max must be a decimal'),
    ({"active": {"kind": "range", "value": {"min": False}}}, 'does not support "range"'),
    (
        {"at": {"kind": "range", "value": {"min": "2024-01-01T00:00:00Z", "max": "2024-02-01"}}},
        "both have a time zone or both have none",
    ),
    ({"count": {"kind": "contains", "value": "1"}}, 'does not support "contains" (int field)'),
    ({"name": {"kind": "startsWith", "value": 1}}, '"startsWith" value must be a string'),
]


@pytest.mark.parametrize("params,message", ERRORS)
def test_validation_errors(params, message):
    with pytest.raises(FilterError) as e:
        f(params)
    text = str(e.value)
    assert text.startswith(f"{OP}: "), text
    assert message in text, text
    assert isinstance(e.value, ValueError)


def test_params_must_be_object():
    with pytest.raises(FilterError, match="parameters must be an object"):
        compile_filter(SCHEMA, ["a"], op_name=OP)


# -- ids and custom predicates -------------------------------------------------------


def test_filter_for_ids():
    flt = filter_for_ids(SCHEMA, ["1", "3"])
    assert flt.ids == frozenset({"1", "3"})
    assert flt.matches(item(id="3"))
    assert not flt.matches(item(id="2"))
    assert flt.key == f({"id": {"kind": "in", "value": ["3", "1"]}}).key
    with pytest.raises(FilterError, match='GetTargetsByIds: "ids" item 1 must be a string, got 2'):
        filter_for_ids(SCHEMA, ["1", 2])
    with pytest.raises(FilterError, match='"ids" must be a list'):
        filter_for_ids(SCHEMA, "1")


def test_from_predicate():
    flt = Filter.from_predicate(lambda it: it.get("count", 0) > 1, "big")
    assert flt.matches(item(count=2))
    assert not flt.matches(item(count=1))
    assert flt.ids is None and flt.eq_keys == ()
    assert flt.key != f({}).key
