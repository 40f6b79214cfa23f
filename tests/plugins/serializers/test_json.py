"""The ``json`` serializer: round trips, kombu's wire format, errors, accept_content."""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from collections import OrderedDict, namedtuple
from decimal import Decimal
from typing import Any

import celeriac
import pytest
from celeriac.plugins import serializers
from celeriac.plugins.serializers import JSONSerializer
from hypothesis import given, settings
from hypothesis import strategies as st

SERIALIZER = JSONSerializer()

# -- strategies -------------------------------------------------------------------------------

offsets = st.builds(
    datetime.timezone,
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: datetime.timedelta(minutes=m)),
)
naive_datetimes = st.datetimes()
aware_datetimes = st.datetimes(timezones=offsets)
times = st.times() | st.times(timezones=offsets)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | naive_datetimes
    | aware_datetimes
    | st.dates()
    | times
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
keys = st.text() | st.sampled_from(["__type__", "__value__"])
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
        | st.fixed_dictionaries({"__type__": children, "__value__": children})
    ),
    max_leaves=30,
)


def assert_same(decoded: Any, original: Any) -> None:
    """Equal, and of the same type all the way down (tuple stays tuple, list stays list)."""
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
        assert decoded.tzinfo == original.tzinfo  # same fixed offset, not just the same instant
        assert decoded.isoformat() == original.isoformat()
    elif isinstance(original, Decimal):
        assert str(decoded) == str(original)  # keeps the exponent: 1.10 stays 1.10
    else:
        assert decoded == original


# -- round trips ------------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(values)
def test_round_trip_keeps_values_and_types(value: Any) -> None:
    data = SERIALIZER.dumps(value)
    assert isinstance(data, bytes)
    assert_same(SERIALIZER.loads(data), value)


plain_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(deadline=None, max_examples=200)
@given(plain_json)
def test_plain_json_data_is_written_as_plain_json(value: Any) -> None:
    data = SERIALIZER.dumps(value)
    assert data == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert SERIALIZER.loads(data) == value


def test_nested_tuples_survive() -> None:
    value = (1, (2, (3, [4, (5,)])), ())
    assert_same(SERIALIZER.loads(SERIALIZER.dumps(value)), value)


def test_a_dict_that_looks_like_an_envelope_stays_a_dict() -> None:
    value = {"__type__": "datetime", "__value__": "2024-01-01T00:00:00"}
    assert_same(SERIALIZER.loads(SERIALIZER.dumps(value)), value)


def test_arbitrary_binary_round_trips() -> None:
    value = bytes(range(256))
    assert SERIALIZER.loads(SERIALIZER.dumps(value)) == value


def test_subclasses_travel_as_their_base_type() -> None:
    class Color(enum.IntEnum):
        RED = 1

    Point = namedtuple("Point", "x y")
    value = {"color": Color.RED, "point": Point(1, 2), "ordered": OrderedDict(a=1)}
    assert SERIALIZER.loads(SERIALIZER.dumps(value)) == {"color": 1, "point": (1, 2), "ordered": {"a": 1}}


def test_objects_with_a_json_method_are_reduced_with_it() -> None:
    class Money:
        def __json__(self) -> dict[str, Any]:
            return {"amount": Decimal("9.99"), "currency": "EUR"}

    assert SERIALIZER.loads(SERIALIZER.dumps([Money()])) == [{"amount": Decimal("9.99"), "currency": "EUR"}]


# -- wire format (kombu's envelopes) ----------------------------------------------------------


def test_wire_format_is_compact_utf8() -> None:
    assert SERIALIZER.dumps({"name": "crème", "n": [1, 2]}) == '{"name":"crème","n":[1,2]}'.encode()


@pytest.mark.parametrize(
    ("value", "envelope"),
    [
        (
            datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
            {"__type__": "datetime", "__value__": "2024-05-06T07:08:09.123456"},
        ),
        (
            datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
            {"__type__": "datetime", "__value__": "2024-05-06T07:08:09-05:00"},
        ),
        (datetime.date(2024, 5, 6), {"__type__": "date", "__value__": "2024-05-06"}),
        (datetime.time(7, 8, 9, 500), {"__type__": "time", "__value__": "07:08:09.000500"}),
        (Decimal("3.140"), {"__type__": "decimal", "__value__": "3.140"}),
        (
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678", "version": None}},
        ),
        (
            uuid.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
            {"__type__": "uuid", "__value__": {"hex": "1b4e28ba2fa141d2883f0016d3cca427", "version": 4}},
        ),
        (
            uuid.UUID("1ef21d2f-1207-6660-8c4f-419efbd44d48"),
            {"__type__": "uuid", "__value__": {"hex": "1ef21d2f120766608c4f419efbd44d48", "version": None}},
        ),
        (b"\x00\xffhi", {"__type__": "base64", "__value__": "AP9oaQ=="}),
        ((1, "a"), {"__type__": "tuple", "__value__": [1, "a"]}),
    ],
)
def test_wire_envelopes_match_kombu(value: Any, envelope: dict[str, Any]) -> None:
    assert json.loads(SERIALIZER.dumps(value)) == envelope
    assert_same(SERIALIZER.loads(json.dumps(envelope).encode()), value)


def test_reads_what_kombu_writes() -> None:
    # kombu sends UTF-8-decodable bytes as {"__type__": "bytes"} and UUIDs as {"hex", "version"}.
    data = json.dumps(
        [
            {"__type__": "bytes", "__value__": "héllo"},
            {"__type__": "uuid", "__value__": {"hex": "1b4e28ba2fa141d2883f0016d3cca427", "version": 4}},
            {"__type__": "datetime", "__value__": "2024-05-06T07:08:09.123456+00:00"},
        ]
    ).encode()
    assert SERIALIZER.loads(data) == [
        "héllo".encode(),
        uuid.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
        datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC),
    ]


def test_unknown_envelope_types_stay_dicts() -> None:
    data = b'{"__type__":"frobnicator","__value__":[1,2]}'
    assert SERIALIZER.loads(data) == {"__type__": "frobnicator", "__value__": [1, 2]}


# -- errors -----------------------------------------------------------------------------------


def test_unencodable_objects_raise_type_error_naming_the_type() -> None:
    class Widget:
        pass

    with pytest.raises(TypeError, match=r"^Object of type Widget is not JSON serializable; "):
        SERIALIZER.dumps({"ok": [1, (Widget(),)]})


def test_sets_are_not_json() -> None:
    with pytest.raises(TypeError, match="Object of type set"):
        SERIALIZER.dumps({1, 2})


@pytest.mark.parametrize("key", [1, None, 2.5, ("a",)])
def test_non_str_dict_keys_raise_type_error(key: Any) -> None:
    with pytest.raises(TypeError, match="JSON object keys must be str"):
        SERIALIZER.dumps([{key: 1}])


def test_circular_data_raises_value_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="circular"):
        SERIALIZER.dumps(loop)


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe\x00", b"", b'{"__type__":"datetime","__value__":"nope"}'])
def test_malformed_bytes_give_decode_error_through_the_registry(data: bytes) -> None:
    registry = celeriac.SerializerRegistry([SERIALIZER])
    with pytest.raises(celeriac.DecodeError, match="application/json"):
        registry.loads(data, "application/json", frozenset({"application/json"}))


# -- the plugin and the registry --------------------------------------------------------------


def test_plugin_registers_the_json_serializer() -> None:
    (registered,) = [s for s in serializers.celeriac_serializers() if s.name == "json"]
    assert isinstance(registered, JSONSerializer)
    assert (registered.name, registered.content_type, registered.content_encoding) == (
        "json",
        "application/json",
        "utf-8",
    )
    assert registered.trusted_by_default


def test_registry_round_trip_by_name() -> None:
    registry = celeriac.SerializerRegistry([SERIALIZER])
    data, content_type, encoding = registry.dumps({"args": (1, 2)}, "json")
    assert (content_type, encoding) == ("application/json", "utf-8")
    accept = registry.resolve_accept(["json"])
    assert registry.loads(data, content_type, accept) == {"args": (1, 2)}


def test_accept_content_is_enforced() -> None:
    registry = celeriac.SerializerRegistry([SERIALIZER])
    data = SERIALIZER.dumps([1])
    with pytest.raises(celeriac.ContentDisallowed, match=r"'application/json'.*result_accept_content"):
        registry.loads(data, "application/json", frozenset({"application/x-msgpack"}), setting="result_accept_content")
    with pytest.raises(celeriac.ContentDisallowed, match=r"'application/json'.*accept_content"):
        registry.loads(data, "application/json", frozenset())
