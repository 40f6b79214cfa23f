"""Retries: ``self.retry()``, ``autoretry_for`` with exponential backoff and jitter, ``max_retries``,
the RETRY state, and retries through the broker's delayed delivery (real worker, threads pool)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from celeriac import Celeriac, MaxRetriesExceededError, states
from celeriac.task import Task, exponential_backoff
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 30


def test_exponential_backoff() -> None:
    assert [exponential_backoff(2, n, 10, jitter=False) for n in range(6)] == [2, 4, 8, 10, 10, 10]
    assert exponential_backoff(0.5, 3, 600, jitter=False) == 4.0
    drawn = [exponential_backoff(1, 3, 600) for _ in range(200)]
    assert all(0 <= delay <= 8 for delay in drawn)
    assert len(set(drawn)) > 100  # full jitter: spread over the whole range
    assert exponential_backoff(1, 10_000, 600, jitter=False) == 600  # no overflow for huge counts


def test_autoretry_options_follow_the_task_settings(app: Celeriac) -> None:
    @app.task(autoretry_for=(ConnectionError,), retry_backoff=True, retry_jitter=False, retry_kwargs={"max_retries": 9})
    def plain() -> None: ...

    @app.task(autoretry_for=(ConnectionError,), retry_backoff=3, retry_backoff_max=20, retry_jitter=False)
    def based() -> None: ...

    assert plain.autoretry_options(0) == {"max_retries": 9, "countdown": 1.0}
    assert plain.autoretry_options(4) == {"max_retries": 9, "countdown": 16.0}
    assert [based.autoretry_options(n)["countdown"] for n in range(4)] == [3, 6, 12, 20]
    assert plain.should_autoretry(ConnectionRefusedError()) and not plain.should_autoretry(ValueError())


def test_autoretry_backs_off_exponentially_through_delayed_delivery(workflow_app: Celeriac) -> None:
    attempts: list[float] = []
    published: list[tuple[int, str | None]] = []
    reasons: list[str] = []
    workflow_app.on("before_task_publish")(lambda headers: published.append((headers["retries"], headers["eta"])))
    workflow_app.on("task_retry")(lambda reason: reasons.append(reason))

    @workflow_app.task(autoretry_for=(ConnectionError,), retry_backoff=0.1, retry_jitter=False, max_retries=5)
    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError(f"down {len(attempts)}")
        return "up"

    with start_worker(workflow_app, concurrency=2):
        assert flaky.delay().get(timeout=TIMEOUT) == "up"
    assert [retries for retries, _ in published] == [0, 1, 2]
    assert published[0][1] is None and all(eta is not None for _, eta in published[1:])
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first_gap >= 0.1 - 0.03  # 0.1 * 2**0, waited in the broker (20 ms ETA tolerance)
    assert second_gap >= 0.2 - 0.03  # 0.1 * 2**1
    assert reasons == ["down 1", "down 2"]


def test_the_retry_state_carries_the_reason_while_the_retry_waits(workflow_app: Celeriac) -> None:
    published: list[tuple[int, str | None, float]] = []

    @workflow_app.on("before_task_publish")
    def published_message(headers: dict[str, Any]) -> None:
        published.append((headers["retries"], headers["eta"], time.time()))

    @workflow_app.task(autoretry_for=(ConnectionError,), retry_backoff=60, retry_jitter=False)
    def down() -> None:
        raise ConnectionError("database is down")

    with start_worker(workflow_app, concurrency=1) as worker:
        result = down.delay()
        wait_for(lambda: result.state == states.RETRY, timeout=TIMEOUT)
        assert isinstance(result.info, ConnectionError)
        assert str(result.info) == "database is down"
        wait_for(lambda: len(published) == 2, timeout=TIMEOUT)
        wait_for(lambda: worker.info()["active"] == 0, timeout=TIMEOUT)
        assert workflow_app.transport.queue_length("default") == 0  # the retry waits in the broker, delayed
    retries, eta, sent = published[1]
    assert retries == 1
    assert eta is not None
    assert 58 <= datetime.fromisoformat(eta).timestamp() - sent <= 61


def test_dont_autoretry_for_wins(app: Celeriac) -> None:
    attempts: list[str] = []

    @app.task(autoretry_for=(OSError,), dont_autoretry_for=(FileNotFoundError,), default_retry_delay=0)
    def io(kind: str) -> str:
        attempts.append(kind)
        if kind == "missing":
            raise FileNotFoundError("gone")
        if attempts.count(kind) < 2:
            raise ConnectionError("again")
        return "ok"

    with start_worker(app, concurrency=1):
        with pytest.raises(FileNotFoundError):
            io.delay("missing").get(timeout=TIMEOUT)
        assert io.delay("flaky").get(timeout=TIMEOUT) == "ok"
    assert attempts == ["missing", "flaky", "flaky"]


def test_max_retries_exceeded_raises_the_original_error(workflow_app: Celeriac) -> None:
    attempts: list[int] = []

    @workflow_app.task(bind=True, autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 2, "countdown": 0})
    def always_down(self: Task[..., Any]) -> None:
        attempts.append(self.request.retries)
        raise ConnectionError("still down")

    with start_worker(workflow_app, concurrency=1):
        result = always_down.delay()
        with pytest.raises(ConnectionError, match="still down"):
            result.get(timeout=TIMEOUT)
    assert attempts == [0, 1, 2]
    assert result.state == states.FAILURE


def test_retry_without_an_exception_raises_max_retries_exceeded(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=1)
    def again(self: Task[..., Any]) -> None:
        attempts.append(self.request.retries)
        raise self.retry(countdown=0)

    with start_worker(app, concurrency=1), pytest.raises(MaxRetriesExceededError, match="max_retries=1"):
        again.delay().get(timeout=TIMEOUT)
    assert attempts == [0, 1]


def test_max_retries_none_retries_until_it_works(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=None, default_retry_delay=0)
    def patient(self: Task[..., Any]) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 5:  # more than task_default_max_retries (3)
            raise self.retry(exc=TimeoutError("not yet"))
        return self.request.retries

    with start_worker(app, concurrency=1):
        assert patient.delay().get(timeout=TIMEOUT) == 5
    assert attempts == [0, 1, 2, 3, 4, 5]


def test_retry_is_stored_before_the_retry_is_published(app: Celeriac, monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise the retry could finish (on another worker) before this attempt's RETRY is
    stored, and RETRY would overwrite its SUCCESS for good."""
    events: list[tuple[str, Any]] = []
    store = app.result_store
    original_set = store.set

    def recording_set(record: Any, *, expires: float | None = None) -> None:
        events.append(("stored", record.state))
        original_set(record, expires=expires)

    def recording_set_many(records: Any, *, expires: float | None = None) -> None:
        for record in records:
            recording_set(record, expires=expires)

    monkeypatch.setattr(store, "set", recording_set)
    monkeypatch.setattr(store, "set_many", recording_set_many)
    app.on("before_task_publish")(lambda headers: events.append(("published", headers["retries"])))

    @app.task(bind=True, max_retries=3)
    def once_more(self: Task[..., Any]) -> str:
        if self.request.retries < 1:
            raise self.retry(countdown=0)
        return "done"

    with start_worker(app, concurrency=2):
        result = once_more.delay()
        assert result.get(timeout=TIMEOUT) == "done"
    assert events == [("published", 0), ("stored", states.RETRY), ("published", 1), ("stored", states.SUCCESS)]
    assert result.state == states.SUCCESS


def test_eager_retries_run_again_at_once(app: Celeriac) -> None:
    app.conf.update({"task_always_eager": True})
    attempts: list[int] = []

    @app.task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=100, max_retries=4)
    def flaky(self: Task[..., Any]) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise ConnectionError("down")
        return self.request.retries

    assert flaky.delay().get() == 2
    assert attempts == [0, 1, 2]
