"""Tests of the ``processes`` pool on its own: items are picklable tuples run by :func:`runner`
(inherited by the forked children)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import SoftTimeLimitExceeded, TimeLimitExceeded, TimeLimits, WorkerLostError
from celeriac.exceptions import Terminated
from celeriac.plugins.pools._processes import ProcessPool
from celeriac.testing import wait_for

from .conftest import Outcomes

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0
_initialised_in: list[int] = []  # set in each child by process_init
_ballast: list[bytes] = []


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not today")


def process_init() -> None:
    _initialised_in.append(os.getpid())


def runner(item: tuple[str, Any]) -> Any:
    kind, argument = item
    if kind == "echo":
        return argument
    if kind == "whoami":
        return os.getpid(), list(_initialised_in)
    if kind == "raise":
        raise ValueError(argument)
    if kind == "raise-unpicklable":
        raise Unpicklable(argument)
    if kind == "return-unpicklable":
        return threading.Lock()
    if kind == "exit":
        os._exit(argument)
    if kind == "sleep":
        try:
            time.sleep(argument)
        except SoftTimeLimitExceeded:
            return "soft limit"
        return "slept"
    if kind == "mark-then-sleep":  # the test waits for the mark: the task is running
        mark, seconds = argument
        Path(mark).touch()
        return runner(("sleep", seconds))
    if kind == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(argument)
        return "slept"
    if kind == "grow-memory":
        _ballast.append(b"x" * argument)
        return os.getpid()
    raise AssertionError(f"unknown item kind {kind}")


def run(pool: ProcessPool, item: tuple[str, Any], limits: TimeLimits | None = None) -> Outcomes:
    outcomes = Outcomes()
    pool.submit(item, outcomes.on_done, outcomes.on_error, time_limits=limits)
    outcomes.wait_for(1)
    return outcomes


def pids(pool: ProcessPool) -> set[int]:
    return set(pool.stats()["processes"])


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    """A started pool of two children."""
    created = ProcessPool(2)
    created.start(runner, process_init)
    yield created
    assert created.stop(timeout=WAIT)


def test_results_errors_and_process_init_in_every_child(pool: ProcessPool) -> None:
    assert run(pool, ("echo", {"a": [1, 2]})).done == [{"a": [1, 2]}]
    child, initialised = run(pool, ("whoami", None)).done[0]
    assert child in pids(pool)
    assert child != os.getpid()
    assert initialised == [child]  # process_init ran in that child, once
    assert _initialised_in == []  # ... and not in the worker process
    failed = run(pool, ("raise", "boom")).errors
    assert [type(exc) for exc in failed] == [ValueError]
    assert str(failed[0]) == "boom"


def test_large_items_and_replies_cross_the_pipes_whole(pool: ProcessPool) -> None:
    """Frames larger than a pipe's buffer arrive in many reads, on both sides."""
    big = bytes(range(256)) * 20_000  # 5 MB
    assert run(pool, ("echo", big)).done == [big]
    several = Outcomes()
    for size in (70_000, 300_000):  # both children at once
        pool.submit(("echo", b"y" * size), several.on_done, several.on_error)
    several.wait_for(2)
    assert sorted(map(len, several.done)) == [70_000, 300_000]


def test_what_does_not_pickle_fails_the_item_not_the_pool(pool: ProcessPool) -> None:
    assert "does not pickle" in str(run(pool, ("raise-unpicklable", "x")).errors[0])
    assert "cannot send the item's result back" in str(run(pool, ("return-unpicklable", None)).errors[0])
    outcomes = Outcomes()
    pool.submit(("echo", threading.Lock()), outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(1)
    assert [type(exc) for exc in outcomes.errors] == [TypeError]
    assert run(pool, ("echo", 1)).done == [1]


def test_a_dead_child_fails_its_item_and_is_replaced(pool: ProcessPool) -> None:
    before = pids(pool)
    errors = run(pool, ("exit", 3)).errors
    assert [type(exc) for exc in errors] == [WorkerLostError]
    assert "exit code 3" in str(errors[0])
    wait_for(lambda: len(pids(pool)) == 2 and pids(pool) != before, message="the dead child was not replaced")
    assert len(pids(pool) & before) == 1
    assert run(pool, ("echo", "still serving")).done == ["still serving"]


def test_hard_limit_kills_and_replaces_only_that_child(pool: ProcessPool) -> None:
    busy = Outcomes()
    pool.submit(("sleep", 2), busy.on_done, busy.on_error)  # the other child, no limit
    errors = run(pool, ("sleep", 30), TimeLimits(hard=0.3)).errors
    assert [type(exc) for exc in errors] == [TimeLimitExceeded]
    assert "hard time limit (0.3s)" in str(errors[0])
    busy.wait_for(1)
    assert busy.done == ["slept"]  # untouched by the kill next door


def test_hard_limit_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    pool = ProcessPool(1, {"term_grace": 0.2})
    pool.start(runner, process_init)
    try:
        started = time.monotonic()
        errors = run(pool, ("ignore-sigterm", 30), TimeLimits(hard=0.2)).errors
        assert [type(exc) for exc in errors] == [TimeLimitExceeded]
        assert time.monotonic() - started < WAIT
    finally:
        assert pool.stop(timeout=WAIT)


def test_soft_limit_raises_inside_the_task(pool: ProcessPool) -> None:
    assert run(pool, ("sleep", 30), TimeLimits(soft=0.2, hard=10)).done == ["soft limit"]
    assert run(pool, ("sleep", 0.3), TimeLimits(soft=0.1)).done == ["soft limit"]
    assert run(pool, ("echo", "next item is not hit by a stale limit"), TimeLimits(soft=5)).done


def test_terminate(pool: ProcessPool, tmp_path: Path) -> None:
    # SIGUSR1 only interrupts a running task: wait until the task itself says it runs
    mark = tmp_path / "running"
    item = ("mark-then-sleep", (str(mark), 30))
    outcomes = Outcomes()
    pool.submit(item, outcomes.on_done, outcomes.on_error)
    wait_for(mark.exists, message="the task did not start")
    assert pool.terminate(item, signal.SIGUSR1)  # SIGUSR1: SoftTimeLimitExceeded in the task
    outcomes.wait_for(1)
    assert outcomes.done == ["soft limit"]

    again = Outcomes()
    item = ("sleep", 30)
    pool.submit(item, again.on_done, again.on_error)
    wait_for(lambda: pool.stats()["busy"] == 1)
    assert pool.terminate(item, signal.SIGTERM)
    again.wait_for(1)
    assert [type(exc) for exc in again.errors] == [Terminated]
    assert "SIGTERM" in str(again.errors[0])
    assert pool.terminate(("not", "running"), signal.SIGTERM) is False


def test_max_tasks_per_child_recycles_between_items() -> None:
    pool = ProcessPool(1, {"max_tasks_per_child": 2})
    pool.start(runner, process_init)
    try:
        seen = [run(pool, ("whoami", None)).done[0][0] for _ in range(6)]
        assert len(set(seen)) == 3
        assert seen[0] == seen[1] != seen[2] == seen[3] != seen[4] == seen[5]
    finally:
        assert pool.stop(timeout=WAIT)


def test_max_memory_per_child_recycles_a_child_that_grew() -> None:
    # A forked child starts about as big as this (test) process is now; allow 60 MB on top.
    with open("/proc/self/statm") as statm:
        baseline = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024  # resident KiB
    pool = ProcessPool(1, {"max_memory_per_child": baseline + 60_000})  # KiB
    pool.start(runner, process_init)
    try:
        first = run(pool, ("grow-memory", 1024)).done[0]
        assert run(pool, ("grow-memory", 1024)).done[0] == first  # small: kept
        assert run(pool, ("grow-memory", 100 * 1024 * 1024)).done[0] == first  # runs, then goes
        assert pool.stats()["memory"] != {first: 0}
        assert run(pool, ("whoami", None)).done[0][0] != first
    finally:
        assert pool.stop(timeout=WAIT)


def test_grow_shrink_and_stats(pool: ProcessPool) -> None:
    pool.grow(2)
    assert pool.size == 4
    wait_for(lambda: len(pids(pool)) == 4)
    stats = pool.stats()
    assert stats["busy"] == 0
    assert stats["idle"] == 4
    assert set(stats["processed"]) == set(stats["memory"]) == set(stats["processes"])
    busy = Outcomes()
    pool.submit(("sleep", 0.5), busy.on_done, busy.on_error)
    wait_for(lambda: pool.stats()["busy"] == 1)
    pool.shrink(3)
    assert pool.size == 1
    busy.wait_for(1)
    assert busy.done == ["slept"]  # a busy child finishes its item before it goes
    wait_for(lambda: len(pids(pool)) == 1)
    with pytest.raises(ValueError, match="cannot shrink"):
        pool.shrink(1)
    with pytest.raises(ValueError, match="at least 1"):
        pool.grow(0)


def test_submit_checks(pool: ProcessPool) -> None:
    outcomes = Outcomes()
    for _ in range(2):
        pool.submit(("sleep", 0.2), outcomes.on_done, outcomes.on_error)
    with pytest.raises(RuntimeError, match="full"):
        pool.submit(("echo", 1), outcomes.on_done, outcomes.on_error)
    outcomes.wait_for(2)
    with pytest.raises(RuntimeError, match="already started"):
        pool.start(runner, process_init)
    assert pool.stop(timeout=WAIT)
    assert pool.stop(timeout=WAIT)  # again: still True
    with pytest.raises(RuntimeError, match="stopped"):
        pool.submit(("echo", 1), outcomes.on_done, outcomes.on_error)
    with pytest.raises(RuntimeError, match="not started"):
        ProcessPool(1).submit(("echo", 1), outcomes.on_done, outcomes.on_error)


def test_stop_timeout_kills_running_items_with_worker_lost() -> None:
    pool = ProcessPool(1)
    pool.start(runner, process_init)
    outcomes = Outcomes()
    pool.submit(("sleep", 30), outcomes.on_done, outcomes.on_error)
    wait_for(lambda: pool.stats()["busy"] == 1)
    child = next(iter(pids(pool)))
    assert pool.stop(timeout=0.2) is False
    assert [type(exc) for exc in outcomes.errors] == [WorkerLostError]
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or _is_zombie(child), message="child still running")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_failing_process_init_fails_start() -> None:
    def broken_init() -> None:
        raise RuntimeError("no database")

    pool = ProcessPool(1)
    with pytest.raises(RuntimeError, match="while starting"):
        pool.start(runner, broken_init)


def test_a_failing_callback_is_logged_and_the_pool_carries_on(
    pool: ProcessPool, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(value: Any) -> None:
        raise KeyError(value)

    with caplog.at_level(logging.ERROR, logger="celeriac.pool"):
        pool.submit(("echo", 1), broken, broken)
        wait_for(lambda: any("on_done callback" in record.getMessage() for record in caplog.records))
    assert run(pool, ("echo", 2)).done == [2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tasks": 3}, "unknown option"),
        ({"max_tasks_per_child": 0}, "positive number"),
        ({"term_grace": "soon"}, "positive number"),
    ],
)
def test_bad_options_say_what_is_wrong(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProcessPool(1, options)


def test_a_fork_that_fails_fails_start_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork(self: Any) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    pool = ProcessPool(1)
    monkeypatch.setattr(type(pool._context.Process(target=runner)), "start", no_fork)
    with pytest.raises(RuntimeError, match="cannot start a child: .*Resource temporarily unavailable"):
        pool.start(runner, process_init)


def test_a_supervisor_bug_fails_the_items_instead_of_losing_them(
    pool: ProcessPool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    child_pids = pids(pool)

    def broken(*args: Any) -> None:
        raise RuntimeError("supervisor bug")

    monkeypatch.setattr(pool, "_enforce_hard_limits", broken)
    with caplog.at_level(logging.ERROR, logger="celeriac.pool"):
        errors = run(pool, ("sleep", 0.05)).errors
    assert [type(exc) for exc in errors] == [WorkerLostError]
    assert any("supervisor failed" in record.getMessage() for record in caplog.records)
    with pytest.raises(RuntimeError, match="stopped"):
        pool.submit(("echo", 1), Outcomes().on_done, Outcomes().on_error)
    wait_for(lambda: not any(_alive(pid) for pid in child_pids), message="children left behind")


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not _is_zombie(pid)


def test_outcomes_read_before_a_supervisor_bug_are_still_delivered(
    pool: ProcessPool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    read_replies = pool._read_replies

    def read_then_fail(child: Any, callbacks: Any) -> None:
        read_replies(child, callbacks)
        if callbacks:
            raise RuntimeError("supervisor bug after reading a reply")

    monkeypatch.setattr(pool, "_read_replies", read_then_fail)
    with caplog.at_level(logging.ERROR, logger="celeriac.pool"):
        assert run(pool, ("echo", "kept")).done == ["kept"]
