"""Fixtures for the dashboard tests: a real cluster on Redis (database 6, a fresh key prefix per
module, deleted afterwards) with a ``celeriac worker -E`` subprocess, a client app, and the
dashboard served by TestClient or by uvicorn on a free port (for the browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celeriac
import pytest
import uvicorn
from celeriac.plugins.dashboard import DashboardConfig, create_app
from celeriac.plugins.redis import _testing
from celeriac.testing import wait_for
from starlette.testclient import TestClient

DATABASE = 6
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CELERIAC = str(Path(sys.executable).with_name("celeriac"))


class Cluster:
    """A project directory with a ``celeriac.toml`` on Redis, its worker subprocess and a client app."""

    def __init__(self, directory: Path, url: str, prefix: str) -> None:
        self.directory = directory
        self.queue = f"dash-{uuid.uuid4().hex[:8]}"
        self.hostname = f"dash-{uuid.uuid4().hex[:6]}@test"
        broker = f"{url}?global_keyprefix={prefix}"
        (directory / "celeriac.toml").write_text(
            f"""
[celeriac]
imports = ["dashboard_tasks"]
broker_url = "{broker}"
result_store = "{broker}"
task_default_queue = "{self.queue}"

[celeriac.worker]
pool = "threads"
concurrency = 2
heartbeat_interval = 0.5
shutdown_timeout = 5
"""
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
        env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
        env["CELERIAC_CONFIG"] = str(directory / "celeriac.toml")
        self.env = env
        self.app = celeriac.Celeriac(
            "dashboard-tests",
            broker_url=broker,
            result_store=broker,
            task_default_queue=self.queue,
            environ={},
            set_as_current=False,
        )
        self.worker: subprocess.Popen[bytes] | None = None
        self.log = directory / "worker.log"

    def start_worker(self) -> None:
        with self.log.open("wb") as log:
            self.worker = subprocess.Popen(
                [CELERIAC, "worker", "-E", "-l", "info", "-n", self.hostname],
                cwd=self.directory,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for(lambda: " ready: pool=" in self.log.read_text() or self.worker_died(), timeout=30)
        if self.worker_died():
            raise AssertionError("the worker died:\n" + self.log.read_text())

    def worker_died(self) -> bool:
        return self.worker is not None and self.worker.poll() is not None

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)
        self.app.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One worker subprocess on Redis for the tests of a module."""
    url = _testing.server_url(DATABASE)
    _testing.require_server(url)
    prefix = f"test-dash-{uuid.uuid4().hex[:10]}:"
    cluster = Cluster(tmp_path_factory.mktemp("dashboard"), url, prefix)
    try:
        cluster.start_worker()
        yield cluster
    finally:
        cluster.close()
        _testing.delete_keys(url, prefix)


def serve(web: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Run ``web`` with uvicorn on a free loopback port in a thread; return its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(web, log_level="warning", timeout_graceful_shutdown=1, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10, message="uvicorn did not start")
    return f"http://127.0.0.1:{port}", server, thread


def stop_serving(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(10)


def dashboard_client(cluster: Cluster, **config: Any) -> TestClient:
    """A TestClient for a dashboard on ``cluster`` (use it as a context manager: the feed runs inside)."""
    web = create_app(cluster.app, DashboardConfig(**config), inspect_timeout=2.0)
    return TestClient(web, base_url="http://127.0.0.1")


def csrf_headers(client: TestClient) -> dict[str, str]:
    token = client.get("/api/csrf").json()["token"]
    return {"X-CSRF-Token": token}
