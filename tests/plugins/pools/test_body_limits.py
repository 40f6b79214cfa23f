"""Time limits cover the task body only (review of issue 6): a soft limit that passes while the
task's success handlers run, or while it publishes the next step of its chain, leaves the task
SUCCESS; and ``Pool.running_pid`` names the process running an item.

Processes-pool handlers talk to the test through files in ``tmp_path`` (a child shares no memory
with the test).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, Pool, SoftTimeLimitExceeded, TimeLimits, states
from celeriac.pool import _body_return, body_returned
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., Celeriac]
LIMIT = 0.3  # the soft limit of the quick task; its success handler runs twice as long


@pytest.mark.parametrize("pool", ["processes", "threads", "asyncio"])
def test_a_soft_limit_passing_in_success_handlers_leaves_the_task_successful(
    make_app: MakeApp, pool: str, tmp_path: Path
) -> None:
    app = make_app()
    queue = f"pools-{uuid.uuid4().hex[:8]}"
    # a pool child cannot publish the next step to an in-memory broker
    chain_runs = not (pool == "processes" and app.conf.broker_url.startswith("memory://"))

    @app.task(name="t.quick", soft_time_limit=LIMIT)
    def quick(x: int) -> int:
        return x + 1

    @app.task(name="t.double")
    def double(x: int) -> int:
        return 2 * x

    @app.on("task_success")
    def slow_handler(sender: Any, result: Any) -> None:
        if sender.name != "t.quick":
            return
        try:
            time.sleep(2 * LIMIT)  # the handler itself outlives the soft limit
        except SoftTimeLimitExceeded:
            (tmp_path / f"interrupted-{result}").touch()
            raise
        (tmp_path / f"completed-{result}").touch()

    with start_worker(app, pool=pool, concurrency=2, queues=[queue]):
        result = quick.apply_async((1,), queue=queue)
        assert result.get(timeout=20) == 2
        assert result.state == states.SUCCESS
        if chain_runs:
            chained = (quick.s(10).set(queue=queue) | double.s().set(queue=queue)).apply_async()
            assert chained.get(timeout=20) == 22
    assert not list(tmp_path.glob("interrupted-*")), "the soft limit fired inside a success handler"
    assert (tmp_path / "completed-2").exists()
    if chain_runs:
        assert (tmp_path / "completed-11").exists()


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_the_soft_limit_still_interrupts_the_body(make_app: MakeApp, pool: str) -> None:
    app = make_app()
    queue = f"pools-{uuid.uuid4().hex[:8]}"

    @app.task(name="t.slow", soft_time_limit=LIMIT)
    def slow() -> str:
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "interrupted"

    with start_worker(app, pool=pool, concurrency=1, queues=[queue]):
        assert slow.apply_async(queue=queue).get(timeout=20) == "interrupted"


def test_threads_pool_item_runs_without_a_hook_left_behind() -> None:
    """The hook is set only around an item with limits, and cleared after it."""
    from celeriac.plugins.pools._threads import ThreadPool

    seen: list[Any] = []
    done: list[Any] = []

    def runner(item: str) -> str:
        seen.append(_body_return.get())
        body_returned()  # what execute() does when the body returns
        seen.append(_body_return.get())
        return item

    pool = ThreadPool(1)
    pool.start(runner, lambda: None)
    try:
        pool.submit("limited", done.append, done.append, time_limits=TimeLimits(soft=30))
        wait_for(lambda: done, message="the first item did not finish")
        wait_for(lambda: pool.stats()["busy"] == 0, message="the slot was not freed")
        pool.submit("unlimited", done.append, done.append)
        wait_for(lambda: len(done) == 2, message="the items did not finish")
    finally:
        assert pool.stop(timeout=10)
    assert done == ["limited", "unlimited"]
    assert callable(seen[0]) and seen[1] is None  # set for the limited item, fired once
    assert seen[2:] == [None, None]  # nothing for the item without limits


def test_body_returned_calls_the_hook_once_in_this_context_only() -> None:
    calls: list[str] = []
    Pool.on_body_return(lambda: calls.append("disarmed"))
    try:
        body_returned()
        body_returned()
    finally:
        Pool.on_body_return(None)
    assert calls == ["disarmed"]


def test_an_eager_task_inside_a_body_does_not_disarm_the_outer_limit(make_app: MakeApp) -> None:
    app = make_app()
    calls: list[str] = []

    @app.task(name="t.inner")
    def inner() -> int:
        return 1

    @app.task(name="t.outer")
    def outer() -> int:
        value = inner.apply().get()
        calls.append(f"after inner: {len(calls)}")
        return value

    from celeriac._execution import execute
    from celeriac.task import Request

    Pool.on_body_return(lambda: calls.append("disarmed"))
    try:
        outcome = execute(outer, Request(id=str(uuid.uuid4()), task="t.outer", args=[], kwargs={}))
    finally:
        Pool.on_body_return(None)
    assert outcome.state == states.SUCCESS
    assert calls == ["after inner: 0", "disarmed"]


# -- Pool.running_pid ---------------------------------------------------------------------------


def test_in_process_pools_run_items_in_this_process() -> None:
    from celeriac.plugins.pools._asyncio import AsyncioPool
    from celeriac.plugins.pools._solo import SoloPool
    from celeriac.plugins.pools._threads import ThreadPool

    for pool in (ThreadPool(1), SoloPool(1), AsyncioPool(1)):
        assert pool.running_pid("anything") is None


def _sleep_in_child(item: tuple[str, float]) -> int:
    mark, seconds = item
    Path(mark).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def test_processes_running_pid_is_the_child_running_the_item(tmp_path: Path) -> None:
    from celeriac.plugins.pools._processes import ProcessPool

    pool = ProcessPool(2)
    pool.start(_sleep_in_child, lambda: None)
    done: list[Any] = []
    try:
        mark = tmp_path / "running"
        item = (str(mark), 1.0)
        assert pool.running_pid(item) is None  # not submitted
        pool.submit(item, done.append, done.append)
        wait_for(mark.exists, message="the item did not start")
        pid = pool.running_pid(item)
        assert pid == int(mark.read_text())
        assert pid in pool.stats()["processes"]
        assert pid != os.getpid()
        assert pool.running_pid((str(mark), 1.0)) is None  # an equal item, not this one
        wait_for(lambda: done, message="the item did not finish")
        assert done == [pid]
        assert pool.running_pid(item) is None  # finished
    finally:
        assert pool.stop(timeout=10)
