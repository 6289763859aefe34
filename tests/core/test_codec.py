"""The codec gives back exactly what it was given: same values, same types, nested."""

from __future__ import annotations

import datetime as dt
import math
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaycache import register_type
from relaycache.core.codec import JSONData, decode, encode, from_json, to_json

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def assert_same(a: Any, b: Any, path: str = "$") -> None:
    """``b`` is ``a`` rebuilt: equal value and identical type at every level.

    Stricter than ``==``: ``1 == 1.0 == True``, ``(1,) != [1]`` only by type,
    ``Decimal('1.0') == Decimal('1.00')``, two aware datetimes in different zones may be
    equal, and ``nan != nan``; all of these are checked exactly here.
    """
    assert type(a) is type(b), f"{path}: type {type(a).__name__} became {type(b).__name__}"
    if isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), f"{path}: nan became {b!r}"
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, Decimal):
        assert a.compare_total(b) == 0, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, (dt.datetime, dt.time)):
        assert a.isoformat() == b.isoformat(), f"{path}: {a!r} != {b!r}"
        assert a.tzinfo == b.tzinfo, f"{path}: tzinfo {a.tzinfo!r} != {b.tzinfo!r}"
        assert a.fold == b.fold, f"{path}: fold {a.fold} != {b.fold}"
        assert a.utcoffset() == b.utcoffset(), f"{path}: utcoffset differs"
        assert a.tzname() == b.tzname() or not isinstance(a.tzinfo, zoneinfo.ZoneInfo)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert len(a) == len(b), f"{path}: {len(a)} keys became {len(b)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same(ka, kb, f"{path} key {ka!r}")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif isinstance(a, (set, frozenset)):
        assert len(a) == len(b), f"{path}: {len(a)} items became {len(b)}"
        for x in a:
            assert any(_is_same(x, y) for y in b), f"{path}: {x!r} missing after round trip"
    elif isinstance(a, memoryview):
        assert a.tobytes() == b.tobytes(), f"{path}: {a.tobytes()!r} != {b.tobytes()!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _is_same(a: Any, b: Any) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return False
    return True


def roundtrip(value: Any) -> Any:
    raw = encode(value)
    assert isinstance(raw, bytes)
    back = decode(raw)
    assert_same(value, back)
    # str input (what a decode_responses=True client hands back) decodes the same way
    assert_same(value, decode(raw.decode("utf-8")))
    return back


# -- scalars ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 2**200,
    -(2**63), -(2**63) - 1, -(2**64), -(2**200), 10**100 + 7,
])
def test_int_exact_including_beyond_64_bits(value):
    back = roundtrip(value)
    assert back == value and type(back) is int


@pytest.mark.parametrize("value", [
    0.0, -0.0, 1.5, -2.25, 0.1, 1e308, -1e-308, 5e-324, 2.0**53 + 2, 1 / 3,
    math.inf, -math.inf, math.nan,
])
def test_float_exact_including_nan_inf_and_negative_zero(value):
    back = roundtrip(value)
    assert type(back) is float


def test_negative_zero_keeps_its_sign():
    back = roundtrip(-0.0)
    assert math.copysign(1.0, back) == -1.0


@pytest.mark.parametrize("value", [True, False, None, "", "plain", "~t", "~dt", '"~', "é ✓ 漢字 🎉",
                                   "line\nbreak\ttab\x00nul"])
def test_str_bool_none(value):
    back = roundtrip(value)
    assert back is value or (type(back) is str and back == value)


def test_bools_stay_bools_not_ints():
    back = roundtrip([True, False, 1, 0, {"b": True}])
    assert back[0] is True and back[1] is False
    assert type(back[2]) is int and type(back[3]) is int
    assert back[4]["b"] is True


@pytest.mark.parametrize("value", [
    Decimal("0"), Decimal("-0"), Decimal("1.10"), Decimal("1.100"), Decimal("-3.14159"),
    Decimal("NaN"), Decimal("-NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"),
    Decimal("1E+100"), Decimal("1e-50"),
    Decimal("3.1415926535897932384626433832795028841971693993751058209749445923078164"),
    Decimal("123456789012345678901234567890.123456789012345678901234567890"),
])
def test_decimal_exact_including_specials_and_precision(value):
    back = roundtrip(value)
    assert str(back) == str(value)


@pytest.mark.parametrize("value", [
    uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=0),
    uuid.UUID(int=2**128 - 1), uuid.uuid4(),
])
def test_uuid(value):
    roundtrip(value)


@pytest.mark.parametrize("value", [b"", b"\x00\xff\xfe binary", bytes(range(256)), b'"~t"'])
def test_bytes_bytearray_memoryview(value):
    roundtrip(value)
    roundtrip(bytearray(value))
    back = roundtrip(memoryview(value))
    assert back.tobytes() == value


def test_date_time_timedelta():
    for value in [
        dt.date(2024, 2, 29), dt.date.min, dt.date.max,
        dt.time(0, 0), dt.time(23, 59, 59, 999999), dt.time(12, 30, tzinfo=dt.UTC),
        dt.time(8, 15, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
        dt.timedelta(0), dt.timedelta(days=-1), dt.timedelta(microseconds=-1),
        dt.timedelta(days=999999999, hours=23, minutes=59, seconds=59, microseconds=999999),
        dt.timedelta(days=-999999999), dt.timedelta(seconds=1.5),
    ]:
        roundtrip(value)


def test_date_and_datetime_are_not_confused():
    back = roundtrip([dt.date(2024, 1, 2), dt.datetime(2024, 1, 2)])
    assert type(back[0]) is dt.date
    assert type(back[1]) is dt.datetime


@pytest.mark.parametrize("value", [
    dt.datetime(2024, 5, 17, 10, 30, 0, 123456),
    dt.datetime.min, dt.datetime.max,
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.UTC),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone.utc),  # noqa: UP017 (the guide's spelling)
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=23, minutes=59))),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone(dt.timedelta(seconds=-1))),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=PARIS),
    dt.datetime(2024, 1, 17, 10, 30, tzinfo=PARIS),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=zoneinfo.ZoneInfo("UTC")),
    dt.datetime(2024, 5, 17, 10, 30, tzinfo=zoneinfo.ZoneInfo("Asia/Kolkata")),
], ids=repr)
def test_datetime_naive_and_aware(value):
    back = roundtrip(value)
    if value.tzinfo is not None:
        assert back.utcoffset() == value.utcoffset()
        assert back.astimezone(dt.UTC) == value.astimezone(dt.UTC)


def test_ambiguous_local_time_keeps_its_fold():
    # 2024-10-27 02:30 happens twice in Paris; fold says which one (+02:00 or +01:00).
    first = dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=0)
    second = first.replace(fold=1)
    assert first.utcoffset() != second.utcoffset()
    back_first, back_second = roundtrip([first, second])
    assert back_first.fold == 0 and back_second.fold == 1
    assert back_first.utcoffset() == dt.timedelta(hours=2)
    assert back_second.utcoffset() == dt.timedelta(hours=1)
    assert back_first.astimezone(dt.UTC) == first.astimezone(dt.UTC)
    assert back_second.astimezone(dt.UTC) == second.astimezone(dt.UTC)


def test_naive_datetime_fold_is_kept():
    value = dt.datetime(2024, 11, 3, 1, 30, fold=1)
    assert roundtrip(value).fold == 1


def test_aware_time_keeps_its_zone():
    value = dt.time(9, 0, tzinfo=NEW_YORK)
    back = roundtrip(value)
    assert back.tzinfo is NEW_YORK


# -- containers ------------------------------------------------------------------------

def test_nested_containers_keep_their_types():
    value = {
        "list": [1, [2, (3, 4)], ()],
        "tuple": (1, "a", (2.5, None), [True]),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a", "b"}),
        "empty": [{}, [], (), set(), frozenset()],
        "nested_sets": {frozenset({1, 2}), frozenset()},
        "deep": [[[[[{"x": (Decimal("1.5"), dt.date(2020, 1, 1))}]]]]],
    }
    back = roundtrip(value)
    assert type(back["tuple"][2]) is tuple
    assert type(back["set"]) is set
    assert type(back["frozenset"]) is frozenset


def test_dict_with_non_str_keys():
    value = {
        1: "int",
        (1, 2): "tuple",
        ("a", (None, 3)): "nested tuple",
        None: "none",
        False: "bool",
        2.5: "float",
        frozenset({1}): "frozenset",
        dt.date(2020, 1, 1): "date",
        uuid.UUID(int=7): "uuid",
        Decimal("1.10"): "decimal",
        b"raw": "bytes",
        "str": "str",
    }
    back = roundtrip(value)
    assert back[(1, 2)] == "tuple"
    assert list(back) == list(value)


def test_int_keys_are_not_turned_into_strings():
    back = roundtrip({1: "a", "1": "b"})
    assert back == {1: "a", "1": "b"}
    assert [type(k) for k in back] == [int, str]


@pytest.mark.parametrize("value", [
    {"~t": [1]},
    {"~dt": "x"},
    {"~m": [[1, 2]]},
    {"~s": []},
    {"~i": "12"},
    {"~x:point": [1, 2]},
    {"~": None},
    {"~unknown": 1},
    {"~t": [1], "other": 2},
    [{"~dt": "x"}, {"nested": {"~t": {"~d": "2020-01-01"}}}],
    ({"~fs": [1]},),
])
def test_user_dicts_that_look_like_markers_come_back_unchanged(value):
    roundtrip(value)


def test_dict_order_is_kept():
    value = {"b": 1, "a": 2, "c": {"z": 1, "y": 2}}
    back = roundtrip(value)
    assert list(back) == ["b", "a", "c"]
    assert list(back["c"]) == ["z", "y"]


def test_decoded_values_are_fresh_objects():
    raw = encode({"a": [1, 2], "s": {1}})
    first = decode(raw)
    first["a"].append(3)
    first["s"].add(2)
    assert decode(raw) == {"a": [1, 2], "s": {1}}


# -- what cannot be encoded --------------------------------------------------------------

class Unknown:
    pass


@pytest.mark.parametrize(("value", "name"), [
    (Unknown(), "Unknown"),
    ([1, {"nested": Unknown()}], "Unknown"),
    ({(1, Unknown()): 1}, "Unknown"),
    (object(), "object"),
    (lambda: 1, "function"),
])
def test_unencodable_value_raises_type_error_naming_the_type(value, name):
    with pytest.raises(TypeError, match=name):
        encode(value)


def test_subclasses_of_builtins_are_not_silently_flattened():
    from collections import OrderedDict

    class MyInt(int):
        pass

    # these would come back as plain dict / int: refusing them is the exact behaviour
    for value in (OrderedDict(a=1), MyInt(3)):
        with pytest.raises(TypeError, match=type(value).__name__):
            encode(value)


def test_naive_tzinfo_of_unknown_kind_is_refused():
    class Odd(dt.tzinfo):
        def utcoffset(self, d):
            return dt.timedelta(hours=1)

        def dst(self, d):
            return dt.timedelta(0)

    with pytest.raises(TypeError, match="Odd"):
        encode(dt.datetime(2024, 1, 1, tzinfo=Odd()))


# -- register_type ---------------------------------------------------------------------

def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_register_type_round_trip_with_nested_known_types():
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __eq__(self, other):
            return type(other) is type(self) and (self.x, self.y) == (other.x, other.y)

        __hash__ = None

    with pytest.raises(TypeError, match="Point"):
        encode(Point(1, 2))
    register_type(Point, _unique_name("point"), lambda p: (p.x, p.y), lambda d: Point(*d))
    value = {"p": Point(dt.date(2020, 1, 2), (Decimal("1.5"), {1})), "l": [Point(1, 2)]}
    back = decode(encode(value))
    assert back == value
    assert type(back["p"].x) is dt.date
    assert type(back["p"].y) is tuple and type(back["p"].y[1]) is set


def test_register_type_covers_subclasses():
    class Base:
        def __init__(self, v):
            self.v = v

    class Child(Base):
        pass

    register_type(Base, _unique_name("base"), lambda o: o.v, Base)
    back = decode(encode([Child(5), Base(6)]))
    assert [type(o) for o in back] == [Base, Base]
    assert [o.v for o in back] == [5, 6]


def test_register_type_most_derived_registration_wins():
    class A:
        def __init__(self, v):
            self.v = v

    class B(A):
        pass

    register_type(A, _unique_name("a"), lambda o: o.v, A)
    register_type(B, _unique_name("b"), lambda o: o.v, B)
    back = decode(encode([A(1), B(2)]))
    assert [type(o) for o in back] == [A, B]


def test_register_type_rejects_bad_and_conflicting_names():
    class C:
        pass

    with pytest.raises(ValueError):
        register_type(C, "not an identifier", lambda o: 0, lambda d: C())
    with pytest.raises(ValueError):
        register_type(C, "", lambda o: 0, lambda d: C())
    name = _unique_name("c")
    register_type(C, name, lambda o: 0, lambda d: C())
    with pytest.raises(ValueError):
        register_type(C, name, lambda o: 1, lambda d: C())


def test_unregistered_marker_is_a_value_error_not_code_execution():
    with pytest.raises(ValueError):
        decode(b'{"~x:never_registered_anywhere": 1}')


# -- decode of garbage -----------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"", b"\xff\xfe\xfd", b"{", b'{"a": 1', b"[1, 2", b"not json", b"\x80abc", "{",
    b"NaN", b'{"a": 1}}',
])
def test_decode_of_non_json_raises_value_error(raw):
    with pytest.raises(ValueError):
        decode(raw)


@pytest.mark.parametrize("raw", [
    b'{"~zz": 1}',
    b'{"~d": "not a date"}',
    b'{"~dt": "x"}',
    b'{"~dt": 5}',
    b'{"~t": 5}',
    b'{"~m": [1]}',
    b'{"~m": [[1]]}',
    b'{"~s": [[1]]}',
    b'{"~u": 5}',
    b'{"~u": "zz"}',
    b'{"~dec": "abc"}',
    b'{"~dec": [1]}',
    b'{"~td": [1]}',
    b'{"~b": "abc"}',
    b'{"~i": "1.5"}',
    b'{"~dt": ["2020-01-01T00:00:00", "ZNo/Such_Zone", 0]}',
    b'{"~dt": ["2020-01-01T00:00:00", 999999, 0]}',
], ids=lambda raw: raw.decode())
def test_decode_of_malformed_markers_raises_value_error(raw):
    """decode() promises ValueError on corrupt input; callers catch exactly that."""
    with pytest.raises(ValueError):
        decode(raw)


# -- property test ---------------------------------------------------------------------

_offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59),
                  max_value=dt.timedelta(hours=23, minutes=59)),
)
_zones = st.sampled_from([
    zoneinfo.ZoneInfo(k) for k in ("Europe/Paris", "America/New_York", "Australia/Lord_Howe",
                                   "Asia/Kathmandu", "UTC", "America/St_Johns")
])
_tzinfos = st.one_of(st.none(), st.just(dt.UTC), _offsets, _zones)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)

_hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=False),
    _text,
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(timezones=_tzinfos),
    st.times(timezones=st.one_of(st.none(), st.just(dt.UTC), _offsets)),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
)
_scalars = st.one_of(
    _hashable_scalars,
    st.floats(),
    st.decimals(allow_nan=True),
    st.builds(bytearray, st.binary(max_size=8)),
    st.builds(memoryview, st.binary(max_size=8)),
    st.times(timezones=_zones),
)
_hashables = st.recursive(
    _hashable_scalars,
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=6,
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_text, inner, max_size=4),
        st.dictionaries(_hashables, inner, max_size=4),
        st.dictionaries(st.sampled_from(["~t", "~dt", "~m", "~", "~x:a"]), inner, max_size=1),
        st.sets(_hashables, max_size=4),
        st.frozensets(_hashables, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_property_every_supported_value_round_trips_exactly(value):
    roundtrip(value)


@settings(max_examples=100, deadline=None)
@given(_values)
def test_property_encoding_is_plain_json_nothing_executable(value):
    # Whatever the value, the stored form is ordinary JSON: loads() needs no hooks.
    orjson.loads(encode(value))


def test_lone_surrogate_is_a_clear_error_not_corruption():
    with pytest.raises(TypeError):
        encode("\ud800")


def test_json_data_is_stored_and_handed_back_as_it_is():
    """What the ORM's rows use: data its caller already encoded (markers included)
    comes back as that same data, stored without a walk (no escaping of the markers),
    for the caller to decode once."""
    encoded_cell = to_json((1, {"a": dt.date(2024, 1, 2)}))  # holds "~t" and "~d"
    data = [["j", None], [[encoded_cell, "x"], [None, "~t"]]]
    raw = encode(["tags", JSONData(data)])
    assert decode(raw) == ["tags", data]
    assert from_json(decode(raw)[1][1][0][0]) == (1, {"a": dt.date(2024, 1, 2)})
    assert b'"~m"' not in raw
    # Control: given as a plain value, the same data is walked, its marker-like dicts
    # escaped (and unescaped on decode): equal after the round trip, stored longer.
    plain = encode(["tags", data])
    assert b'"~m"' in plain and decode(plain) == ["tags", data]
