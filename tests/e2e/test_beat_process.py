"""End to end: ``celeriac beat`` (two of them) and ``celeriac worker --beat`` as subprocesses,
with the schedule in ``celeriac.toml``, against Redis (database 9) and SQLite.

Every run is recorded by the worker in a log file with its task id; a run sent twice would
show its id twice."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celeriac.testing import wait_for

from tests._cli import CELERIAC, Process, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

REDIS_DB = 9


def wait_until(condition: Callable[[], object], timeout: float, message: str, *said: Process) -> None:
    """``wait_for`` the condition; on timeout the message shows what ``said`` processes logged by then."""
    try:
        wait_for(condition, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{message}; they said: {[process.lines for process in said]}") from None


def redis_url(request: pytest.FixtureRequest) -> str:
    from celeriac.plugins.redis import _testing

    url, prefix = _testing.server_url(REDIS_DB), f"beat-e2e-{uuid.uuid4().hex[:10]}:"
    _testing.require_server(url)
    request.addfinalizer(lambda: _testing.delete_keys(url, prefix))
    return f"{url}?global_keyprefix={prefix}"


def sqlite_url(request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{request.getfixturevalue('tmp_path') / 'celeriac.db'}"


class Project:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.log = root, root / "runs.log"
        (root / "celeriac.toml").write_text(
            f"""
[celeriac]
imports = ["beat_tasks"]
broker_url = "{url}"
result_store = "{url}"

[celeriac.worker]
pool = "threads"
concurrency = 2
shutdown_timeout = 10

[celeriac.beat]
lease_timeout = 2.0
max_loop_interval = 0.5

[celeriac.beat.schedule.tick]
task = "beat_tasks.record"
schedule = "1s"
args = ["tick"]
expires = 30
"""
        )
        self.env = cli_env(BEAT_LOG=str(self.log))
        self.processes: list[Process] = []

    def start(self, *args: str) -> Process:
        process = Process(list(args), self.root, self.env)
        self.processes.append(process)
        return process

    def runs(self) -> list[str]:
        """Task ids of the runs the worker recorded."""
        if not self.log.exists():
            return []
        return [line.split()[1] for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture(params=[pytest.param(redis_url, id="redis"), pytest.param(sqlite_url, id="sqlite")])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path, request.param(request))
    yield made
    for process in made.processes:
        process.close()


def test_two_beats_send_each_run_once_and_the_survivor_takes_over_from_a_killed_leader(project: Project) -> None:
    worker = project.start("worker", "-l", "WARNING")
    beats = [project.start("beat", "-l", "INFO") for _ in range(2)]
    wait_until(lambda: len(project.runs()) >= 3, 45, "no runs recorded", *beats, worker)
    leaders = [beat for beat in beats if beat.said("leader now")]
    assert len(leaders) == 1, [beat.lines for beat in beats]
    [leader] = leaders
    [survivor] = [beat for beat in beats if beat is not leader]
    leader.proc.send_signal(signal.SIGKILL)  # dies holding the lease
    leader.close()
    killed_at = len(project.runs())
    wait_until(lambda: survivor.said("leader now"), 30, "the survivor never took over", survivor)
    wait_until(lambda: len(project.runs()) >= killed_at + 3, 30, "the new leader sent nothing", survivor, worker)
    assert survivor.stop() == 0
    assert worker.stop() == 0
    runs = project.runs()
    assert len(runs) == len(set(runs)), f"a run was sent twice: {runs}"
    assert not any("Traceback" in line for line in survivor.lines), survivor.lines


def test_worker_with_embedded_beat(project: Project) -> None:
    worker = project.start("worker", "--beat", "-l", "INFO")
    wait_until(lambda: len(project.runs()) >= 2, 45, "no runs recorded", worker)
    assert worker.stop() == 0
    assert worker.said("released the lease")
    runs = project.runs()
    assert len(runs) == len(set(runs))


def test_beat_refuses_a_broker_other_processes_cannot_reach(tmp_path: Path) -> None:
    (tmp_path / "celeriac.toml").write_text('[celeriac]\nbroker_url = "memory://x"\nresult_store = "memory://x"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    done = subprocess.run([CELERIAC, "beat"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "celeriac: broker_url memory://x only reaches workers inside this process; point broker_url at a broker "
        "other processes share (e.g. redis://127.0.0.1:6379/0), or run beat inside a worker with "
        "`celeriac worker --beat`"
    ]
