"""Every registered serializer with every compression: ``loads(dumps(x)) == x`` through the codec.

Policy checked here, for all three serializers alike:

* ``inf``, ``-inf`` and ``nan`` round-trip (JSON writes Python's ``Infinity``/``NaN`` tokens,
  as kombu does; msgpack and pickle carry IEEE doubles). ``nan`` compares as equal to ``nan``
  below, since ``nan != nan``.
* Integers of any size, bytes, tuples (as tuples), nested containers and unicode round-trip.
* Datetimes keep their wall time and UTC offset: with json and msgpack a ``zoneinfo`` zone
  comes back as the fixed offset it had (same instant, same ``isoformat()``); pickle keeps the
  zone itself. ``time`` values carry fixed offsets only (a zone has no offset without a date).
* Strings are valid Unicode: a lone surrogate (``"\\ud800"``) cannot be UTF-8 and fails at
  send time with json and msgpack.
* Dict keys are strings (what JSON can carry; msgpack and pickle carry more, tested elsewhere).
"""

from __future__ import annotations

import datetime
import math
import uuid
from decimal import Decimal
from typing import Any

import celeriac
import pytest
from celeriac import Celeriac, TaskMessage
from celeriac.testing import start_worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

SERIALIZERS = ["json", "msgpack", "pickle"]
COMPRESSIONS: list[str | None] = [None, "zlib", "gzip", "bz2", "lzma", "zstd"]

offsets = st.builds(
    datetime.timezone,
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: datetime.timedelta(minutes=m)),
)
zones = st.timezones() | offsets | st.just(datetime.UTC)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()  # inf, -inf and nan included
    | st.text()
    | st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1)
    | st.binary()
    | st.datetimes()
    | st.datetimes(timezones=zones)
    | st.dates()
    | st.times(timezones=offsets | st.none())
    | st.decimals(allow_nan=False)
    | st.uuids()
)
payloads = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=40,
)


def assert_same(decoded: Any, original: Any) -> None:
    """Equal and of the same type all the way down, with the policy of the module docstring."""
    assert type(decoded) is type(original), f"{decoded!r} is not a {type(original).__name__}"
    if isinstance(original, dict):
        assert decoded.keys() == original.keys()
        for key, value in original.items():
            assert_same(decoded[key], value)
    elif isinstance(original, (list, tuple)):
        assert len(decoded) == len(original)
        for decoded_item, item in zip(decoded, original, strict=True):
            assert_same(decoded_item, item)
    elif isinstance(original, float) and math.isnan(original):
        assert math.isnan(decoded)
    elif isinstance(original, (datetime.datetime, datetime.time)):
        assert decoded.isoformat() == original.isoformat()
        assert decoded.utcoffset() == original.utcoffset()
    elif isinstance(original, Decimal):
        assert str(decoded) == str(original)
    else:
        assert decoded == original


def make_app(serializer: str, compression: str | None) -> Celeriac:
    return Celeriac(
        "tests",
        environ={},
        set_as_current=False,
        serializer=serializer,
        accept_content=[serializer],
        compression=compression,
        compression_threshold=0,
    )


def test_the_matrix_covers_every_registered_serializer_and_compressor() -> None:
    app = Celeriac("tests", environ={}, set_as_current=False)
    assert sorted(app.serializers.names) == sorted(SERIALIZERS)
    assert sorted(app.codec.compressor_names) == sorted(c for c in COMPRESSIONS if c)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_codec_round_trip(serializer: str, compression: str | None) -> None:
    app = make_app(serializer, compression)
    codec = app.codec

    @settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
    @given(payloads)
    def round_trip(payload: Any) -> None:
        message = TaskMessage(id=str(uuid.uuid4()), task="t.echo", args=[payload], kwargs={"value": payload})
        envelope, _ = codec.encode(message, serializer)
        content_type = app.serializers.get(serializer).content_type
        assert envelope.content_type == content_type
        if compression is not None:
            assert envelope.headers["compression"] == codec.compressor(compression).content_type
        decoded = codec.decode(envelope)
        assert_same(decoded.args, [payload])
        assert_same(decoded.kwargs, {"value": payload})

    round_trip()


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_special_floats_policy(serializer: str) -> None:
    registry = make_app(serializer, None).serializers
    codec = registry.get(serializer)
    decoded = codec.loads(codec.dumps([float("inf"), float("-inf"), float("nan"), 1e308, 5e-324, -0.0]))
    assert decoded[:2] == [float("inf"), float("-inf")]
    assert math.isnan(decoded[2])
    assert decoded[3:5] == [1e308, 5e-324]
    assert math.copysign(1.0, decoded[5]) == -1.0


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_switching_the_serializer_changes_nothing_else(serializer: str) -> None:
    """Same tasks, same results, same types, whichever serializer the config names."""
    name = f"switch-{serializer}-{uuid.uuid4().hex}"
    app = Celeriac(
        "tests",
        broker_url=f"memory://{name}",
        result_store=f"memory://{name}",
        environ={},
        set_as_current=False,
        serializer=serializer,
        result_serializer=serializer,
        accept_content=[serializer],
        result_accept_content=[serializer],
    )

    @app.task(name="t.describe")
    def describe(value: Any, **options: Any) -> Any:
        return {"value": value, "type": type(value).__name__, "options": options}

    payload = (1, b"\x00\xff", Decimal("1.10"), datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), 2**100)
    with start_worker(app, pool="solo"):
        result = describe.delay(payload, flag=uuid.UUID(int=7)).get(timeout=10)
    assert_same(result, {"value": payload, "type": "tuple", "options": {"flag": uuid.UUID(int=7)}})
    app.close()


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_lone_surrogates_fail_at_send_time(serializer: str) -> None:
    app = make_app(serializer, None)
    with pytest.raises(celeriac.SerializationError, match=f"cannot serialize the arguments of t.x with {serializer}"):
        app.send_task("t.x", ["\ud800"])


def test_unencodable_payload_fails_at_send_time_with_the_serializer_named() -> None:
    app = make_app("msgpack", None)
    with pytest.raises(celeriac.SerializationError, match="cannot serialize the arguments of t.x with msgpack"):
        app.send_task("t.x", [object()])
