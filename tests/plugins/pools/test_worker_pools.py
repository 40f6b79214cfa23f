"""The pools inside a real worker, on the in-memory transport and on real Redis (database 11).

Processes-pool tasks talk to the test through files in the test's working directory (a
``tmp_path``): a child process shares no memory with the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, ConfigError, SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.testing import start_worker, wait_for
from celeriac.worker._autoscale import Autoscaler

pytestmark = pytest.mark.timeout(60)

MakeApp = Callable[..., Celeriac]


def new_queue() -> str:
    return f"pools-{uuid.uuid4().hex[:8]}"


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.rename(path)


def pids_of(worker: Any) -> set[int]:
    return set(worker.pool.stats()["processes"])


def replaced(worker: Any, gone: int, size: int) -> set[int]:
    """Wait until the pool has ``size`` children again, none of them ``gone``; their pids."""

    def check() -> set[int] | None:
        pids = pids_of(worker)
        return pids if len(pids) == size and gone not in pids else None

    found: set[int] = wait_for(check, message=f"pool child {gone} was not replaced")
    return found


# -- processes ----------------------------------------------------------------------------------


def test_processes_hard_limit_kills_only_the_offending_child(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    queue = new_queue()
    marker = tmp_path / "stuck.pid"

    @app.task(name="t.stuck", time_limit=0.5)
    def stuck() -> None:
        write_atomically(marker, str(os.getpid()))
        time.sleep(30)

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with start_worker(app, pool="processes", concurrency=2, queues=[queue]) as worker:
        before = pids_of(worker)
        assert len(before) == 2
        with pytest.raises(TimeLimitExceeded, match="hard time limit"):
            stuck.apply_async(queue=queue).get(timeout=20)
        killed = int(marker.read_text())
        assert killed in before
        after = replaced(worker, killed, 2)
        assert before - {killed} <= after  # the other child was not touched
        assert {pid.apply_async(queue=queue).get(timeout=10) for _ in range(4)} <= after


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_soft_limit_lets_the_task_clean_up(make_app: MakeApp, pool: str) -> None:
    app = make_app()
    queue = new_queue()

    @app.task(name="t.cleanup", soft_time_limit=0.3)
    def cleanup() -> str:
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"

    with start_worker(app, pool=pool, concurrency=2, queues=[queue]):
        assert cleanup.apply_async(queue=queue).get(timeout=20) == "cleaned up"


def test_processes_sigkill_mid_task_runs_it_again(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    queue = new_queue()
    marker = tmp_path / "fragile.pid"

    @app.task(name="t.fragile", bind=True)
    def fragile(self: Any) -> str:
        if not marker.exists():
            write_atomically(marker, str(os.getpid()))
            time.sleep(30)
            return "first run finished"
        return f"ran again (delivery {self.request.delivery_count})"

    with start_worker(app, pool="processes", concurrency=2, queues=[queue]) as worker:
        result = fragile.apply_async(queue=queue)
        victim = int(wait_for(lambda: marker.exists() and marker.read_text(), timeout=20))
        os.kill(victim, signal.SIGKILL)
        assert result.get(timeout=20).startswith("ran again")
        assert victim not in replaced(worker, victim, 2)


def test_processes_poison_message_ends_in_the_dead_letter_queue(make_app: MakeApp) -> None:
    app = make_app(worker_max_deliveries=3)
    queue = new_queue()
    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))

    @app.task(name="t.poison")
    def poison() -> None:
        os._exit(13)  # kills the child running it, every time

    @app.task(name="t.fine")
    def fine(x: int) -> int:
        return x

    transport = app.transport
    dead_letters = transport.dead_letter_queue(queue)
    poison.apply_async(queue=queue)
    with start_worker(app, pool="processes", concurrency=1, queues=[queue]):
        wait_for(lambda: transport.queue_length(dead_letters) == 1, timeout=40)
        assert fine.apply_async((7,), queue=queue).get(timeout=20) == 7  # the worker still serves
    dead = transport.fetch([dead_letters], limit=5, timeout=1)
    assert len(dead) == 1
    assert "worker_max_deliveries=3" in dead[0].envelope.headers["x-death-reason"]
    assert len(rejected) == 1
    transport.ack(dead[0])


def test_processes_max_tasks_per_child_recycles(make_app: MakeApp) -> None:
    app = make_app(worker_max_tasks_per_child=10)
    queue = new_queue()

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    results = [pid.apply_async(queue=queue) for _ in range(100)]
    with start_worker(app, pool="processes", concurrency=2, queues=[queue]) as worker:
        pids = [result.get(timeout=30) for result in results]
        stats = worker.pool.stats()
    assert len(set(pids)) >= 10
    assert os.getpid() not in pids
    assert stats["total_processed"] == 100
    assert all(count <= 10 for count in stats["processed"].values())


def test_processes_worker_process_init_fires_in_every_child(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    queue = new_queue()
    app.on("worker_process_init")(lambda: (tmp_path / f"init-{os.getpid()}").touch())

    with start_worker(app, pool="processes", concurrency=3, queues=[queue]) as worker:
        inits = {int(path.name.removeprefix("init-")) for path in tmp_path.glob("init-*")}
        assert inits == pids_of(worker)
        assert os.getpid() not in inits
        stats = worker.pool.stats()
        assert stats["busy"] == 0
        assert stats["idle"] == 3
        assert all(kib > 0 for kib in stats["memory"].values())


def test_processes_worker_process_shutdown_fires_in_recycled_and_stopped_children(
    make_app: MakeApp, tmp_path: Path
) -> None:
    app = make_app(worker_max_tasks_per_child=1)
    queue = new_queue()

    app.on("worker_process_init")(lambda: (tmp_path / f"init-{os.getpid()}").touch())

    @app.on("worker_process_shutdown")
    def record(pid: int, exitcode: int) -> None:
        write_atomically(tmp_path / f"shutdown-{pid}", f"{os.getpid()} {exitcode}")

    @app.task(name="t.pid")
    def child_pid() -> int:
        return os.getpid()

    with start_worker(app, pool="processes", concurrency=1, queues=[queue]) as worker:
        ran = [child_pid.apply_async(queue=queue).get(timeout=30) for _ in range(3)]
        assert len(set(ran)) == 3  # one child per task: each was recycled right after it
        wait_for(
            lambda: all((tmp_path / f"shutdown-{pid}").exists() for pid in ran),
            message="worker_process_shutdown did not fire in every recycled child",
        )

        def fresh_child() -> int | None:  # the replacement of the last recycled child, initialised
            pids = pids_of(worker) - set(ran)
            return next((pid for pid in pids if (tmp_path / f"init-{pid}").exists()), None)

        victim: int = wait_for(fresh_child, message="the last recycled child was not replaced")
        os.kill(victim, signal.SIGKILL)  # killed: no chance to fire
        last = replaced(worker, victim, 1)
    fired = {int(path.name.removeprefix("shutdown-")): path.read_text() for path in tmp_path.glob("shutdown-*")}
    for pid in [*ran, *last]:  # recycled, then stopped with the worker
        assert fired[pid] == f"{pid} 0"
    assert victim not in fired
    assert os.getpid() not in fired


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_in_process_pools_fire_worker_process_shutdown_once_at_stop(make_app: MakeApp, pool: str) -> None:
    app = make_app()
    queue = new_queue()
    fired: list[tuple[int, int, str]] = []
    app.on("worker_process_shutdown")(lambda worker, pid, exitcode: fired.append((pid, exitcode, worker.pool_name)))

    @app.task(name="t.noop")
    def noop() -> int:
        return 1

    with start_worker(app, pool=pool, concurrency=1, queues=[queue]):
        assert noop.apply_async(queue=queue).get(timeout=30) == 1
        assert fired == []
    assert fired == [(os.getpid(), 0, pool)]


def test_processes_fork_under_load_keeps_children_healthy(make_app: MakeApp) -> None:
    """Children forked while other worker threads (and a busy logging thread) run must not
    inherit a held lock: every child logs, runs its task and exits (one task per child)."""
    app = make_app(worker_max_tasks_per_child=1)
    queue = new_queue()
    noisy = logging.getLogger("celeriac.tests.noisy")

    @app.task(name="t.logs")
    def logs(n: int) -> int:
        logging.getLogger("celeriac.tests.child").info("child %d runs %d", os.getpid(), n)
        return os.getpid()

    stop = threading.Event()

    def log_all_the_time() -> None:
        while not stop.is_set():
            noisy.info("parent is busy")

    hammer = threading.Thread(target=log_all_the_time, daemon=True)
    hammer.start()
    try:
        results = [logs.apply_async((n,), queue=queue) for n in range(40)]
        with start_worker(app, pool="processes", concurrency=2, queues=[queue]):
            pids = [result.get(timeout=40) for result in results]
    finally:
        stop.set()
        hammer.join(5)
    assert len(set(pids)) == 40  # a fresh child for every task


# -- asyncio ------------------------------------------------------------------------------------


def test_asyncio_runs_a_thousand_sleeping_tasks_concurrently(make_app: MakeApp, capsys: Any) -> None:
    app = make_app()
    queue = new_queue()

    @app.task(name="t.nap")
    async def nap(n: int) -> int:
        await asyncio.sleep(0.1)
        return n

    results = [nap.apply_async((n,), queue=queue) for n in range(1000)]
    started = time.monotonic()
    with start_worker(app, pool="asyncio", concurrency=1000, queues=[queue]):
        values = [result.get(timeout=30) for result in results]
        elapsed = time.monotonic() - started
    assert values == list(range(1000))
    assert elapsed < 10, f"1,000 tasks of 0.1 s took {elapsed:.2f}s"  # generous: ~1 s is typical
    with capsys.disabled():
        print(f"\n[pools] asyncio: 1,000 x await sleep(0.1) done in {elapsed:.2f}s")


@pytest.mark.parametrize(
    ("pool", "given", "size"), [("asyncio", None, 100), ("asyncio", 7, 7), ("threads", None, None)]
)
def test_a_pool_without_configured_concurrency_gets_its_own_default(
    make_app: MakeApp, pool: str, given: int | None, size: int | None
) -> None:
    app = make_app()
    with start_worker(app, pool=pool, concurrency=given, queues=[new_queue()]) as worker:
        assert worker.pool is not None
        assert worker.pool.size == (size or os.cpu_count() or 1)
        assert worker.concurrency == worker.pool.size


def test_asyncio_limits_context_signals_and_sync_tasks(make_app: MakeApp) -> None:
    app = make_app()
    queue = new_queue()
    prerun: list[str] = []
    postrun: list[tuple[str, str]] = []
    app.on("task_prerun")(lambda task_id: prerun.append(task_id))
    app.on("task_postrun")(lambda task_id, state: postrun.append((task_id, state)))

    @app.task(name="t.whoami", bind=True)
    async def whoami(self: Any) -> str:
        await asyncio.sleep(0)
        return str(self.request.id)

    @app.task(name="t.soft", soft_time_limit=0.2)
    async def soft() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)  # the task may still await while cleaning up
            return "cleaned up"
        return "not interrupted"

    @app.task(name="t.hard", time_limit=0.2)
    async def hard() -> None:
        await asyncio.sleep(30)

    @app.task(name="t.blocking")
    def blocking() -> str:
        time.sleep(0.05)  # would block the loop if it ran there
        return threading.current_thread().name

    with start_worker(app, pool="asyncio", concurrency=50, queues=[queue]) as worker:
        assert worker.pool.runs_coroutines
        mine = whoami.apply_async(queue=queue)
        assert mine.get(timeout=10) == mine.id
        assert soft.apply_async(queue=queue).get(timeout=10) == "cleaned up"
        with pytest.raises(TimeLimitExceeded, match="hard time limit"):
            hard.apply_async(queue=queue).get(timeout=10)
        assert blocking.apply_async(queue=queue).get(timeout=10).startswith("celeriac-asyncio")
        assert asyncio.run(whoami.apply_async(queue=queue).aget(timeout=10))
    assert mine.id in prerun
    assert (mine.id, "SUCCESS") in postrun


# -- threads ------------------------------------------------------------------------------------


def test_threads_pool_warns_about_hard_limits_it_cannot_enforce(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    queue = new_queue()

    @app.task(name="t.limited", time_limit=5)
    def limited() -> int:
        return 1

    with start_worker(app, pool="threads", concurrency=1, queues=[queue]):
        assert limited.apply_async(queue=queue).get(timeout=10) == 1
    warnings = [record.getMessage() for record in caplog.records if "cannot kill a thread" in record.getMessage()]
    assert len(warnings) == 1
    assert "t.limited" in warnings[0]
    assert "-P processes" in warnings[0]


# -- autoscale ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_autoscale_grows_under_backlog_and_shrinks_when_idle(
    make_app: MakeApp, pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Autoscaler, "interval", 0.05)
    monkeypatch.setattr(Autoscaler, "keepalive", 0.3)
    app = make_app(worker_autoscale=[1, 4])
    queue = new_queue()
    release = tmp_path / "release"

    @app.task(name="t.block")
    def block() -> int:
        wait_for(release.exists, timeout=30, interval=0.01)
        return os.getpid()

    def size(worker: Any) -> int:
        if pool == "processes":
            return len(worker.pool.stats()["processes"])
        return int(worker.pool.size)

    results = [block.apply_async(queue=queue) for _ in range(8)]
    with start_worker(app, pool=pool, concurrency=2, queues=[queue]) as worker:
        wait_for(lambda: worker.pool.size == 4 and size(worker) == 4, timeout=20, message="did not grow to 4")
        assert worker.autoscaler.info()["last"]["direction"] == "up"
        release.touch()
        assert len([result.get(timeout=20) for result in results]) == 8
        wait_for(lambda: worker.pool.size == 1 and size(worker) == 1, timeout=20, message="did not shrink to 1")
        info = worker.autoscaler.info()
        assert (info["min"], info["max"], info["current"]) == (1, 4, 1)
        assert worker.autoscaler.update(max=3, min=2)["current"] == 2
        assert worker.pool.size == 2
        with pytest.raises(ConfigError, match="min <= max"):
            worker.autoscaler.update(max=1, min=2)
        assert worker.autoscaler.update(max=2, min=0)["min"] == 1  # a pool keeps one slot


def test_processes_task_still_running_at_shutdown_goes_back_to_the_queue(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    queue = new_queue()
    marker = tmp_path / "long.pid"

    @app.task(name="t.long")
    def long() -> None:
        write_atomically(marker, str(os.getpid()))
        time.sleep(30)

    long.apply_async(queue=queue)
    with start_worker(app, pool="processes", concurrency=1, queues=[queue], shutdown_timeout=0.3):
        child = int(wait_for(lambda: marker.exists() and marker.read_text(), timeout=20))
    assert app.transport.queue_length(queue) == 1  # killed at the timeout and requeued, not lost
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1][:3]


def test_autoscale_leaves_a_pool_that_cannot_scale_alone(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Autoscaler, "interval", 0.05)
    app = make_app(worker_autoscale=[1, 3])
    queue = new_queue()

    @app.task(name="t.one")
    def one() -> int:
        return 1

    with start_worker(app, pool="solo", concurrency=1, queues=[queue]) as worker:
        assert one.apply_async(queue=queue).get(timeout=10) == 1
        wait_for(lambda: any("autoscale is off" in record.getMessage() for record in caplog.records))
        assert worker.pool.size == 1


def test_processes_children_publish_and_store_on_a_real_broker(make_app: MakeApp) -> None:
    """Retries, chains and ``track_started`` happen inside the child, over its own connections."""
    app = make_app(task_track_started=True)
    if app.conf.broker_url.startswith("memory://"):
        pytest.skip("the in-memory broker lives in one process: a child cannot publish to it")
    queue = new_queue()

    @app.task(name="t.flaky", bind=True, max_retries=3, default_retry_delay=0)
    def flaky(self: Any) -> tuple[int, int]:
        if self.request.retries < 2:
            raise self.retry()
        return self.request.retries, os.getpid()

    @app.task(name="t.double")
    def double(x: int) -> int:
        return 2 * x

    with start_worker(app, pool="processes", concurrency=2, queues=[queue]) as worker:
        retries, child = flaky.apply_async(queue=queue).get(timeout=20)
        assert retries == 2
        assert child in pids_of(worker)
        chained = (double.s(1).set(queue=queue) | double.s().set(queue=queue)).apply_async()
        assert chained.get(timeout=20) == 4


@pytest.mark.parametrize(("pool", "shared"), [("processes", False), ("threads", True)])
def test_a_child_opens_its_own_broker_and_result_store_clients(make_app: MakeApp, pool: str, shared: bool) -> None:
    """Clients inherited through ``fork`` (and locks other threads may have held) are dropped."""
    app = make_app()
    queue = new_queue()
    inherited = (app.transport, app.result_store)

    @app.task(name="t.clients")
    def clients() -> list[bool]:
        return [app.transport is inherited[0], app.result_store is inherited[1]]

    with start_worker(app, pool=pool, concurrency=1, queues=[queue]):
        assert clients.apply_async(queue=queue).get(timeout=20) == [shared, shared]


def test_inspect_active_names_the_child_that_runs_the_task(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    queue = new_queue()
    started, release = tmp_path / "started", tmp_path / "release"

    @app.task(name="t.hold")
    def hold() -> int:
        started.write_text(str(os.getpid()))
        while not release.exists():
            time.sleep(0.01)
        return os.getpid()

    with start_worker(app, pool="processes", concurrency=1, queues=[queue]) as worker:
        result = hold.apply_async(queue=queue)
        wait_for(lambda: started.exists() and started.read_text())
        [info] = worker.job_infos("active")
        assert info["worker_pid"] == int(started.read_text()) != os.getpid()
        release.write_text("go")
        assert result.get(timeout=20) == info["worker_pid"]
