"""``AsyncResult.aget()``: many waits hold no thread of the loop's default executor, a
cancelled wait stops reading the store, and the value / error / timeout are those of ``get()``."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celeriac import Celeriac, TimeoutError, states
from celeriac._exceptions_data import exception_to_data
from celeriac.result import AsyncResult, GroupResult

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., Celeriac]


class CountingReads:
    """Counts the reads of the app's real result store (in flight and in all)."""

    def __init__(self, app: Celeriac) -> None:
        store = app.result_store
        self.real_get = store.get
        self.lock = threading.Lock()
        self.in_flight = 0
        self.total = 0
        store.get = self.get  # type: ignore[method-assign]

    def get(self, task_id: str) -> Any:
        with self.lock:
            self.in_flight += 1
            self.total += 1
        try:
            return self.real_get(task_id)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_many_waits_leave_the_default_executor_free_and_cancel_promptly(make_app: MakeApp) -> None:
    app = make_app()
    reads = CountingReads(app)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        waits = [asyncio.ensure_future(AsyncResult(str(uuid.uuid4()), app).aget(timeout=50)) for _ in range(200)]
        while reads.total < 400:  # every wait has read the store at least twice
            await asyncio.sleep(0.01)
        # the default executor (used by getaddrinfo and friends) is not tied up by the waits
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "free"), timeout=10) == "free"
        assert not any(wait.done() for wait in waits)
        for wait in waits:
            wait.cancel()
        finished, _ = await asyncio.wait(waits, timeout=10)
        assert len(finished) == 200
        assert all(wait.cancelled() for wait in waits)
        while reads.in_flight:
            await asyncio.sleep(0.01)
        before = reads.total
        await asyncio.sleep(0.3)  # longer than the slowest poll interval
        assert reads.total == before, "a cancelled aget() kept reading the store"

    asyncio.run(scenario())


def test_aget_returns_values_raises_errors_and_times_out(make_app: MakeApp) -> None:
    app = make_app()
    done, failed, pending = (str(uuid.uuid4()) for _ in range(3))
    app.store_result(done, states.SUCCESS, {"answer": 42})
    app.store_result(failed, states.FAILURE, exception_to_data(ValueError("boom")))

    async def scenario() -> None:
        assert await AsyncResult(done, app).aget(timeout=5) == {"answer": 42}
        with pytest.raises(ValueError, match="boom"):
            await AsyncResult(failed, app).aget(timeout=5)
        assert isinstance(await AsyncResult(failed, app).aget(timeout=5, propagate=False), ValueError)
        with pytest.raises(TimeoutError, match="did not finish within 0.05s"):
            await AsyncResult(pending, app).aget(timeout=0.05)
        later = asyncio.ensure_future(AsyncResult(pending, app).aget(timeout=10))
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, app.store_result, pending, states.SUCCESS, "late")
        assert await later == "late"
        group = GroupResult(str(uuid.uuid4()), [AsyncResult(done, app), AsyncResult(pending, app)], app)
        assert await group.aget(timeout=5) == [{"answer": 42}, "late"]

    asyncio.run(scenario())


def test_eager_results_aget_at_once() -> None:
    app = Celeriac("tests", environ={}, broker_url="memory://", result_store="memory://")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        assert asyncio.run(add.apply((1, 2)).aget()) == 3
    finally:
        app.close()
