"""``accept_content`` for task messages and ``result_accept_content`` for results, end to end."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celeriac import Celeriac, ContentDisallowed
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)


def pair(**worker_settings: Any) -> tuple[Celeriac, Celeriac]:
    """A client app and a worker app on one broker and result store, configured separately."""
    name = uuid.uuid4().hex
    common = {"broker_url": f"memory://{name}", "result_store": f"memory://{name}", "environ": {}}
    client = Celeriac("client", set_as_current=False, **common)
    worker = Celeriac("worker", set_as_current=False, **common, **worker_settings)
    for app in (client, worker):
        app.task(name="t.echo")(lambda value: value)
    return client, worker


@pytest.mark.parametrize(
    ("serializer", "accept", "content_type"),
    [
        ("msgpack", ["json"], "application/x-msgpack"),
        ("json", ["msgpack"], "application/json"),
        ("pickle", ["json", "msgpack"], "application/x-python-serialize"),
        ("pickle", None, "application/x-python-serialize"),  # the default: trusted serializers only
    ],
)
def test_messages_outside_accept_content_are_dead_lettered_with_the_setting_named(
    serializer: str, accept: list[str] | None, content_type: str
) -> None:
    client, worker = pair(accept_content=accept)
    rejected: list[str] = []
    worker.on("task_rejected")(lambda exc: rejected.append(str(exc)))
    refused = client.send_task("t.echo", ["no"], serializer=serializer)
    allowed = client.send_task("t.echo", ["yes"], serializer="json" if "json" in (accept or ["json"]) else "msgpack")
    with start_worker(worker, pool="solo"):
        assert allowed.get(timeout=10) == "yes"
        wait_for(lambda: rejected)
    assert rejected == [f"content type {content_type!r} is not accepted; add it to accept_content to allow it"]
    assert refused.state == "PENDING"
    dead = worker.transport.fetch(["default.dead-letter"], limit=5, timeout=1)
    assert [d.envelope.headers["x-death-reason"] for d in dead] == rejected


def test_accept_content_takes_names_or_content_types() -> None:
    _, worker = pair(accept_content=["msgpack", "application/json"])
    assert worker.accept_content == frozenset({"application/x-msgpack", "application/json"})


def test_results_outside_result_accept_content_are_refused_naming_the_setting() -> None:
    client, worker = pair(accept_content=["pickle"], result_serializer="pickle")
    result = client.send_task("t.echo", [{1, 2}], serializer="pickle")
    with start_worker(worker, pool="solo"):
        wait_for(lambda: client.result_store.get(result.id) is not None)
    assert client.result_store.get(result.id).content_type == "application/x-python-serialize"
    with pytest.raises(
        ContentDisallowed,
        match=r"^content type 'application/x-python-serialize' is not accepted; add it to result_accept_content",
    ):
        result.get(timeout=5)
    trusting = Celeriac(
        "client",
        set_as_current=False,
        broker_url=client.conf.broker_url,
        result_store=client.conf.result_store,
        environ={},
        result_accept_content=["json", "pickle"],
    )
    assert trusting.AsyncResult(result.id).get(timeout=5) == {1, 2}


def test_result_accept_content_defaults_to_trusted_serializers() -> None:
    client, _ = pair()
    assert client.result_accept_content == frozenset({"application/json", "application/x-msgpack"})


def test_msgpack_results_are_read_by_default() -> None:
    client, worker = pair(result_serializer="msgpack")
    result = client.send_task("t.echo", [(1, b"x")])
    with start_worker(worker, pool="solo"):
        assert result.get(timeout=10) == (1, b"x")
