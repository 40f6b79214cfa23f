"""Fixtures for the Redis plugin tests: the shared test server (database 13 for the
transport, 14 for results, a fresh key prefix per test, deleted afterwards), private
``redis-server`` processes on free ports for fault tests, and ``celeriac worker``
subprocesses (``project``)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celeriac.plugins.redis import _testing

TRANSPORT_DB = 13
RESULTS_DB = 14


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def broker_url(prefix: str) -> Iterator[str]:
    """The shared test server's transport database, keys under ``prefix`` (deleted after)."""
    url = _testing.server_url(TRANSPORT_DB)
    _testing.require_server(url)
    yield url
    _testing.delete_keys(url, prefix)


@pytest.fixture
def results_url(prefix: str) -> Iterator[str]:
    """The shared test server's result database, keys under ``prefix`` (deleted after)."""
    url = _testing.server_url(RESULTS_DB)
    _testing.require_server(url)
    yield url
    _testing.delete_keys(url, prefix)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` (AOF on, fsync always) that tests can stop and start again."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.options = options  # extra redis-server options
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        options = ["--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "", "--appendonly", "yes"]
        options += ["--appendfsync", "always", "--daemonize", "no", "--loglevel", "warning", *self.options]
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, protocol=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        """Shut down cleanly (the AOF keeps what Redis had)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: redis-server flushes the AOF and exits
        self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A private Redis server for this test; stopped afterwards. Extra ``redis-server``
    options: ``@pytest.mark.redis_options("--rename-command", "HELLO", "")``."""
    directory = tmp_path / "redis-data"
    directory.mkdir()
    marker = request.node.get_closest_marker("redis_options")
    server = RedisServer(directory, *(marker.args if marker else ()))
    try:
        server.start()
        yield server
    finally:
        server.kill()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_options(*options): extra redis-server options for private_redis")


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CELERIAC = str(Path(sys.executable).with_name("celeriac"))


class WorkerProcess:
    """A ``celeriac worker`` subprocess whose log lines (stderr) are collected by a thread."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [CELERIAC, "worker", "-l", "info", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc.poll() is not None and self.lines.empty()):
                raise AssertionError(f"no log line with {text!r}; got:\n" + "\n".join(self.seen))
            try:
                self.seen.append(self.lines.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                continue

    def wait_ready(self) -> None:
        self.wait_for_line(" ready: pool=")

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())


class Project:
    """A directory with a ``celeriac.toml`` and the environment to run workers in it."""

    def __init__(self, cwd: Path, log_url: str, log_key: str) -> None:
        self.cwd = cwd
        self.log_url, self.log_key = log_url, log_key
        self.workers: list[WorkerProcess] = []
        env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
        env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        env["REDIS_TASKS_LOG"] = f"{log_url} {log_key}"
        self.env = env

    def configure(self, broker_url: str, result_store: str, queue: str, **transport_options: Any) -> None:
        options = ", ".join(f"{key} = {value!r}" for key, value in transport_options.items())
        (self.cwd / "celeriac.toml").write_text(
            f"""
[celeriac]
imports = ["redis_tasks"]
broker_url = "{broker_url}"
result_store = "{result_store}"
broker_transport_options = {{ {options} }}

[celeriac.worker]
pool = "threads"
concurrency = 2
queues = ["{queue}"]
shutdown_timeout = 10
"""
        )

    def start_worker(self, *args: str) -> WorkerProcess:
        worker = WorkerProcess(self.cwd, self.env, *args)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def events(self) -> list[tuple[str, str, float, int]]:
        """``(event, tag, unix time, pid)`` of every task run so far."""
        client = redis.Redis.from_url(self.log_url)
        try:
            raw = client.lrange(self.log_key, 0, -1)
        finally:
            client.close()
        events = []
        for item in raw:
            event, tag, at, pid = item.decode().split()
            events.append((event, tag, float(at), int(pid)))
        return events

    def wait_for_events(self, check: Callable[[list[tuple[str, str, float, int]]], bool], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if check(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met; events: {events}")
            time.sleep(0.02)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@pytest.fixture
def project(tmp_path: Path, broker_url: str, prefix: str) -> Iterator[Project]:
    """A project directory for worker processes; task runs are logged under ``prefix``."""
    directory = tmp_path / "project"
    directory.mkdir()
    project = Project(directory, broker_url, f"{prefix}events")
    try:
        yield project
    finally:
        project.close()
