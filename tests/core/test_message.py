"""The protocol-v2 codec: round trips and strict decoding."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from celeriac import (
    Celeriac,
    ContentDisallowed,
    DecodeError,
    Envelope,
    TaskMessage,
    decode_task_message,
    encode_task_message,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def app() -> Celeriac:
    return Celeriac(environ={}, set_as_current=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
times = st.none() | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=d.microsecond))


@settings(deadline=None, max_examples=150)
@given(
    task_id=st.uuids().map(str),
    name=st.text(min_size=1, max_size=40),
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    retries=st.integers(min_value=0, max_value=1000),
    eta=times,
    expires=times,
    priority=st.none() | st.integers(min_value=0, max_value=9),
    timelimit=st.tuples(st.none() | st.floats(0, 1e6), st.none() | st.floats(0, 1e6)),
    extra=st.dictionaries(st.text(min_size=1, max_size=8).map(lambda s: "x-" + s), json_values, max_size=3),
)
def test_round_trip(
    app: Celeriac,
    task_id: str,
    name: str,
    args: list[object],
    kwargs: dict[str, object],
    retries: int,
    eta: datetime | None,
    expires: datetime | None,
    priority: int | None,
    timelimit: tuple[float | None, float | None],
    extra: dict[str, object],
) -> None:
    message = TaskMessage(
        id=task_id,
        task=name,
        args=args,
        kwargs=kwargs,
        retries=retries,
        eta=eta,
        expires=expires,
        priority=priority,
        timelimit=timelimit,
        extra_headers=extra,
    )
    envelope, body = encode_task_message(message, app.serializers, "json")
    assert envelope.headers["task"] == name
    assert envelope.properties["correlation_id"] == task_id
    assert body[0] == args
    decoded = decode_task_message(envelope, app.serializers, app.accept_content)
    assert decoded.id == task_id
    assert decoded.task == name
    assert decoded.args == args
    assert decoded.kwargs == kwargs
    assert decoded.retries == retries
    assert decoded.eta == eta
    assert decoded.expires == expires
    assert decoded.priority == priority
    assert decoded.timelimit == timelimit
    assert decoded.root_id == task_id
    assert decoded.extra_headers == extra


def test_wire_shape_matches_celery_protocol_v2(app: Celeriac) -> None:
    message = TaskMessage(id="abc", task="proj.add", args=[2, 2], timelimit=(10, 5))
    envelope, _ = encode_task_message(message, app.serializers, "json")
    assert envelope.content_type == "application/json"
    assert envelope.content_encoding == "utf-8"
    assert {
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
    } <= set(envelope.headers)
    assert envelope.headers["timelimit"] == [10, 5]
    assert envelope.headers["argsrepr"] == "(2, 2)"
    import json

    assert json.loads(envelope.body) == [
        [2, 2],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def good_envelope(app: Celeriac) -> Envelope:
    return encode_task_message(TaskMessage(id="i1", task="t"), app.serializers, "json")[0]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda e: e.headers.pop("task"), "no 'task' header"),
        (lambda e: e.headers.update(id=5), "no 'id' header"),
        (lambda e: setattr(e, "body", b"{not json"), "cannot decode application/json"),
        (lambda e: setattr(e, "body", b'{"a": 1}'), "must be \\[args, kwargs, embed\\]"),
        (lambda e: setattr(e, "body", b'["x", {}, null]'), "args of t\\[i1\\] must be a list"),
        (lambda e: setattr(e, "body", b"[[], [], null]"), "kwargs of t\\[i1\\] must be a mapping"),
        (lambda e: e.headers.update(retries=-1), "retries"),
        (lambda e: e.headers.update(eta="tomorrow"), "not a valid ISO-8601 time"),
        (lambda e: e.headers.update(timelimit=[1]), "timelimit"),
        (lambda e: e.headers.update(parent_id=3), "parent_id"),
    ],
)
def test_malformed_messages_give_one_line_reasons(app: Celeriac, mutate: object, error: str) -> None:
    envelope = good_envelope(app)
    mutate(envelope)  # type: ignore[operator]
    with pytest.raises(DecodeError, match=error):
        decode_task_message(envelope, app.serializers, app.accept_content)


def test_content_type_not_accepted(app: Celeriac) -> None:
    envelope = good_envelope(app)
    envelope.content_type = "application/x-python-serialize"
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize.*accept_content"):
        decode_task_message(envelope, app.serializers, app.accept_content)


def test_naive_times_mean_utc(app: Celeriac) -> None:
    envelope = good_envelope(app)
    envelope.headers["eta"] = "2030-01-01T10:00:00"
    decoded = decode_task_message(envelope, app.serializers, app.accept_content)
    assert decoded.eta == datetime(2030, 1, 1, 10, tzinfo=UTC)
