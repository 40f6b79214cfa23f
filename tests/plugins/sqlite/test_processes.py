"""End to end through one SQLite file: ``celeriac worker`` and ``celeriac call`` processes.

Workers are CLI subprocesses assembled from a ``celeriac.toml`` in ``tmp_path``; the tasks
(``tests/fixtures/sqlite_tasks.py``) append one line per run to a log, which proves no task ran
twice. Waits are on conditions with timeouts (files appearing, results arriving), never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import celeriac
import celeriac.config
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
CELERIAC = [str(Path(sys.executable).with_name("celeriac"))]

CONFIG = """
[celeriac]
imports = ["sqlite_tasks"]
plugins = ["sqlite_plugin"]
broker_url = "sqlite:///celeriac.db"
result_store = "sqlite:///celeriac.db"
broker_transport_options = {{ visibility_timeout = {visibility_timeout}, busy_timeout = {busy_timeout} }}

[celeriac.worker]
pool = "threads"
concurrency = 4
shutdown_timeout = 20
"""


class Project:
    """A directory with a config, a task log and the environment worker processes run in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "executions.log"
        self.database = root / "celeriac.db"
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
        self.env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), self.env.get("PYTHONPATH", "")])
        self.env["SQLITE_E2E_LOG"] = str(self.log)
        self.env["SQLITE_E2E_READY_DIR"] = str(root)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.configure()

    def configure(self, *, visibility_timeout: float = 60, busy_timeout: float = 5) -> None:
        (self.root / "celeriac.toml").write_text(
            CONFIG.format(visibility_timeout=visibility_timeout, busy_timeout=busy_timeout)
        )

    @property
    def url(self) -> str:
        return f"sqlite:///{self.database}"

    def client(self) -> celeriac.Celeriac:
        """An app in this process on the same file (absolute path), as a client would build it."""
        return celeriac.Celeriac(
            "client",
            broker_url=self.url,
            result_store=self.url,
            environ={},
            set_as_current=False,
            config_source=celeriac.config.ConfigSource(),  # the workers read celeriac.toml; this client does not
        )

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """A ``celeriac worker`` process, once it consumes; its output goes to ``<name>.err``."""
        with open(self.root / f"{name}.out", "wb") as out, open(self.root / f"{name}.err", "wb") as err:
            process = subprocess.Popen(
                [*CELERIAC, "worker", "-n", f"{name}@%h"], cwd=self.root, env=self.env, stdout=out, stderr=err
            )
        self.processes.append(process)
        ready = self.root / f"ready-{process.pid}"
        wait_until(lambda: ready.exists() or process.poll() is not None, 60, f"worker {name} to be ready")
        assert process.poll() is None, (self.root / f"{name}.err").read_text()
        return process

    def stop_worker(self, process: subprocess.Popen[bytes]) -> int:
        process.send_signal(signal.SIGTERM)
        return process.wait(60)

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CELERIAC, *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def executions(self) -> list[tuple[str, int, int]]:
        """(task id, pid, delivery count) of every task run, in order."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [(task_id, int(pid), int(count)) for task_id, pid, count in (line.split() for line in lines)]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Check ``condition`` every 10 ms until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    project = Project(tmp_path)
    yield project
    for process in project.processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_worker_processes_run_5000_tasks_each_exactly_once(project: Project) -> None:
    first, second = project.start_worker("first"), project.start_worker("second")
    client = project.client()
    try:
        results = [client.send_task("sqlite.add", [number, number]) for number in range(5000)]

        deadline = time.monotonic() + 150
        values = [result.get(timeout=max(deadline - time.monotonic(), 0.1)) for result in results]

        assert values == [2 * number for number in range(5000)]
        assert client.transport.queue_length("default") == 0
    finally:
        client.close()
    assert project.stop_worker(first) == 0, (project.root / "first.err").read_text()
    assert project.stop_worker(second) == 0, (project.root / "second.err").read_text()

    executions = project.executions()
    task_ids = [task_id for task_id, _, _ in executions]
    assert len(task_ids) == 5000, "some task ran twice or never"
    assert set(task_ids) == {result.id for result in results}
    assert {pid for _, pid, _ in executions} == {first.pid, second.pid}, "both processes should have worked"
    assert {count for _, _, count in executions} == {1}
    connection = sqlite3.connect(project.database)
    try:
        assert connection.execute("SELECT COUNT(*) FROM celeriac_messages").fetchone()[0] == 0  # every ack landed
        stored = connection.execute("SELECT COUNT(*), COUNT(DISTINCT task_id) FROM celeriac_results").fetchone()
        assert stored == (5000, 5000)
    finally:
        connection.close()


def test_a_task_of_a_killed_worker_is_delivered_again_after_its_lease(project: Project) -> None:
    project.configure(visibility_timeout=2)
    doomed = project.start_worker("doomed")
    marker = project.root / "started"
    client = project.client()
    try:
        result = client.send_task("sqlite.hang_first_time", [str(marker)])
        wait_until(marker.exists, 60, "the task to start")
        assert marker.read_text() == str(doomed.pid)

        doomed.kill()  # SIGKILL: no shutdown, no hand-back; only the lease brings it back
        doomed.wait(30)
        rescuer = project.start_worker("rescuer")
        value = result.get(timeout=60)
    finally:
        client.close()

    assert value == {"pid": rescuer.pid, "delivery_count": 2}
    assert project.executions() == [(result.id, doomed.pid, 1), (result.id, rescuer.pid, 2)]
    assert project.stop_worker(rescuer) == 0


def test_celeriac_call_in_another_process_gets_the_result(project: Project) -> None:
    worker = project.start_worker("worker")

    called = project.run_cli("call", "sqlite.add", "--args", "[2, 3]", "--wait", "--timeout", "30")

    assert called.returncode == 0, called.stderr
    assert called.stdout.strip() == "5"
    task_id = called.stderr.strip().splitlines()[-1]
    shown = project.run_cli("result", task_id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) | {"date_done": None} == {
        "id": task_id,
        "state": "SUCCESS",
        "result": 5,
        "traceback": None,
        "date_done": None,
    }
    assert project.stop_worker(worker) == 0
    assert [task_id for task_id, _, _ in project.executions()] == [task_id]


def test_a_corrupt_database_stops_the_worker_with_one_line(project: Project) -> None:
    project.database.write_bytes(b"garbage, not a database " * 200)

    started = project.run_cli("worker")

    assert started.returncode == 1
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith(f"celeriac: sqlite result store {project.database}:"), started.stderr
    assert "not a usable SQLite database" in last
    assert "Traceback" not in started.stderr


def test_a_locked_database_fails_a_call_with_one_line_instead_of_hanging(project: Project) -> None:
    project.configure(busy_timeout=0.5)
    client = project.client()
    client.transport  # noqa: B018 - creates the file and its tables
    client.result_store  # noqa: B018
    client.close()
    locker = sqlite3.connect(project.database, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        called = project.run_cli("call", "sqlite.add", "--args", "[1, 1]", timeout=60)
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert called.returncode == 1
    last = called.stderr.strip().splitlines()[-1]
    assert last.startswith(f"celeriac: sqlite broker {project.database}: publish:"), called.stderr
    assert "locked" in last and "busy_timeout=0.5s" in last
    assert "Traceback" not in called.stderr
