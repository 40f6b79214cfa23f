"""Per-task rate limits: parsing, the limiter's schedule, and a real worker that neither starves
other tasks nor hoards prefetch while rate-limited messages wait (in the broker)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from celeriac import Celeriac
from celeriac.testing import start_worker, wait_for
from celeriac.worker._ratelimit import RATE_SLOT_HEADER, RateLimits, parse_rate

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 30


@pytest.mark.parametrize(
    ("limit", "per_second"),
    [("10/s", 10.0), ("100/m", 100 / 60), ("5/h", 5 / 3600), ("2.5", 2.5), (" 3 / m ", 0.05), (4, 4.0)],
)
def test_parse_rate(limit: str | float, per_second: float) -> None:
    assert parse_rate(limit) == pytest.approx(per_second)


@pytest.mark.parametrize("limit", [None, 0, "0/s"])
def test_no_limit(limit: str | float | None) -> None:
    assert parse_rate(limit) is None


@pytest.mark.parametrize("limit", ["10/x", "fast", "-1/s", "1/s/s", True])
def test_a_bad_rate_is_refused_when_the_task_is_declared(app: Celeriac, limit: object) -> None:
    with pytest.raises(ValueError, match=r"rate_limit of t\.bad"):
        app.task(name="t.bad", rate_limit=limit)(lambda: None)


def test_starts_are_spaced_and_reservations_are_honoured() -> None:
    limits = RateLimits()
    assert limits.admit("t", "2/s", None, now=100.0) is None  # the first starts at once
    second = limits.admit("t", "2/s", None, now=100.0)
    third = limits.admit("t", "2/s", None, now=100.1)
    assert second is not None and third is not None
    assert second[0] == pytest.approx(100.5) and third[0] == pytest.approx(101.0)
    # back from the broker at its time: it runs, without taking another start
    assert limits.admit("t", "2/s", second[1], now=100.5) is None
    # back too early: it waits again for the same start
    assert limits.admit("t", "2/s", third[1], now=100.6) == (third[0], third[1])
    # a reservation made by another worker (or an earlier run) counts as a new arrival
    foreign = RateLimits().admit("t", "2/s", None, now=100.0)
    assert foreign is None
    stranger = limits.admit("t", "2/s", "someone-else:100.0", now=100.6)
    assert stranger is not None and stranger[0] == pytest.approx(101.5)
    assert limits.admit("other", "2/s", None, now=100.6) is None  # limits are per task name
    assert limits.admit("t", None, None, now=100.6) is None  # no limit
    assert limits.deferred == 4


def test_a_changed_limit_keeps_the_promised_schedule() -> None:
    limits = RateLimits()
    assert limits.admit("t", "1/s", None, now=10.0) is None
    promised = limits.admit("t", "10/s", None, now=10.0)  # the 1/s start already promised holds
    then = limits.admit("t", "10/s", None, now=10.0)  # and the new rate applies after it
    assert promised is not None and promised[0] == pytest.approx(11.0)
    assert then is not None and then[0] == pytest.approx(11.1)


def test_waiting_messages_neither_starve_other_tasks_nor_hold_prefetch(workflow_app: Celeriac) -> None:
    runs: list[str] = []

    @workflow_app.task(name="t.limited", rate_limit="1/m")
    def limited(i: int) -> None:
        runs.append(f"limited {i}")

    @workflow_app.task(name="t.fast")
    def fast(i: int) -> int:
        runs.append(f"fast {i}")
        return i

    for i in range(3):
        limited.delay(i)
    fast_results = [fast.delay(i) for i in range(5)]
    with start_worker(workflow_app, concurrency=1) as worker:
        assert [r.get(timeout=TIMEOUT) for r in fast_results] == [0, 1, 2, 3, 4]
        wait_for(lambda: worker.info()["active"] == 0, timeout=TIMEOUT)
        info = worker.info()
        assert info["rate_limited"] == 2  # two limited messages wait for their minute ...
        assert info["reserved"] == 0  # ... but not in this worker
        assert workflow_app.transport.queue_length("default") == 0  # ... nor on the queue: delayed in the broker
    assert [run for run in runs if run.startswith("limited")] == ["limited 0"]
    assert sorted(run for run in runs if run.startswith("fast")) == [f"fast {i}" for i in range(5)]


def test_limited_tasks_start_evenly_spaced(workflow_app: Celeriac) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @workflow_app.task(name="t.spaced", rate_limit="5/s")
    def spaced() -> None:
        with lock:
            starts.append(time.time())

    results = [spaced.delay() for _ in range(4)]
    with start_worker(workflow_app, concurrency=4) as worker:
        for result in results:
            result.get(timeout=TIMEOUT)
        assert worker.info()["rate_limited"] >= 3
    starts.sort()
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= 0.2 - 0.03 for gap in gaps), gaps  # 1/5 s apart (ETA tolerance 20 ms)


def test_the_reservation_header_does_not_reach_the_task(app: Celeriac) -> None:
    seen: list[dict[str, object]] = []

    @app.task(name="t.headers", bind=True, rate_limit="20/s")
    def headers(self: object) -> None:
        seen.append(dict(self.request.headers))  # type: ignore[attr-defined]

    results = [headers.delay() for _ in range(3)]
    with start_worker(app, concurrency=2):
        for result in results:
            result.get(timeout=TIMEOUT)
    assert len(seen) == 3
    assert all(RATE_SLOT_HEADER not in request_headers for request_headers in seen)
