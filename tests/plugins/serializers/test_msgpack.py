"""The ``msgpack`` serializer: extension types, plain-msgpack compatibility, errors, the extra."""

from __future__ import annotations

import datetime
import enum
import sys
import uuid
from collections import OrderedDict, namedtuple
from decimal import Decimal
from typing import Any

import celeriac
import msgpack
import pytest
from celeriac import Celeriac
from celeriac.plugins import serializers
from celeriac.plugins.serializers import MsgpackSerializer
from celeriac.plugins.serializers._msgpack import (
    EXT_BIGINT,
    EXT_DATE,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_TIME,
    EXT_TUPLE,
    EXT_UUID,
)
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(60)

SERIALIZER = MsgpackSerializer()
UTC_MINUS_5 = datetime.timezone(datetime.timedelta(hours=-5))


def round_trip(value: Any) -> Any:
    return SERIALIZER.loads(SERIALIZER.dumps(value))


def assert_same(decoded: Any, original: Any) -> None:
    """Equal, and of the same type all the way down; datetimes keep their offset."""
    assert type(decoded) is type(original), f"{decoded!r} is not a {type(original).__name__}"
    if isinstance(original, dict):
        assert decoded.keys() == original.keys()
        for key, value in original.items():
            assert_same(decoded[key], value)
    elif isinstance(original, (list, tuple)):
        assert len(decoded) == len(original)
        for decoded_item, item in zip(decoded, original, strict=True):
            assert_same(decoded_item, item)
    elif isinstance(original, (datetime.datetime, datetime.time)):
        assert decoded == original
        assert decoded.isoformat() == original.isoformat()
    elif isinstance(original, Decimal):
        assert str(decoded) == str(original)
    else:
        assert decoded == original


offsets = st.builds(
    datetime.timezone,
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: datetime.timedelta(minutes=m)),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.datetimes(timezones=offsets)
    | st.dates()
    | st.times()
    | st.times(timezones=offsets)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
hashable = st.text() | st.integers() | st.binary() | st.tuples(st.integers(), st.text())
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(hashable, children, max_size=5)
    ),
    max_leaves=30,
)


@settings(deadline=None, max_examples=300)
@given(values)
def test_round_trip_keeps_values_and_types(value: Any) -> None:
    data = SERIALIZER.dumps(value)
    assert isinstance(data, bytes)
    assert_same(SERIALIZER.loads(data), value)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(deadline=None, max_examples=200)
@given(plain)
def test_plain_data_is_plain_msgpack_as_kombu_writes_it(value: Any) -> None:
    # kombu: packb(s, use_bin_type=True) / unpackb(s, raw=False)
    data = SERIALIZER.dumps(value)
    assert data == msgpack.packb(value, use_bin_type=True)
    assert msgpack.unpackb(data, raw=False) == value
    assert SERIALIZER.loads(msgpack.packb(value, use_bin_type=True)) == value


@pytest.mark.parametrize(
    ("value", "code", "payload"),
    [
        (datetime.datetime(2024, 5, 6, 7, 8, 9, 123456), EXT_DATETIME, b"2024-05-06T07:08:09.123456"),
        (datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC_MINUS_5), EXT_DATETIME, b"2024-05-06T07:08:09-05:00"),
        (datetime.date(2024, 5, 6), EXT_DATE, b"2024-05-06"),
        (datetime.time(7, 8, 9, 500), EXT_TIME, b"07:08:09.000500"),
        (Decimal("3.140"), EXT_DECIMAL, b"3.140"),
        (
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            EXT_UUID,
            bytes.fromhex("12345678123456781234567812345678"),
        ),
        ((1, "a"), EXT_TUPLE, msgpack.packb([1, "a"])),
        (2**64, EXT_BIGINT, (2**64).to_bytes(9, "big", signed=True)),
        (-(2**63) - 1, EXT_BIGINT, (-(2**63) - 1).to_bytes(9, "big", signed=True)),
    ],
)
def test_extension_types_on_the_wire(value: Any, code: int, payload: bytes) -> None:
    data = SERIALIZER.dumps(value)
    assert data == msgpack.packb(msgpack.ExtType(code, payload))
    assert_same(SERIALIZER.loads(data), value)


def test_64_bit_limits_stay_native_integers() -> None:
    for value in (2**64 - 1, -(2**63), 0, -1):
        assert SERIALIZER.dumps(value) == msgpack.packb(value)
        assert round_trip(value) == value


def test_nested_tuples_and_tuple_keys_survive() -> None:
    value = {(1, "a"): (1, (2, (3, [4, (5,)])), ()), 7: b"x"}
    assert_same(round_trip(value), value)


def test_floats_inf_and_nan_round_trip_as_ieee_doubles() -> None:
    decoded = round_trip([float("inf"), float("-inf"), float("nan"), -0.0])
    assert decoded[:2] == [float("inf"), float("-inf")]
    assert decoded[2] != decoded[2]
    assert str(decoded[3]) == "-0.0"


def test_zoneinfo_travels_as_its_fixed_offset() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        zone = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database on this machine")
    value = datetime.datetime(2024, 7, 1, 12, 0, tzinfo=zone)
    decoded = round_trip(value)
    assert decoded == value
    assert decoded.utcoffset() == datetime.timedelta(hours=2)
    assert isinstance(decoded.tzinfo, datetime.timezone)


def test_reads_the_msgpack_timestamp_extension_as_utc() -> None:
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
    data = msgpack.packb(moment, datetime=True)
    assert SERIALIZER.loads(data) == moment


def test_subclasses_travel_as_their_base_type() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    point = namedtuple("point", "x y")
    value = {"color": Color.RED, "name": Name("n"), "point": point(1, 2), "ordered": OrderedDict(a=1)}
    assert_same(round_trip(value), {"color": 1, "name": "n", "point": (1, 2), "ordered": {"a": 1}})


def test_unencodable_objects_raise_type_error_naming_the_type() -> None:
    class Widget:
        pass

    with pytest.raises(TypeError, match=r"^Object of type Widget is not msgpack serializable"):
        SERIALIZER.dumps({"ok": [1, (Widget(),)]})
    with pytest.raises(TypeError, match="Object of type set"):
        SERIALIZER.dumps({1, 2})


def test_circular_data_raises_value_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="recursion|circular"):
        SERIALIZER.dumps(loop)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x92\x01",  # truncated array
        b"\x91\xc0\xc0",  # extra data
        msgpack.packb(msgpack.ExtType(42, b"?")),
        msgpack.packb(msgpack.ExtType(EXT_DATETIME, b"not a date")),
        msgpack.packb(msgpack.ExtType(EXT_UUID, b"short")),
        msgpack.packb(msgpack.ExtType(EXT_DECIMAL, b"\xff")),
        msgpack.packb({(1,): 1}),  # a list as a map key
        b"\x91" * 5000 + b"\xc0",  # nesting past msgpack's limit
    ],
)
def test_malformed_bytes_give_decode_error_through_the_registry(data: bytes) -> None:
    registry = celeriac.SerializerRegistry([SERIALIZER])
    with pytest.raises(celeriac.DecodeError, match="application/x-msgpack"):
        registry.loads(data, "application/x-msgpack", frozenset({"application/x-msgpack"}))


# -- the plugin -------------------------------------------------------------------------------


def test_plugin_registers_msgpack_as_trusted_binary() -> None:
    registered = {s.name: s for s in serializers.celeriac_serializers()}
    msgpack_serializer = registered["msgpack"]
    assert isinstance(msgpack_serializer, MsgpackSerializer)
    assert (msgpack_serializer.content_type, msgpack_serializer.content_encoding) == ("application/x-msgpack", "binary")
    assert msgpack_serializer.trusted_by_default


def test_accepted_by_default_next_to_json(app: Celeriac) -> None:
    assert app.accept_content == frozenset({"application/json", "application/x-msgpack"})


def test_without_the_library_msgpack_is_not_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # import msgpack -> ImportError
    assert not serializers.msgpack_available()
    assert [s.name for s in serializers.celeriac_serializers()] == ["json", "pickle"]
    app = Celeriac("tests", environ={})
    assert app.serializers.names == ["json", "pickle"]
    assert app.accept_content == frozenset({"application/json"})


@pytest.mark.parametrize(
    "settings_",
    [
        {"serializer": "msgpack"},
        {"result_serializer": "msgpack"},
        {"accept_content": ["json", "application/x-msgpack"]},
        {"result_accept_content": ["msgpack"]},
    ],
)
def test_a_config_naming_msgpack_without_the_library_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, settings_: dict[str, Any]
) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(celeriac.PluginError, match=r"pip install 'celeriac\[msgpack\]'") as info:
        Celeriac("tests", environ={}, **settings_)
    message = str(info.value)
    assert "\n" not in message
    assert next(iter(settings_)) in message


def test_the_library_is_imported_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "msgpack", raising=False)
    fresh = MsgpackSerializer()
    Celeriac("tests", environ={}).serializers  # noqa: B018 - builds the registry
    assert "msgpack" not in sys.modules
    assert fresh.loads(fresh.dumps([1])) == [1]
    assert "msgpack" in sys.modules
