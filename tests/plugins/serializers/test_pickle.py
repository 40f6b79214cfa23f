"""The ``pickle`` serializer: exact round trips, never trusted by default, the worker's warning."""

from __future__ import annotations

import datetime
import logging
import pickle
import uuid
from typing import Any, ClassVar

import celeriac
import pytest
from celeriac import Celeriac, Envelope
from celeriac.plugins import serializers
from celeriac.plugins.serializers import PickleSerializer
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)

SERIALIZER = PickleSerializer()
PICKLE = "application/x-python-serialize"


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


def test_round_trips_any_picklable_value_exactly() -> None:
    value = {
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "object": Point(1, 2),
        "complex": 1 + 2j,
        "utc": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        (1, 2): [b"x", (3,)],
    }
    decoded = SERIALIZER.loads(SERIALIZER.dumps(value))
    assert decoded == value
    assert type(decoded[(1, 2)][1]) is tuple


def test_wire_format_is_protocol_4() -> None:
    data = SERIALIZER.dumps([1, "a"])
    assert data[:2] == b"\x80\x04"
    assert pickle.loads(data) == [1, "a"]


def test_unpicklable_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        SERIALIZER.dumps(lambda: None)


def test_registered_but_not_trusted() -> None:
    registered = {s.name: s for s in serializers.celeriac_serializers()}
    assert isinstance(registered["pickle"], PickleSerializer)
    assert (registered["pickle"].content_type, registered["pickle"].content_encoding) == (PICKLE, "binary")
    assert not registered["pickle"].trusted_by_default


def test_not_accepted_unless_named(app: Celeriac) -> None:
    assert PICKLE not in app.accept_content
    assert PICKLE not in app.result_accept_content
    named = Celeriac("tests", environ={}, accept_content=["json", "pickle"], result_accept_content=[PICKLE])
    assert PICKLE in named.accept_content
    assert PICKLE in named.result_accept_content


class Exploit:
    """Unpickling this would run code; a worker that does not accept pickle never does."""

    ran: ClassVar[list[str]] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (Exploit.ran.append, ("pwned",))


def test_a_worker_dead_letters_pickle_it_does_not_accept_without_unpickling(app: Celeriac) -> None:
    @app.task(name="t.echo")
    def echo(value: Any) -> Any:
        return value

    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))
    body = pickle.dumps([[Exploit()], {}, None])
    app.transport.publish(Envelope(body, PICKLE, "binary", headers={"task": "t.echo", "id": "p1"}), "default")
    with start_worker(app, pool="solo"):
        assert echo.delay(1).get(timeout=10) == 1
        wait_for(lambda: rejected)
    assert rejected == [f"content type {PICKLE!r} is not accepted; add it to accept_content to allow it"]
    assert Exploit.ran == []
    assert app.transport.queue_length("default.dead-letter") == 1


def test_a_worker_that_accepts_pickle_runs_it_and_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    name = uuid.uuid4().hex
    app = Celeriac(
        "tests",
        broker_url=f"memory://{name}",
        result_store=f"memory://{name}",
        environ={},
        serializer="pickle",
        accept_content=["json", "pickle"],
    )

    @app.task(name="t.size")
    def size(value: set[int]) -> int:
        return len(value)

    with caplog.at_level(logging.WARNING, logger="celeriac"), start_worker(app, pool="solo"):
        assert size.delay({1, 2, 3}).get(timeout=10) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"accept_content allows {PICKLE}, which can run code on this worker when decoded" in warnings
    app.close()


def test_no_warning_for_trusted_serializers(app: Celeriac, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="celeriac"), start_worker(app, pool="solo"):
        pass
    assert not [r for r in caplog.records if "can run code" in r.getMessage()]


def test_unpicklable_arguments_fail_at_send_time(app: Celeriac) -> None:
    with pytest.raises(celeriac.SerializationError, match="cannot serialize the arguments of t.x with pickle"):
        app.send_task("t.x", [lambda: None], serializer="pickle")
