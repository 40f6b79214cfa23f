"""The worker end to end on the in-memory transport (a real worker, threads and solo pools)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from celeriac import Celeriac, Envelope, Ignore, NotRegistered, Reject, TaskRevokedError, states
from celeriac.task import Task
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)


def malformed(i: int) -> tuple[Envelope, str]:
    """Ten kinds of broken messages."""
    kinds: list[Envelope] = [
        Envelope(b"\xff\xfe not json", "application/json", headers={"task": "t.add", "id": f"bad-{i}"}),
        Envelope(b"[[1],{}]", "application/json", headers={"task": "t.add", "id": f"bad-{i}"}),
        Envelope(b"[[1],{},{}]", "application/json", headers={"id": f"bad-{i}"}),
        Envelope(b"[[1],{},{}]", "application/json", headers={"task": "t.add"}),
        Envelope(b"\x80\x04K\x01.", "application/x-python-serialize", headers={"task": "t.add", "id": f"bad-{i}"}),
        Envelope(b"[[1],{},{}]", "text/plain", headers={"task": "t.add", "id": f"bad-{i}"}),
        Envelope(b'["x",{},{}]', "application/json", headers={"task": "t.add", "id": f"bad-{i}"}),
        Envelope(b"[[1],{},{}]", "application/json", headers={"task": "t.add", "id": f"bad-{i}", "retries": "x"}),
        Envelope(b"[[1],{},{}]", "application/json", headers={"task": "t.add", "id": f"bad-{i}", "eta": "soon"}),
        Envelope(b"", "application/json", headers={"task": "t.add", "id": f"bad-{i}"}),
    ]
    return kinds[i % len(kinds)], "default"


def test_1000_tasks_with_100_malformed_messages_interleaved(app: Celeriac) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))
    transport = app.transport
    results = []
    for i in range(1000):
        results.append(add.delay(i, i))
        if i % 10 == 0:
            envelope, queue = malformed(i // 10)
            transport.publish(envelope, queue)
    with start_worker(app, pool="threads", concurrency=4):
        values = [r.get(timeout=30) for r in results]
        wait_for(lambda: transport.queue_length("default.dead-letter") == 100, timeout=10)
    assert values == [2 * i for i in range(1000)]
    assert len(rejected) == 100
    assert transport.queue_length("default") == 0
    dead = transport.fetch(["default.dead-letter"], limit=200, timeout=1)
    assert len(dead) == 100
    assert all(d.envelope.headers["x-death-reason"] for d in dead)
    assert all(d.envelope.headers["x-death-queue"] == "default" for d in dead)


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_results_failures_and_exception_types(app: Celeriac, pool: str) -> None:
    @app.task
    def div(x: float, y: float) -> float:
        return x / y

    with start_worker(app, pool=pool, concurrency=2):
        assert div.delay(6, 3).get(timeout=10) == 2
        failing = div.delay(1, 0)
        with pytest.raises(ZeroDivisionError):
            failing.get(timeout=10)
        assert failing.state == states.FAILURE
        assert "ZeroDivisionError" in (failing.traceback or "")


def test_unknown_task_is_dead_lettered_and_fails_the_result(app: Celeriac) -> None:
    unknown: list[tuple[str, str]] = []
    app.on("task_unknown")(lambda name, id: unknown.append((name, id)))
    with start_worker(app, pool="solo"):
        result = app.send_task("no.such.task", [1])
        with pytest.raises(NotRegistered, match="no.such.task"):
            result.get(timeout=10)
        wait_for(lambda: app.transport.queue_length("default.dead-letter") == 1)
    assert unknown == [("no.such.task", result.id)]


def test_expired_task_is_revoked_not_run(app: Celeriac) -> None:
    ran: list[int] = []
    revoked: list[bool] = []
    app.on("task_revoked")(lambda expired: revoked.append(expired))

    @app.task
    def work() -> None:
        ran.append(1)

    result = work.apply_async(expires=-1)
    with start_worker(app, pool="solo"), pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=10)
    assert result.state == states.REVOKED
    assert ran == []
    assert revoked == [True]


def test_countdown_runs_later(app: Celeriac) -> None:
    @app.task
    def stamp() -> float:
        return time.time()

    with start_worker(app, pool="threads", concurrency=2):
        sent = time.time()
        assert stamp.apply_async(countdown=0.3).get(timeout=10) >= sent + 0.3


def test_retry_publishes_again_with_retries_incremented(app: Celeriac) -> None:
    attempts: list[int] = []
    retried: list[str] = []
    app.on("task_retry")(lambda request, reason: retried.append(reason))

    @app.task(bind=True, max_retries=3)
    def flaky(self: Task[..., Any]) -> str:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0.05, exc=ConnectionError("try again"))
        return "done"

    with start_worker(app, pool="threads", concurrency=2):
        result = flaky.delay()
        assert result.get(timeout=10) == "done"
    assert attempts == [0, 1, 2]
    assert retried == ["try again", "try again"]


def test_signals_fire_and_a_failing_handler_loses_nothing(app: Celeriac) -> None:
    events: list[str] = []

    @app.on("task_prerun")
    def prerun(task_id: str) -> None:
        events.append("prerun")

    @app.on("task_success")
    def broken(sender: Task[..., Any], result: Any) -> None:
        raise RuntimeError("handler bug")

    @app.on("task_success")
    def recorded(sender=None, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        events.append(f"success:{kwargs['result']}")

    @app.on("task_postrun")
    def postrun(state: str) -> None:
        events.append(f"postrun:{state}")

    for name in ("worker_init", "worker_process_init", "worker_ready", "worker_shutting_down", "worker_shutdown"):
        app.on(name)(lambda name=name, **kwargs: events.append(name))
    published: list[str] = []
    app.on("before_task_publish")(lambda headers: headers.__setitem__("x-seen", True))
    app.on("after_task_publish")(lambda headers: published.append(headers["x-seen"]))
    received: list[str] = []
    app.on("task_received")(lambda request: received.append(request.id))

    @app.task
    def hello() -> str:
        return "hi"

    with start_worker(app, pool="solo"):
        result = hello.delay()
        assert result.get(timeout=10) == "hi"
    assert published == [True]
    assert received == [result.id]
    assert events[:3] == ["worker_init", "worker_process_init", "worker_ready"]
    assert events[3:6] == ["prerun", "success:hi", "postrun:SUCCESS"]
    assert events[-2:] == ["worker_shutting_down", "worker_shutdown"]


def test_track_started_and_ignore_result(app: Celeriac) -> None:
    release = threading.Event()

    @app.task(track_started=True)
    def slow() -> str:
        release.wait(10)
        return "ok"

    @app.task(ignore_result=True)
    def quiet() -> str:
        return "not stored"

    with start_worker(app, pool="threads", concurrency=2):
        result = slow.delay()
        wait_for(lambda: result.state == states.STARTED)
        assert result.info["pid"] > 0
        release.set()
        assert result.get(timeout=10) == "ok"
        ignored = quiet.delay()
        wait_for(lambda: app.transport.queue_length("default") == 0)
    assert ignored.state == states.PENDING


def test_reject_and_ignore(app: Celeriac) -> None:
    @app.task
    def refuse() -> None:
        raise Reject("poison", requeue=False)

    @app.task
    def skip() -> None:
        raise Ignore()

    with start_worker(app, pool="solo"):
        rejected = refuse.delay()
        skipped = skip.delay()
        wait_for(lambda: app.transport.queue_length("default.dead-letter") == 1)
        wait_for(lambda: app.transport.queue_length("default") == 0)
    assert rejected.state == states.PENDING
    assert skipped.state == states.PENDING


def test_prefetch_never_exceeds_pool_capacity(app: Celeriac) -> None:
    release = threading.Event()

    @app.task
    def block() -> None:
        release.wait(10)

    for _ in range(10):
        block.delay()
    with start_worker(app, pool="threads", concurrency=2) as worker:
        wait_for(lambda: worker.info()["active"] == 2)
        assert worker.info()["reserved"] == 0
        assert app.transport.queue_length("default") == 8
        release.set()
        wait_for(lambda: app.transport.queue_length("default") == 0 and worker.info()["active"] == 0)


def test_warm_shutdown_finishes_running_tasks_and_hands_back_the_rest(app: Celeriac) -> None:
    started = threading.Event()
    release = threading.Event()

    @app.task
    def long() -> str:
        started.set()
        release.wait(10)
        return "finished"

    first = long.delay()
    for _ in range(3):
        long.delay()
    worker = app.Worker(pool="threads", concurrency=1, prefetch_multiplier=2, shutdown_timeout=10)
    worker.start()
    assert started.wait(10)
    wait_for(lambda: worker.info()["reserved"] == 1)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    release.set()
    stopper.join(15)
    assert worker.join(1)
    assert first.get(timeout=1) == "finished"
    assert app.transport.queue_length("default") == 3


def test_result_store_failure_requeues_the_message(app: Celeriac) -> None:
    calls: list[int] = []

    @app.task
    def once() -> int:
        calls.append(1)
        return len(calls)

    store = app.result_store
    original = store.set
    failures = iter([True])

    def flaky_set(record: Any, *, expires: float | None = None) -> None:
        if record.state == states.SUCCESS and next(failures, False):
            raise ConnectionError("store down")
        original(record, expires=expires)

    store.set = flaky_set  # type: ignore[method-assign]
    with start_worker(app, pool="solo"):
        assert once.delay().get(timeout=10) == 2
    assert len(calls) == 2


def test_revoked_ids_are_not_run(app: Celeriac) -> None:
    @app.task
    def work() -> str:
        return "ran"

    with start_worker(app, pool="solo") as worker:
        result = work.apply_async(task_id="revoke-me", countdown=0.2)
        worker.revoke("revoke-me")
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)


def test_async_def_task_runs_in_sync_pools(app: Celeriac) -> None:
    @app.task
    async def coro(x: int) -> int:
        return x + 1

    with start_worker(app, pool="threads", concurrency=1):
        assert coro.delay(1).get(timeout=10) == 2


def test_lease_is_kept_alive_for_long_tasks(app: Celeriac) -> None:
    name = app.conf.broker_url
    leased = Celeriac(
        broker_url=name,
        result_store=app.conf.result_store,
        environ={},
        set_as_current=False,
        broker_transport_options={"visibility_timeout": 0.3},
    )
    runs: list[int] = []
    release = threading.Event()

    @leased.task(name="t.long")
    def long_task() -> str:
        runs.append(1)
        release.wait(3)
        return "once"

    result = long_task.delay()
    with start_worker(leased, pool="threads", concurrency=2):
        wait_for(lambda: runs)
        time.sleep(1.2)  # four visibility timeouts pass while the task runs; the lease keeper must hold it
        release.set()
        assert result.get(timeout=10) == "once"
    assert runs == [1]
    leased.close()


def test_prefetch_follows_the_pool_size(app: Celeriac) -> None:
    @app.task
    def noop() -> None: ...

    with start_worker(app, pool="threads", concurrency=2, prefetch_multiplier=3) as worker:
        assert worker.transport is not None
        sent: list[int] = []
        worker.transport.set_prefetch = sent.append  # type: ignore[method-assign]
        assert worker.prefetch_limit == 6
        assert worker.pool is not None
        worker.pool.grow(2)
        noop.delay().get(timeout=10)
        wait_for(lambda: sent == [12])


def test_soft_time_limit_failure_says_which_limit(app: Celeriac) -> None:
    from celeriac import SoftTimeLimitExceeded

    @app.task(soft_time_limit=0.1)
    def spin() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)

    with start_worker(app, pool="threads", concurrency=1):
        result = spin.delay()
        with pytest.raises(SoftTimeLimitExceeded, match="exceeded its soft time limit"):
            result.get(timeout=10)


def test_reply_to_of_the_result_store_travels_with_the_message_and_back(app: Celeriac) -> None:
    store = app.result_store
    seen: list[str | None] = []
    original = store.set_many

    def recording(records: Any, *, expires: float | None = None) -> None:
        seen.extend(record.reply_to for record in records)
        original(records, expires=expires)

    type(store).reply_to = property(lambda self: "client-reply-queue")  # type: ignore[method-assign,assignment]
    try:
        store.set_many = recording  # type: ignore[method-assign]

        @app.task
        def echo(x: int) -> int:
            return x

        result = echo.delay(1)
        [delivery] = app.transport.fetch(["default"], limit=1, timeout=1)
        assert delivery.envelope.properties["reply_to"] == "client-reply-queue"
        app.transport.reject(delivery, requeue=True)
        with start_worker(app, pool="solo"):
            assert result.get(timeout=10) == 1
        assert seen == ["client-reply-queue"]
    finally:
        del type(store).reply_to  # type: ignore[attr-defined]
