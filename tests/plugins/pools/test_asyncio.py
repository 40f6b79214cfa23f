"""Tests of the ``asyncio`` pool on its own: the runner returns coroutines, ``Pool.InThread``
or plain values."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celeriac import Pool, SoftTimeLimitExceeded, Terminated, TimeLimitExceeded, TimeLimits, WorkerLostError
from celeriac.plugins.pools._asyncio import AsyncioPool
from celeriac.testing import wait_for

from .conftest import Outcomes

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0


def call(item: Callable[[], Any]) -> Any:
    return item()


def run(pool: AsyncioPool, item: Callable[[], Any], limits: TimeLimits | None = None) -> Outcomes:
    outcomes = Outcomes()
    pool.submit(item, outcomes.on_done, outcomes.on_error, time_limits=limits)
    outcomes.wait_for(1)
    return outcomes


@pytest.fixture
def pool() -> Iterator[AsyncioPool]:
    created = AsyncioPool(100)
    created.start(call, lambda: None)
    yield created
    assert created.stop(timeout=WAIT)


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


async def nap_until_soft_limit() -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.01)  # cleaning up may await
        return "soft limit"
    return "not interrupted"


def test_coroutines_run_concurrently_on_one_loop_thread(pool: AsyncioPool) -> None:
    threads: set[str] = set()

    async def job() -> str:
        threads.add(threading.current_thread().name)
        return await nap(0.2)

    outcomes = Outcomes()
    started = time.monotonic()
    for _ in range(100):
        pool.submit(job, outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(100)
    assert outcomes.done == ["slept"] * 100
    assert time.monotonic() - started < WAIT
    assert threads == {"celeriac-asyncio-loop"}
    assert pool.stats()["busy"] == 0
    assert pool.info()["loop"] in ("asyncio", "uvloop")


def test_in_thread_work_never_runs_on_the_loop(pool: AsyncioPool) -> None:
    result = run(pool, lambda: Pool.InThread(lambda: threading.current_thread().name)).done
    assert result[0].startswith("celeriac-asyncio")
    assert result[0] != "celeriac-asyncio-loop"
    failed = run(pool, lambda: Pool.InThread(lambda: 1 / 0)).errors
    assert [type(exc) for exc in failed] == [ZeroDivisionError]


def test_soft_limit_raises_at_the_await_and_the_task_may_recover(pool: AsyncioPool) -> None:
    assert run(pool, nap_until_soft_limit, TimeLimits(soft=0.1, hard=5)).done == ["soft limit"]
    assert run(pool, lambda: nap(0.2), TimeLimits(soft=5)).done == ["slept"]  # no stale limit


def test_hard_limit_cancels_the_coroutine(pool: AsyncioPool) -> None:
    cleaned: list[bool] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(True)

    errors = run(pool, stubborn, TimeLimits(hard=0.1)).errors
    assert [type(exc) for exc in errors] == [TimeLimitExceeded]
    assert cleaned == [True]


def test_limits_apply_to_in_thread_work_too(pool: AsyncioPool) -> None:
    def loop_until_soft_limit() -> str:
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "soft limit"

    assert run(pool, lambda: Pool.InThread(loop_until_soft_limit), TimeLimits(soft=0.1)).done == ["soft limit"]


def test_terminate_cancels_with_terminated(pool: AsyncioPool) -> None:
    def item() -> Any:
        return nap(30)

    outcomes = Outcomes()
    pool.submit(item, outcomes.on_done, outcomes.on_error)
    wait_for(lambda: pool.stats()["busy"] == 1)
    assert pool.terminate(item, 15)
    outcomes.wait_for(1)
    assert [type(exc) for exc in outcomes.errors] == [Terminated]
    assert pool.terminate(lambda: None, 15) is False


def test_stop_timeout_cancels_what_still_runs() -> None:
    pool = AsyncioPool(4)
    pool.start(call, lambda: None)
    outcomes = Outcomes()
    pool.submit(lambda: nap(30), outcomes.on_done, outcomes.on_error)
    wait_for(lambda: pool.stats()["busy"] == 1)
    assert pool.stop(timeout=0.1) is False
    assert [type(exc) for exc in outcomes.errors] == [WorkerLostError]
    assert pool.stop(timeout=0.1) is False  # the answer stands


def test_grow_shrink_and_options(pool: AsyncioPool) -> None:
    pool.grow(10)
    assert pool.size == 110
    pool.shrink(100)
    assert pool.size == 10
    with pytest.raises(ValueError, match="cannot shrink"):
        pool.shrink(10)
    with pytest.raises(ValueError, match="unknown option"):
        AsyncioPool(1, {"workers": 3})
    with pytest.raises(ValueError, match="positive integer"):
        AsyncioPool(1, {"threads": 0})
    assert AsyncioPool(1000).threads == 32
    assert AsyncioPool(4, {"threads": 2, "uvloop": False}).threads == 2
