"""End to end: ``celeriac worker`` as a subprocess, assembled from a config file."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

FIXTURES = Path(__file__).parent.parent / "fixtures"
#: The installed console script (tests the entry point, not just the module).
CELERIAC = [str(Path(sys.executable).with_name("celeriac"))]


class Process:
    """A running CLI process whose stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_lines(self, prefix: str, count: int, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while len([line for line in self.seen if line.startswith(prefix)]) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"wanted {count} lines starting {prefix!r}; got: {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue
        return [line for line in self.seen if line.startswith(prefix)]

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for exit; stdout keeps going to the reader thread (read to EOF), stderr is returned."""
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        self.close()
        return self.proc.returncode, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "celeriac.toml").write_text(
        """
[celeriac]
imports = ["e2e_tasks"]
plugins = ["e2e_plugin"]
broker_url = "memory://e2e"
result_store = "memory://e2e"

[celeriac.worker]
pool = "threads"
concurrency = 3
queues = ["default"]
shutdown_timeout = 20
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return tmp_path, env


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in processes:
        process.close()


def test_worker_from_config_runs_tasks_and_shuts_down_warmly(
    project: tuple[Path, dict[str, str]], started: list[Process]
) -> None:
    cwd, env = project
    env["E2E_TASKS"] = "25"
    worker = Process([*CELERIAC, "worker", "-l", "info"], cwd, env)
    started.append(worker)
    results = worker.wait_for_lines("E2E-RESULT e2e.add", 25)
    assert sorted(int(line.split()[-1]) for line in results) == [2 * i for i in range(25)]
    assert worker.wait_for_lines("E2E-FAILURE", 1) == ["E2E-FAILURE e2e.fail ValueError: expected failure"]
    worker.proc.send_signal(signal.SIGTERM)
    code, err = worker.finish()
    assert code == 0, err
    assert any(line.startswith("E2E-SHUTDOWN celeriac@") for line in worker.seen)
    assert "warm shutdown" in err
    assert "Traceback" not in err


def test_sigterm_lets_a_running_task_finish(project: tuple[Path, dict[str, str]], started: list[Process]) -> None:
    cwd, env = project
    env["E2E_TASKS"] = "0"
    env["E2E_SLOW"] = "1.5"
    worker = Process([*CELERIAC, "worker", "-c", "2", "-P", "threads"], cwd, env)
    started.append(worker)
    worker.wait_for_lines("E2E-PRERUN e2e.sleep", 1)
    worker.proc.send_signal(signal.SIGTERM)
    code, err = worker.finish()
    assert code == 0, err
    assert "E2E-RESULT e2e.sleep 1.5" in worker.seen


def test_worker_with_bad_config_fails_fast_with_one_line(
    project: tuple[Path, dict[str, str]], started: list[Process]
) -> None:
    cwd, env = project
    (cwd / "celeriac.toml").write_text('[celeriac]\nimports = ["e2e_tasks"]\n[celeriac.worker]\npool = "gevent"\n')
    result = subprocess.run([*CELERIAC, "worker"], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "celeriac: worker.pool: no pool called 'gevent'; installed: asyncio, processes, solo, threads"
    )
    assert "Traceback" not in result.stderr


def test_flags_override_config_and_unknown_import_is_clear(
    project: tuple[Path, dict[str, str]], started: list[Process]
) -> None:
    cwd, env = project
    (cwd / "celeriac.toml").write_text('[celeriac]\nimports = ["not_a_module_anywhere"]\n')
    result = subprocess.run(
        [*CELERIAC, "worker", "-P", "solo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "imports: cannot import 'not_a_module_anywhere'" in result.stderr


def test_second_signal_is_a_cold_shutdown(project: tuple[Path, dict[str, str]], started: list[Process]) -> None:
    cwd, env = project
    env["E2E_TASKS"] = "0"
    env["E2E_SLOW"] = "30"
    worker = Process([*CELERIAC, "worker", "-c", "2"], cwd, env)
    started.append(worker)
    worker.wait_for_lines("E2E-PRERUN e2e.sleep", 1)
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_lines("E2E-SHUTTING-DOWN warm", 1)  # two signals at once would coalesce into one
    worker.proc.send_signal(signal.SIGTERM)
    code, err = worker.finish(timeout=20)
    assert time.monotonic() - began < 15
    assert code == 0, err
    assert "cold shutdown" in err
    assert not any(line.startswith("E2E-RESULT e2e.sleep") for line in worker.seen)
