"""The app API: tasks, publishing, routing, eager mode, results, shared tasks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celeriac import (
    Celeriac,
    EagerResult,
    MaxRetriesExceededError,
    NotRegistered,
    PluginError,
    RemoteTaskError,
    Retry,
    TimeoutError,
    shared_task,
    states,
)
from celeriac.task import Task


def test_task_decorator_forms(app: Celeriac) -> None:
    @app.task
    def plain(x: int) -> int:
        return x + 1

    @app.task(name="custom.name", queue="q1", priority=7, ignore_result=True, acks_late=False)
    def configured() -> None:
        return None

    assert isinstance(plain, Task)
    assert plain.name.endswith("test_task_decorator_forms.<locals>.plain")
    assert plain(1) == 2
    assert app.tasks["custom.name"] is configured
    assert configured.queue == "q1"
    assert configured.priority == 7
    with pytest.raises(NotRegistered, match="'nope' is not registered"):
        app.tasks["nope"]


def test_apply_async_puts_a_protocol_v2_message_on_the_routed_queue(app: Celeriac) -> None:
    app.conf.update({"routes": {"mail.*": {"queue": "mail", "priority": 3}}})

    @app.task(name="mail.send")
    def send(to: str) -> str:
        return to

    result = send.apply_async(("a@b",), {}, headers={"x-trace": "t1"}, expires=60)
    transport = app.transport
    assert transport.queue_length("mail") == 1
    [delivery] = transport.fetch(["mail"], limit=10, timeout=1)
    envelope = delivery.envelope
    assert envelope.headers["id"] == result.id
    assert envelope.headers["task"] == "mail.send"
    assert envelope.headers["x-trace"] == "t1"
    assert envelope.properties["priority"] == 3
    assert datetime.fromisoformat(envelope.headers["expires"]) > datetime.now(UTC) + timedelta(seconds=50)
    assert json.loads(envelope.body)[0] == ["a@b"]
    transport.ack(delivery)


def test_explicit_queue_beats_route_beats_task_option(app: Celeriac) -> None:
    app.conf.update({"routes": {"t.routed": "from-route"}})

    @app.task(name="t.routed", queue="from-task")
    def routed() -> None: ...

    @app.task(name="t.plain", queue="from-task")
    def plain() -> None: ...

    routed.delay()
    plain.delay()
    routed.apply_async(queue="explicit")
    assert app.transport.queue_length("from-route") == 1
    assert app.transport.queue_length("from-task") == 1
    assert app.transport.queue_length("explicit") == 1


def test_countdown_is_delayed_in_the_broker(app: Celeriac) -> None:
    @app.task
    def later() -> None: ...

    later.apply_async(countdown=30)
    assert app.transport.queue_length("default") == 0
    assert app.transport.fetch(["default"], limit=1, timeout=0.05) == []


def test_send_task_by_name_without_registration(app: Celeriac) -> None:
    result = app.send_task("elsewhere.task", [1], {"a": 2})
    assert result.state == states.PENDING
    [delivery] = app.transport.fetch(["default"], limit=1, timeout=1)
    assert delivery.envelope.headers["task"] == "elsewhere.task"
    with pytest.raises(TypeError, match="unknown options: bogus"):
        app.send_task("x", bogus=1)


def test_unknown_serializer_lists_installed(app: Celeriac) -> None:
    @app.task
    def t() -> None: ...

    with pytest.raises(PluginError, match="unknown serializer 'yaml'; installed: json"):
        t.apply_async(serializer="yaml")


def test_apply_runs_locally_with_request_context(app: Celeriac) -> None:
    seen: dict[str, Any] = {}

    @app.task(bind=True)
    def whoami(self: Task[..., Any], x: int) -> int:
        seen["id"] = self.request.id
        seen["eager"] = self.request.is_eager
        return x * 2

    result = whoami.apply((21,), task_id="fixed-id")
    assert isinstance(result, EagerResult)
    assert result.get() == 42
    assert result.successful()
    assert seen == {"id": "fixed-id", "eager": True}


def test_always_eager(app: Celeriac) -> None:
    app.conf.update({"task_always_eager": True})

    @app.task
    def boom() -> None:
        raise ValueError("eager boom")

    @app.task
    def ok() -> str:
        return "fine"

    assert ok.delay().get() == "fine"
    with pytest.raises(ValueError, match="eager boom"):
        boom.delay()
    app.conf.update({"task_eager_propagates": False})
    result = boom.delay()
    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert app.transport.queue_length("default") == 0


def test_eager_retry_reruns_until_max_retries(app: Celeriac) -> None:
    calls: list[int] = []

    @app.task(bind=True, max_retries=2)
    def flaky(self: Task[..., Any]) -> None:
        calls.append(self.request.retries)
        raise self.retry(exc=KeyError("k"))

    with pytest.raises(KeyError):
        flaky.apply()
    assert calls == [0, 1, 2]

    @app.task(bind=True, max_retries=0)
    def no_exc(self: Task[..., Any]) -> None:
        self.retry()

    with pytest.raises(MaxRetriesExceededError):
        no_exc.apply()


def test_async_result_states_and_exception_rebuilding(app: Celeriac) -> None:
    app.store_result("ok-id", states.SUCCESS, {"v": [1, 2]})
    ok = app.AsyncResult("ok-id")
    assert ok.state == states.SUCCESS
    assert ok.ready() and ok.successful() and not ok.failed()
    assert ok.get(timeout=1) == {"v": [1, 2]}
    assert ok.date_done is not None

    app.store_result(
        "bad-id",
        states.FAILURE,
        {"exc_type": "ValueError", "exc_module": "builtins", "exc_message": ["nope"]},
        traceback="Traceback ...",
    )
    bad = app.AsyncResult("bad-id")
    assert bad.failed()
    with pytest.raises(ValueError, match="nope"):
        bad.get(timeout=1)
    assert isinstance(bad.get(timeout=1, propagate=False), ValueError)
    assert bad.traceback == "Traceback ..."

    app.store_result(
        "alien-id", states.FAILURE, {"exc_type": "Secret", "exc_module": "not.imported.module", "exc_message": ["x"]}
    )
    with pytest.raises(RemoteTaskError, match="not.imported.module.Secret: x"):
        app.AsyncResult("alien-id").get(timeout=1)

    pending = app.AsyncResult("never")
    assert pending.state == states.PENDING
    with pytest.raises(TimeoutError, match=r"did not finish within 0.05s \(state PENDING\)"):
        pending.get(timeout=0.05)
    ok.forget()
    assert ok.state == states.PENDING


def test_retry_outside_worker_publishes_nothing_when_eager_only(app: Celeriac) -> None:
    @app.task(bind=True)
    def r(self: Task[..., Any]) -> None:
        self.retry(countdown=1)

    with pytest.raises(Retry):
        r.run()


@shared_task
def shared_double(x: int) -> int:
    return x * 2


def test_shared_task_binds_to_the_current_app(app: Celeriac) -> None:
    app.set_current()
    name = shared_double.name
    assert name in app.tasks
    assert app.tasks[name](4) == 8
    assert shared_double(5) == 10
    app.conf.update({"task_always_eager": True})
    assert shared_double.delay(6).get() == 12


def test_update_state_custom_state(app: Celeriac) -> None:
    @app.task(bind=True)
    def progress(self: Task[..., Any]) -> None:
        self.update_state(task_id="p1", state="PROGRESS", meta={"done": 3})

    progress.run()
    result = app.AsyncResult("p1")
    assert result.state == "PROGRESS"
    assert result.info == {"done": 3}
