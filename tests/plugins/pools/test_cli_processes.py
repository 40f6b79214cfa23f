"""``celeriac worker -P processes`` as a real process on Redis (database 11): children are
started, serve tasks, and are gone after a warm shutdown; Ctrl-C does not reach them."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celeriac import Celeriac

from tests._cli import Process, cli_env

pytestmark = pytest.mark.timeout(60)


def children_of(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.fixture
def redis_url() -> Iterator[str]:
    from celeriac.plugins.redis import _testing

    server = _testing.server_url(11)
    _testing.require_server(server)
    prefix = f"pools-cli-{uuid.uuid4().hex[:12]}:"
    yield f"{server}?global_keyprefix={prefix}"
    _testing.delete_keys(server, prefix)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads child processes from /proc")
def test_processes_worker_serves_and_leaves_no_children(redis_url: str, tmp_path: Path) -> None:
    queue = f"pools-cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "celeriac.toml").write_text(
        f"""
[celeriac]
imports = ["pools_tasks"]
broker_url = "{redis_url}"
result_store = "{redis_url}"

[celeriac.worker]
pool = "processes"
concurrency = 2
queues = ["{queue}"]
shutdown_timeout = 10
"""
    )
    worker = Process(["worker", "-l", "info", "--max-tasks-per-child", "3"], tmp_path, cli_env())
    client = Celeriac("client", environ={}, broker_url=redis_url, result_store=redis_url)
    try:
        worker.wait_for_line(" ready: pool=processes", timeout=30)
        children = children_of(worker.pid)
        assert len(children) == 2
        pids = {client.send_task("pools_tasks.pid", queue=queue).get(timeout=20) for _ in range(8)}
        assert worker.pid not in pids
        assert len(pids) >= 3  # recycled after 3 tasks each
        running = client.send_task("pools_tasks.nap", (1.0,), queue=queue)
        worker.wait_for_line("pools_tasks.nap", timeout=10)
        last_children = children_of(worker.pid)
        assert len(last_children) == 2
        for child in last_children:
            os.kill(child, signal.SIGINT)  # as Ctrl-C does to the whole process group: ignored
        worker.proc.send_signal(signal.SIGTERM)  # warm shutdown: the running task finishes
        assert worker.proc.wait(timeout=30) == 0, worker.stderr
        assert running.get(timeout=10) in last_children
        assert not [child for child in last_children if alive(child)]
    finally:
        worker.close()
        client.close()
