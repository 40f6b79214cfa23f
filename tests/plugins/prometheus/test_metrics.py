"""Scrape a live worker's /metrics after running known tasks on memory://, Redis and RabbitMQ."""

from __future__ import annotations

import threading
import time
from typing import Any

import celeriac
import pytest
from celeriac import NotRegistered, TaskRevokedError
from celeriac.plugins.prometheus import SENT_AT_HEADER, metrics_address
from celeriac.testing import start_worker, wait_for

from .conftest import scrape


def test_counts_and_histograms_after_known_tasks(broker_url: str, queue_name: str, make_app: Any) -> None:
    app = make_app(broker_url, task_default_queue=queue_name)

    @app.task(name="obs.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="obs.fail")
    def fail() -> None:
        raise ValueError("no")

    @app.task(name="obs.flaky", bind=True, max_retries=1)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "ok"

    @app.task(name="obs.nap")
    def nap() -> None:
        time.sleep(0.06)  # the workload: lands above the 0.05 s bucket

    with start_worker(app, pool="threads", concurrency=2, queues=[queue_name]) as worker:
        assert [add.delay(i, i).get(timeout=10) for i in range(5)] == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="no"):
            fail.delay().get(timeout=10)
        assert flaky.delay().get(timeout=10) == "ok"
        nap.delay().get(timeout=10)
        with pytest.raises(TaskRevokedError):
            add.apply_async((1, 1), expires=-1).get(timeout=10)  # expired: revoked, not run
        with pytest.raises(NotRegistered):
            app.send_task("obs.unknown", queue=queue_name).get(timeout=10)  # dead-lettered

        metrics = wait_for(lambda: (s := scrape(worker)).value("celeriac_tasks_rejected_total") and s)

    labels = {"queue": queue_name}
    assert metrics.value("celeriac_tasks_received_total", task="obs.add", **labels) == 5
    assert metrics.value("celeriac_tasks_succeeded_total", task="obs.add", **labels) == 5
    assert metrics.value("celeriac_tasks_failed_total", task="obs.fail", **labels) == 1
    assert metrics.value("celeriac_tasks_received_total", task="obs.flaky", **labels) == 2
    assert metrics.value("celeriac_tasks_retried_total", task="obs.flaky", **labels) == 1
    assert metrics.value("celeriac_tasks_succeeded_total", task="obs.flaky", **labels) == 1
    assert metrics.value("celeriac_tasks_revoked_total", task="obs.add", **labels) == 1
    assert metrics.value("celeriac_tasks_rejected_total", task="obs.unknown") == 1
    assert metrics.value("celeriac_tasks_succeeded_total", task="obs.fail", **labels) is None

    assert metrics.value("celeriac_task_runtime_seconds_count", task="obs.add") == 5
    assert metrics.value("celeriac_task_runtime_seconds_bucket", task="obs.add", le="+Inf") == 5
    assert metrics.value("celeriac_task_runtime_seconds_bucket", task="obs.nap", le="0.05") == 0
    assert metrics.value("celeriac_task_runtime_seconds_bucket", task="obs.nap", le="+Inf") == 1
    assert metrics.value("celeriac_task_queue_wait_seconds_count", task="obs.add", **labels) == 5
    assert metrics.value("celeriac_task_queue_wait_seconds_bucket", task="obs.add", le="+Inf", **labels) == 5

    assert metrics.value("celeriac_worker_pool_size") == 2
    assert metrics.value("celeriac_worker_prefetch_limit") == 2
    assert metrics.value("celeriac_worker_tasks_active") == 0
    assert metrics.value("celeriac_worker_info", pool="threads") == 1
    assert metrics.value("celeriac_queue_length", **labels) == 0
    age = metrics.value("celeriac_queue_oldest_message_age_seconds", **labels)
    if broker_url.startswith("amqp"):
        assert age is None  # RabbitMQ cannot tell
    else:
        assert age == 0.0


def test_in_flight_prefetched_and_the_oldest_waiting_message(make_app: Any) -> None:
    import uuid

    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    app = make_app(f"memory://{uuid.uuid4().hex}", task_default_queue=queue)
    release = threading.Event()

    @app.task(name="obs.block")
    def block() -> None:
        assert release.wait(20)

    @app.task(name="obs.add")
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, concurrency=1, queues=[queue], prefetch_multiplier=2) as worker:
        try:
            blocked = block.delay()
            wait_for(lambda: scrape(worker).value("celeriac_worker_tasks_active") == 1)
            results = [add.delay(i, 1) for i in range(3)]
            metrics = wait_for(
                lambda: (
                    (s := scrape(worker)).value("celeriac_worker_tasks_reserved") == 1
                    and (s.value("celeriac_queue_oldest_message_age_seconds", queue=queue) or 0) >= 0.05
                    and s
                ),
                message="one message prefetched, two waiting in the queue for a while",
            )
            assert metrics.value("celeriac_worker_pool_busy") == 1
            assert metrics.value("celeriac_queue_length", queue=queue) == 2
        finally:
            release.set()
        blocked.get(timeout=10)
        assert [result.get(timeout=10) for result in results] == [1, 2, 3]
        assert scrape(worker).value("celeriac_queue_oldest_message_age_seconds", queue=queue) == 0.0


def test_queue_wait_counts_from_publish(make_app: Any) -> None:
    import uuid

    app = make_app(f"memory://{uuid.uuid4().hex}")
    seen: dict[str, Any] = {}

    @app.task(name="obs.headers", bind=True)
    def headers(self: Any) -> None:
        seen.update(self.request.headers)

    with start_worker(app) as worker:
        before = time.time()
        headers.apply_async(countdown=1.0).get(timeout=10)
        metrics = scrape(worker)
    assert before <= seen[SENT_AT_HEADER] <= time.time()
    # from the ETA, not from publishing: the 1 s countdown is not queue wait
    assert metrics.value("celeriac_task_queue_wait_seconds_count", task="obs.headers", queue="default") == 1
    assert metrics.value("celeriac_task_queue_wait_seconds_bucket", task="obs.headers", queue="default", le="+Inf") == 1
    total = metrics.value("celeriac_task_queue_wait_seconds_sum", task="obs.headers", queue="default")
    assert total is not None and 0.0 <= total < 1.0


def test_no_port_no_server(app: Any) -> None:
    with start_worker(app) as worker:
        assert metrics_address(worker) is None


def test_a_port_in_use_is_one_error_line_and_the_worker_runs(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    import socket
    import uuid

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = make_app(f"memory://{uuid.uuid4().hex}", prometheus_port=port)

        @app.task(name="obs.add")
        def add(x: int, y: int) -> int:
            return x + y

        with start_worker(app) as worker:
            assert add.delay(1, 2).get(timeout=10) == 3
            assert metrics_address(worker) is None
    assert f"no metrics: cannot listen on 127.0.0.1:{port}" in caplog.text


def test_retry_overwrites_the_sent_time(app: Any) -> None:
    """A retry copies its request's headers; the stamp is the retry's own publish time."""
    stamps: list[float] = []

    @app.task(name="obs.stamp", bind=True, max_retries=1)
    def stamp(self: Any) -> None:
        stamps.append(self.request.headers[SENT_AT_HEADER])
        if self.request.retries == 0:
            raise self.retry(countdown=0)

    with start_worker(app):
        stamp.delay().get(timeout=10)
    assert len(stamps) == 2
    assert stamps[1] > stamps[0]


@pytest.mark.timeout(90)
def test_processes_pool_children_are_aggregated(make_app: Any) -> None:
    """Tasks run (and are counted) in two child processes; /metrics sums them."""
    import os
    import uuid

    from .conftest import _redis_url

    urls = _redis_url()
    url = next(urls)
    try:
        queue = f"metrics-{uuid.uuid4().hex[:8]}"
        app = make_app(url, task_default_queue=queue)

        @app.task(name="obs.pid")
        def pid(x: int) -> int:
            if x < 0:
                raise ValueError(x)
            return os.getpid()

        with start_worker(app, pool="processes", concurrency=2, queues=[queue]) as worker:
            pids = {pid.delay(i).get(timeout=20) for i in range(12)}
            with pytest.raises(ValueError, match="-1"):
                pid.delay(-1).get(timeout=20)
            metrics = scrape(worker)
            assert worker.pool is not None
            children = set(worker.pool.stats()["processes"])
    finally:
        next(urls, None)
    assert os.getpid() not in pids  # counted in children, read in the worker process
    assert len(children) == 2
    assert pids <= children
    assert metrics.value("celeriac_tasks_received_total", task="obs.pid", queue=queue) == 13
    assert metrics.value("celeriac_tasks_succeeded_total", task="obs.pid", queue=queue) == 12
    assert metrics.value("celeriac_tasks_failed_total", task="obs.pid", queue=queue) == 1
    assert metrics.value("celeriac_task_runtime_seconds_count", task="obs.pid") == 13
    assert metrics.value("celeriac_task_runtime_seconds_bucket", task="obs.pid", le="+Inf") == 13
    assert metrics.value("celeriac_task_queue_wait_seconds_count", task="obs.pid", queue=queue) == 13
    assert metrics.value("celeriac_worker_pool_size") == 2
    assert metrics.value("celeriac_worker_info", pool="processes") == 1


def test_celeriac_worker_options_add_metrics_port_and_log_format(app: Any) -> None:
    options = {option.name: option for option in app.plugins.worker_options()}
    assert options["prometheus_port"].opts == ["--metrics-port"]
    assert options["logging_format"].opts == ["--log-format"]


@pytest.mark.e2e
def test_worker_help_lists_the_options(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    celeriac = str(Path(sys.executable).with_name("celeriac"))
    done = subprocess.run([celeriac, "worker", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--metrics-port" in done.stdout
    assert "--log-format" in done.stdout
    bad = subprocess.run(
        [celeriac, "worker", "--metrics-port", "http"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "--metrics-port" in bad.stderr


def test_unconfigured_plugins_import_neither_library(tmp_path: Any) -> None:
    import subprocess
    import sys

    script = """
import sys, uuid
from celeriac import Celeriac
from celeriac.testing import start_worker
name = uuid.uuid4().hex
app = Celeriac("x", broker_url=f"memory://{name}", result_store=f"memory://{name}", environ={})
@app.task
def add(x, y): return x + y
with start_worker(app):
    assert add.delay(1, 2).get(timeout=10) == 3
print(sorted(m for m in sys.modules if m.startswith(("prometheus_client", "opentelemetry"))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.timeout(120)
def test_recycled_and_killed_children_fold_into_bounded_files(make_app: Any, tmp_path: Any) -> None:
    """30 children recycled after one task each, and one killed: their files are folded into
    one accumulator per type and deleted; the totals stay exact."""
    import os
    import signal
    import uuid

    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    app = make_app(f"memory://{uuid.uuid4().hex}", task_default_queue=queue, worker_max_tasks_per_child=1)

    @app.task(name="obs.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="obs.die")
    def die(marker: str) -> int:
        if not os.path.exists(marker):  # the first delivery kills its child (no process shutdown)
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    with start_worker(app, pool="processes", concurrency=1, queues=[queue]) as worker:
        pids = {pid.delay().get(timeout=20) for _ in range(15)}
        pids.add(die.delay(str(tmp_path / "killed")).get(timeout=20))  # redelivered to a new child
        pids |= {pid.delay().get(timeout=20) for _ in range(15)}
        metrics = scrape(worker)
        address = metrics_address(worker)
        assert address is not None
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        files = sorted(os.listdir(directory))
    assert len(pids) == 31  # every task ran in a fresh child
    assert {"counter_dead.db", "histogram_dead.db"} <= set(files)
    # the worker's own files, the accumulators and at most two children's (the live one, one
    # not yet reaped): not one per child
    assert len(files) <= 8, files
    children = [name for name in files if name.endswith(tuple(f"_{child}.db" for child in pids))]
    assert len(children) <= 4, children  # counter and histogram of at most two children
    assert metrics.value("celeriac_tasks_received_total", task="obs.pid", queue=queue) == 30
    assert metrics.value("celeriac_tasks_succeeded_total", task="obs.pid", queue=queue) == 30
    assert metrics.value("celeriac_task_runtime_seconds_count", task="obs.pid") == 30
    assert metrics.value("celeriac_task_runtime_seconds_bucket", task="obs.pid", le="+Inf") == 30
    assert metrics.value("celeriac_task_queue_wait_seconds_count", task="obs.pid", queue=queue) == 30
    assert metrics.value("celeriac_tasks_received_total", task="obs.die", queue=queue) == 2
    assert metrics.value("celeriac_tasks_succeeded_total", task="obs.die", queue=queue) == 1


def test_the_server_listens_on_localhost_by_default() -> None:
    from celeriac.plugins.prometheus import SETTINGS

    assert {setting.name: setting.default for setting in SETTINGS}["prometheus_address"] == "127.0.0.1"


def test_a_port_without_the_extra_stops_the_worker(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import uuid

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "celeriac.plugins.prometheus._metrics", raising=False)
    monkeypatch.delattr("celeriac.plugins.prometheus._metrics", raising=False)
    app = make_app(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(celeriac.PluginError) as raised, start_worker(app):
        pass
    expected = "the prometheus plugin needs the 'prometheus' extra: pip install 'celeriac[prometheus]'"
    assert str(raised.value) == expected
    assert not app.running_workers()  # the failed start was cleaned up
