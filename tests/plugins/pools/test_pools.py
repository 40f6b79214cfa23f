"""Tests of the built-in ``solo`` and ``threads`` pools and of the plugin's hooks."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import celeriac
import pluggy
import pytest
from celeriac import Pool, SoftTimeLimitExceeded, TimeLimitExceeded, TimeLimits, hookspecs
from celeriac.plugins import pools as pools_plugin
from celeriac.plugins.pools._asyncio import AsyncioPool
from celeriac.plugins.pools._solo import SoloPool
from celeriac.plugins.pools._threads import ThreadPool

WAIT = 5.0  # seconds any single wait may take before the test fails


class Outcomes:
    """Collects what a pool hands to ``on_done`` / ``on_error`` and lets a test wait for it."""

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.errors: list[BaseException] = []
        self.threads: list[str] = []
        self._changed = threading.Condition()

    def on_done(self, value: Any) -> None:
        with self._changed:
            self.done.append(value)
            self.threads.append(threading.current_thread().name)
            self._changed.notify_all()

    def on_error(self, exc: BaseException) -> None:
        with self._changed:
            self.errors.append(exc)
            self.threads.append(threading.current_thread().name)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> None:
        """Wait until ``count`` items have finished, one way or the other."""
        with self._changed:
            finished = self._changed.wait_for(lambda: len(self.done) + len(self.errors) >= count, timeout)
        assert finished, f"only {len(self.done)} done and {len(self.errors)} failed of {count} after {timeout}s"


def call_item(item: Callable[[], Any]) -> Any:
    """The runner used by most tests: items are callables."""
    return item()


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (for state with no event)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


def loop_until_limit() -> str:
    """A runner body that never ends by itself; returns a marker when the soft limit hits."""
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "soft limit"


@pytest.fixture(params=["solo", "threads", "asyncio"])
def pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A fresh, not yet started pool: ``solo``, or ``threads`` / ``asyncio`` with concurrency 4.
    (``processes`` needs picklable items: tests/plugins/pools/test_processes.py.)"""
    created: Pool
    if request.param == "solo":
        created = SoloPool(1)
    elif request.param == "threads":
        created = ThreadPool(4)
    else:
        created = AsyncioPool(4)
    yield created
    assert created.stop(timeout=WAIT), "the pool did not stop"


@pytest.fixture
def threads() -> Iterator[ThreadPool]:
    """A started ``threads`` pool with concurrency 4 running :func:`call_item`."""
    created = ThreadPool(4)
    created.start(call_item, lambda: None)
    yield created
    assert created.stop(timeout=WAIT), "the pool did not stop"


# -- every pool ---------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_results_go_to_on_done(pool: Pool) -> None:
    pool.start(lambda n: n * n, lambda: None)
    outcomes = Outcomes()
    for n in range(pool.size):
        pool.submit(n, outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(pool.size)
    assert sorted(outcomes.done) == [n * n for n in range(pool.size)]
    assert outcomes.errors == []


@pytest.mark.timeout(10)
def test_runner_exceptions_go_to_on_error(pool: Pool) -> None:
    def fail(item: str) -> None:
        raise ValueError(item)

    pool.start(fail, lambda: None)
    outcomes = Outcomes()
    pool.submit("boom", outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(1)
    assert outcomes.done == []
    assert [type(exc) for exc in outcomes.errors] == [ValueError]
    assert str(outcomes.errors[0]) == "boom"


@pytest.mark.timeout(10)
def test_process_init_is_called_once_in_the_starting_thread(pool: Pool) -> None:
    calls: list[int] = []
    pool.start(call_item, lambda: calls.append(threading.get_ident()))
    outcomes = Outcomes()
    for n in range(1, 4):
        pool.submit(lambda: None, outcomes.on_done, outcomes.on_error)
        outcomes.wait_for(n)
    assert calls == [threading.get_ident()]


@pytest.mark.timeout(10)
def test_stop_returns_true_after_items_and_is_idempotent(pool: Pool) -> None:
    pool.start(call_item, lambda: None)
    outcomes = Outcomes()
    for n in range(pool.size):
        pool.submit(lambda n=n: n, outcomes.on_done, outcomes.on_error)
    assert pool.stop(timeout=WAIT) is True
    assert sorted(outcomes.done) == list(range(pool.size))
    assert pool.stop(timeout=WAIT) is True


@pytest.mark.timeout(10)
def test_submit_after_stop_raises(pool: Pool) -> None:
    pool.start(call_item, lambda: None)
    assert pool.stop(timeout=WAIT)
    outcomes = Outcomes()
    with pytest.raises(RuntimeError, match="stopped"):
        pool.submit(lambda: None, outcomes.on_done, outcomes.on_error)
    assert outcomes.done == outcomes.errors == []


@pytest.mark.timeout(10)
def test_submit_before_start_raises(pool: Pool) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        pool.submit(lambda: None, Outcomes().on_done, Outcomes().on_error)


@pytest.mark.timeout(10)
def test_start_twice_raises(pool: Pool) -> None:
    pool.start(call_item, lambda: None)
    with pytest.raises(RuntimeError, match="already started"):
        pool.start(call_item, lambda: None)


@pytest.mark.timeout(10)
def test_resubmitting_from_on_done_does_not_deadlock(pool: Pool) -> None:
    pool.start(call_item, lambda: None)
    chain_length = 25
    finished = threading.Event()
    lock = threading.Lock()
    results: list[int] = []
    errors: list[BaseException] = []

    def on_done(value: int) -> None:
        with lock:
            results.append(value)
            count = len(results)
        if count == chain_length * pool.size:
            finished.set()
        elif value < chain_length - 1:
            pool.submit(lambda: value + 1, on_done, errors.append)

    for _ in range(pool.size):
        pool.submit(lambda: 0, on_done, errors.append)
    assert finished.wait(WAIT)
    assert collections.Counter(results) == {n: pool.size for n in range(chain_length)}
    assert errors == []


@pytest.mark.timeout(10)
def test_a_failing_callback_is_logged_and_the_pool_carries_on(pool: Pool, caplog: pytest.LogCaptureFixture) -> None:
    def broken_on_done(value: Any) -> None:
        raise RuntimeError("callback bug")

    pool.start(call_item, lambda: None)
    with caplog.at_level(logging.ERROR, logger="celeriac.pool"):
        pool.submit(lambda: "first", broken_on_done, Outcomes().on_error)
        assert wait_until(lambda: len(caplog.records) == 1)
    outcomes = Outcomes()
    pool.submit(lambda: "second", outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(1)
    assert outcomes.done == ["second"]
    record = caplog.records[0]
    assert record.name == "celeriac.pool"
    assert "on_done" in record.getMessage()
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "callback bug"


@pytest.mark.timeout(10)
def test_info_names_the_implementation_and_size(pool: Pool) -> None:
    pool.start(call_item, lambda: None)
    info = pool.info()
    assert info["implementation"] == f"{type(pool).__module__}:{type(pool).__qualname__}"
    assert info["max-concurrency"] == pool.size


# -- solo ---------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_solo_runs_inline_with_size_one() -> None:
    pool = SoloPool(8)
    pool.start(lambda item: threading.get_ident(), lambda: None)
    outcomes = Outcomes()
    pool.submit("x", outcomes.on_done, outcomes.on_error)
    assert outcomes.done == [threading.get_ident()]  # before submit returned, in this thread
    assert (SoloPool.runs_inline, pool.size, pool.name) == (True, 1, "solo")
    assert pool.stop(timeout=WAIT)


@pytest.mark.timeout(10)
def test_solo_ignores_time_limits() -> None:
    pool = SoloPool(1)
    pool.start(call_item, lambda: None)
    outcomes = Outcomes()
    deadline = time.monotonic() + 0.2
    pool.submit(
        lambda: wait_until(lambda: time.monotonic() > deadline),
        outcomes.on_done,
        outcomes.on_error,
        time_limits=TimeLimits(soft=0.05, hard=0.1),
    )
    assert outcomes.done == [True]
    assert pool.stop(timeout=WAIT)


@pytest.mark.timeout(10)
def test_solo_stop_from_inside_the_running_item_does_not_wait() -> None:
    pool = SoloPool(1)
    pool.start(lambda item: pool.stop(timeout=WAIT), lambda: None)
    outcomes = Outcomes()
    started = time.monotonic()
    pool.submit("x", outcomes.on_done, outcomes.on_error)
    assert outcomes.done == [False]
    assert time.monotonic() - started < WAIT
    assert pool.stop(timeout=0) is True


# -- threads ------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_threads_run_items_concurrently_on_named_pool_threads(threads: ThreadPool) -> None:
    barrier = threading.Barrier(4, timeout=5)
    outcomes = Outcomes()
    for n in range(4):
        threads.submit(lambda n=n: (barrier.wait(), n)[1], outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(4)
    assert outcomes.errors == []
    assert sorted(outcomes.done) == [0, 1, 2, 3]
    assert sorted(outcomes.threads) == [f"celeriac-pool-{n}" for n in range(1, 5)]
    info = threads.info()
    assert info["threads"] == [f"celeriac-pool-{n}" for n in range(1, 5)]
    assert threading.current_thread().name not in outcomes.threads
    assert all(thread.daemon for thread in threading.enumerate() if thread.name.startswith("celeriac-pool-"))


@pytest.mark.timeout(10)
def test_threads_refuse_more_items_than_their_size(threads: ThreadPool) -> None:
    release = threading.Event()
    outcomes = Outcomes()
    for _ in range(4):
        threads.submit(lambda: release.wait(WAIT), outcomes.on_done, outcomes.on_error)
    with pytest.raises(RuntimeError, match="full"):
        threads.submit(lambda: None, outcomes.on_done, outcomes.on_error)
    release.set()
    outcomes.wait_for(4)
    assert outcomes.done == [True] * 4


@pytest.mark.timeout(10)
def test_threads_grow_adds_concurrency() -> None:
    pool = ThreadPool(2)
    pool.start(call_item, lambda: None)
    pool.grow(2)
    assert pool.size == 4
    barrier = threading.Barrier(4, timeout=5)
    outcomes = Outcomes()
    for _ in range(4):
        pool.submit(barrier.wait, outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(4)
    assert outcomes.errors == []
    assert sorted(outcomes.done) == [0, 1, 2, 3]  # Barrier.wait returns each party's index
    assert len(pool.info()["threads"]) == 4
    assert pool.stop(timeout=WAIT)


@pytest.mark.timeout(10)
def test_threads_shrink_lets_running_items_finish(threads: ThreadPool) -> None:
    barrier = threading.Barrier(4, timeout=5)
    outcomes = Outcomes()
    for _ in range(3):
        threads.submit(barrier.wait, outcomes.on_done, outcomes.on_error)
    threads.shrink(2)
    assert threads.size == 2
    barrier.wait()  # the three items are still running: release them
    outcomes.wait_for(3)
    assert outcomes.errors == []
    assert wait_until(lambda: len(threads.info()["threads"]) == 2)
    assert threads.info()["max-concurrency"] == 2

    pair = threading.Barrier(2, timeout=5)
    after = Outcomes()
    for _ in range(2):
        threads.submit(pair.wait, after.on_done, after.on_error)
    with pytest.raises(RuntimeError, match="full"):
        threads.submit(lambda: None, after.on_done, after.on_error)
    after.wait_for(2)
    assert sorted(after.done) == [0, 1]


@pytest.mark.timeout(10)
def test_threads_grow_and_shrink_check_their_argument(threads: ThreadPool) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        threads.grow(0)
    with pytest.raises(ValueError, match="cannot shrink"):
        threads.shrink(4)
    assert threads.size == 4


@pytest.mark.timeout(10)
def test_threads_survive_failing_callbacks_on_every_thread(
    threads: ThreadPool, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(value: Any) -> None:
        raise KeyError(value)

    barrier = threading.Barrier(4, timeout=5)
    with caplog.at_level(logging.ERROR, logger="celeriac.pool"):
        for _ in range(4):  # the barrier puts one item, and one failing callback, on every thread
            threads.submit(barrier.wait, broken, broken)
        assert wait_until(lambda: len(caplog.records) == 4)
    second = threading.Barrier(4, timeout=5)
    outcomes = Outcomes()
    for _ in range(4):
        threads.submit(second.wait, outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(4)
    assert sorted(outcomes.done) == [0, 1, 2, 3]
    assert len(threads.info()["threads"]) == 4


@pytest.mark.timeout(10)
def test_threads_stop_times_out_while_an_item_runs(threads: ThreadPool) -> None:
    release = threading.Event()
    outcomes = Outcomes()
    threads.submit(lambda: release.wait(WAIT), outcomes.on_done, outcomes.on_error)
    assert threads.stop(timeout=0.05) is False
    with pytest.raises(RuntimeError, match="stopped"):
        threads.submit(lambda: None, outcomes.on_done, outcomes.on_error)
    release.set()
    assert threads.stop(timeout=WAIT) is True
    assert outcomes.done == [True]
    assert threads.info()["threads"] == []


@pytest.mark.timeout(10)
def test_threads_soft_time_limit_raises_inside_the_item(threads: ThreadPool) -> None:
    outcomes = Outcomes()
    threads.submit(loop_until_limit, outcomes.on_done, outcomes.on_error, time_limits=TimeLimits(soft=0.1))
    outcomes.wait_for(1)
    assert outcomes.done == ["soft limit"]


@pytest.mark.timeout(10)
def test_threads_hard_time_limit_raises_time_limit_exceeded_after_the_soft_one(threads: ThreadPool) -> None:
    def ignores_soft_limit() -> None:
        if loop_until_limit() == "soft limit":
            soft_seen.set()
        while True:
            time.sleep(0.01)

    soft_seen = threading.Event()
    outcomes = Outcomes()
    threads.submit(ignores_soft_limit, outcomes.on_done, outcomes.on_error, time_limits=TimeLimits(soft=0.05, hard=0.2))
    outcomes.wait_for(1)
    assert soft_seen.is_set()
    assert outcomes.done == []
    assert [type(exc) for exc in outcomes.errors] == [TimeLimitExceeded]


@pytest.mark.timeout(10)
def test_threads_time_limit_does_not_fire_into_a_later_item() -> None:
    pool = ThreadPool(1)
    pool.start(call_item, lambda: None)
    outcomes = Outcomes()
    pool.submit(lambda: "fast", outcomes.on_done, outcomes.on_error, time_limits=TimeLimits(soft=0.1, hard=0.15))
    outcomes.wait_for(1)
    stale_deadline = time.monotonic() + 0.3  # well past both limits of the fast item

    def slow() -> str:
        while time.monotonic() < stale_deadline:
            time.sleep(0.01)
        return "slow"

    # same thread, armed with its own (long) limits: only a check of *which* item runs saves it
    pool.submit(slow, outcomes.on_done, outcomes.on_error, time_limits=TimeLimits(soft=5, hard=6))
    outcomes.wait_for(2)
    assert outcomes.errors == []
    assert outcomes.done == ["fast", "slow"]
    assert pool.stop(timeout=WAIT)


@pytest.mark.timeout(10)
def test_threads_thousand_items_complete_exactly_once(threads: ThreadPool) -> None:
    slots = threading.Semaphore(threads.size)  # never more outstanding than the size, as the worker does
    lock = threading.Lock()
    seen: collections.Counter[int] = collections.Counter()
    errors: list[BaseException] = []
    all_done = threading.Event()

    def on_done(value: int) -> None:
        with lock:
            seen[value] += 1
            if seen.total() == 1000:
                all_done.set()
        slots.release()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        slots.release()

    for n in range(1000):
        assert slots.acquire(timeout=WAIT)
        threads.submit(lambda n=n: n, on_done, on_error, time_limits=TimeLimits(soft=30) if n % 2 else None)
    assert all_done.wait(WAIT)
    assert errors == []
    assert seen == collections.Counter(range(1000))


# -- hooks --------------------------------------------------------------------------------------


def test_hooks_create_the_pools_by_name() -> None:
    solo = pools_plugin.celeriac_pool(name="solo", concurrency=3, options={}, app=None)
    threads = pools_plugin.celeriac_pool(name="threads", concurrency=3, options={}, app=None)
    assert isinstance(solo, SoloPool)
    assert solo.size == 1
    assert isinstance(threads, ThreadPool)
    assert threads.size == 3
    assert pools_plugin.celeriac_pool(name="nope", concurrency=3, options={}, app=None) is None
    assert list(pools_plugin.celeriac_pool_names()) == ["asyncio", "processes", "solo", "threads"]


def test_hooks_match_their_specs() -> None:
    manager = pluggy.PluginManager("celeriac")
    manager.add_hookspecs(hookspecs)
    manager.register(pools_plugin)
    manager.check_pending()
    created = manager.hook.celeriac_pool(name="threads", concurrency=2, options={}, app=None)
    assert isinstance(created, celeriac.Pool)
    assert created.name == "threads"
    assert manager.hook.celeriac_pool(name="gevent-of-the-future", concurrency=2, options={}, app=None) is None
    assert manager.hook.celeriac_pool_names() == [["asyncio", "processes", "solo", "threads"]]


@pytest.mark.timeout(10)
def test_threads_stats_count_busy_idle_and_processed(threads: ThreadPool) -> None:
    release = threading.Event()
    outcomes = Outcomes()
    threads.submit(lambda: release.wait(WAIT), outcomes.on_done, outcomes.on_error)
    stats = threads.stats()
    assert (stats["busy"], stats["idle"], stats["processed"]) == (1, 3, 0)
    release.set()
    outcomes.wait_for(1)
    assert wait_until(lambda: threads.stats()["processed"] == 1)
    assert threads.stats()["busy"] == 0


def test_an_outcome_crosses_the_pipe_with_every_field() -> None:
    """``Outcome`` pickles positionally (the processes pool sends one back per task): a field
    added or reordered must still round-trip."""
    import dataclasses
    import pickle

    from celeriac._execution import Outcome

    values = {
        field.name: f"value of {field.name}" for field in dataclasses.fields(Outcome) if field.name != "exception"
    }
    outcome = Outcome(**values, exception=ValueError("boom"))  # type: ignore[arg-type]
    copy = pickle.loads(pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL))
    assert {name: getattr(copy, name) for name in values} == values
    assert isinstance(copy.exception, ValueError) and copy.exception.args == ("boom",)
