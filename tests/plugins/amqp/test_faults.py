"""Fault tests: real ``celeriac worker`` processes on a real RabbitMQ, killed, restarted, and cut off.

Workers are the installed console script, assembled from a ``celeriac.toml`` in ``tmp_path``
with ``tests/fixtures/amqp_tasks.py`` on ``PYTHONPATH``; the tasks append what they do to a
log file (``start``/``done``, tag, pid, time, redelivered), which is what the tests read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pytest
from celeriac import Celeriac
from celeriac.plugins.amqp import _testing
from celeriac.testing import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CELERIAC = str(Path(sys.executable).with_name("celeriac"))


class Event(NamedTuple):
    kind: str  # start | done
    tag: str
    pid: int
    at: float
    redelivered: bool


class WorkerProcess:
    """A ``celeriac worker`` subprocess; its stderr (the log) goes to a file."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.stderr_path = cwd / f"worker-{uuid.uuid4().hex[:8]}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [CELERIAC, "worker", "-l", "info", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr
        )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: " ready: " in self.log or self.proc.poll() is not None,
            timeout=timeout,
            message=f"worker did not start: {self.log}",
        )
        assert self.proc.poll() is None, f"worker exited: {self.log}"

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._stderr.close()


@pytest.fixture
def project(tmp_path: Path, amqp_url: str) -> Iterator[tuple[Path, dict[str, str], str]]:
    """A worker project in ``tmp_path`` consuming a fresh queue; yields (cwd, env, queue)."""
    queue = f"faults-{uuid.uuid4().hex}"
    (tmp_path / "celeriac.toml").write_text(
        f"""
[celeriac]
imports = ["amqp_tasks"]
broker_url = "{amqp_url}"
result_store = "memory://"

[celeriac.worker]
pool = "threads"
concurrency = 1
queues = ["{queue}"]
prefetch_multiplier = 1
shutdown_timeout = 10
"""
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["AMQP_TASK_LOG"] = str(tmp_path / "tasks.log")
    yield tmp_path, env, queue
    _testing.delete_queues(amqp_url, queue)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


@pytest.fixture
def client(amqp_url: str) -> Iterator[Celeriac]:
    """The test's own app on the same broker, to send tasks (results are not read)."""
    app = Celeriac("client", broker_url=amqp_url, result_store=f"memory://{uuid.uuid4().hex}", environ={})
    yield app
    app.close()


def events(cwd: Path) -> list[Event]:
    path = cwd / "tasks.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        kind, tag, pid, at, redelivered = line.split()
        found.append(Event(kind, tag, int(pid), float(at), redelivered == "1"))
    return found


def wait_for_events(cwd: Path, check: Callable[[list[Event]], bool], timeout: float, what: str) -> list[Event]:
    wait_for(lambda: check(events(cwd)), timeout=timeout, interval=0.05, message=f"{what}; log: {events(cwd)}")
    return events(cwd)


def test_a_task_whose_worker_is_killed_is_run_by_another_worker(
    project: tuple[Path, dict[str, str], str], workers: list[WorkerProcess], client: Celeriac
) -> None:
    cwd, env, queue = project
    first = WorkerProcess(cwd, env)
    workers.append(first)
    first.wait_ready()
    client.send_task("amqp.record", ["victim", 60.0, True], queue=queue)
    wait_for_events(cwd, lambda log: any(e.kind == "start" for e in log), 60, "the first worker never started the task")
    second = WorkerProcess(cwd, env)
    workers.append(second)
    second.wait_ready()

    first.proc.kill()  # SIGKILL mid-task: the message was never acked
    first.proc.wait(30)

    log = wait_for_events(cwd, lambda log: any(e.kind == "done" for e in log), 60, "nobody finished the task")
    assert [(e.kind, e.pid, e.redelivered) for e in log] == [
        ("start", first.proc.pid, False),
        ("start", second.proc.pid, True),
        ("done", second.proc.pid, True),
    ]
    assert second.proc.poll() is None


def test_an_eta_task_runs_once_on_time_across_a_worker_restart(
    project: tuple[Path, dict[str, str], str], workers: list[WorkerProcess], client: Celeriac
) -> None:
    cwd, env, queue = project
    first = WorkerProcess(cwd, env)
    workers.append(first)
    first.wait_ready()
    eta = time.time() + 6
    client.send_task("amqp.record", ["eta"], queue=queue, eta=datetime.fromtimestamp(eta, UTC))
    assert first.stop() == 0  # the delayed message waits in RabbitMQ, not in this worker
    second = WorkerProcess(cwd, env)
    workers.append(second)
    second.wait_ready()

    log = wait_for_events(cwd, lambda log: any(e.tag == "eta" and e.kind == "done" for e in log), 60, "no ETA run")
    [run] = [e for e in log if e.tag == "eta" and e.kind == "start"]
    assert run.pid == second.proc.pid
    assert run.at >= eta - 0.05, "ran before its ETA"
    assert run.at < eta + 8, "ran far too late (8 s: a loaded machine)"
    # a task sent after it is done after it: had the ETA task been delivered twice, the second
    # copy would already have been in the queue ahead of this one
    client.send_task("amqp.record", ["after"], queue=queue)
    log = wait_for_events(cwd, lambda log: any(e.tag == "after" and e.kind == "done" for e in log), 60, "no barrier")
    assert [e.kind for e in log if e.tag == "eta"] == ["start", "done"]


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to restart RabbitMQ")
@pytest.mark.exclusive_rabbitmq
def test_a_worker_carries_on_when_rabbitmq_restarts(
    project: tuple[Path, dict[str, str], str], workers: list[WorkerProcess], client: Celeriac
) -> None:
    cwd, env, queue = project
    worker = WorkerProcess(cwd, env, "-c", "2")
    workers.append(worker)
    worker.wait_ready()
    tags = [f"t{number}" for number in range(300)]
    client.transport.publish_many  # noqa: B018 - connect before timing anything
    for tag in tags:
        client.send_task("amqp.record", [tag, 0.01], queue=queue)
    client.close()  # its connections would only see the restart too
    wait_for_events(cwd, lambda log: sum(e.kind == "done" for e in log) >= 30, 60, "the worker did not start")

    try:
        assert subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, timeout=120).returncode == 0
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "await_startup"], capture_output=True, timeout=120)

    log = wait_for_events(
        cwd, lambda log: {e.tag for e in log if e.kind == "done"} >= set(tags), 120, "tasks were lost in the restart"
    )
    assert {e.tag for e in log if e.kind == "done"} == set(tags)
    assert worker.proc.poll() is None, "the worker had to be restarted"
    assert "reconnected to" in worker.log
