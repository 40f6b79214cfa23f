"""End to end: ``celeriac worker --metrics-port`` as a subprocess, scraped over HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celeriac import Celeriac

from .conftest import REDIS_DB, scrape_url

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CELERIAC = str(Path(sys.executable).with_name("celeriac"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    from celeriac.plugins.redis import _testing

    url = _testing.server_url(REDIS_DB)
    _testing.require_server(url)
    prefix = f"test-metrics-e2e-{uuid.uuid4().hex[:12]}:"
    yield f"{url}?global_keyprefix={prefix}"
    _testing.delete_keys(url, prefix)


@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_worker_subprocess_serves_metrics(tmp_path: Path, redis_url: str, pool: str) -> None:
    broker_url = redis_url
    queue = f"metrics-e2e-{uuid.uuid4().hex[:8]}"
    (tmp_path / "celeriac.toml").write_text(
        f"""
[celeriac]
imports = ["obs_tasks"]
broker_url = "{broker_url}"
result_store = "{broker_url}"

[celeriac.worker]
pool = "{pool}"
concurrency = 2
queues = ["{queue}"]
shutdown_timeout = 10

[celeriac.prometheus]
address = "127.0.0.1"
"""
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [CELERIAC, "worker", "-l", "info", "--metrics-port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = Celeriac("client", broker_url=broker_url, result_store=broker_url, environ={})
    lines: list[str] = []
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"metrics on (http://\S+/metrics)", line)
            url = url or (found.group(1) if found else None)
            if " ready: pool=" in line:
                break
        assert url is not None, "no metrics line in:\n" + "".join(lines)
        results = [client.send_task("obs_tasks.add", [i, i], queue=queue) for i in range(4)]
        assert [result.get(timeout=30) for result in results] == [0, 2, 4, 6]
        with pytest.raises(Exception, match="always fails"):
            client.send_task("obs_tasks.fail", queue=queue).get(timeout=30)

        metrics = scrape_url(url)
        assert metrics.value("celeriac_tasks_received_total", task="obs_tasks.add", queue=queue) == 4
        assert metrics.value("celeriac_tasks_succeeded_total", task="obs_tasks.add", queue=queue) == 4
        assert metrics.value("celeriac_tasks_failed_total", task="obs_tasks.fail", queue=queue) == 1
        assert metrics.value("celeriac_task_runtime_seconds_bucket", task="obs_tasks.add", le="+Inf") == 4
        assert metrics.value("celeriac_worker_info", pool=pool) == 1
        assert metrics.value("celeriac_queue_length", queue=queue) == 0
        assert metrics.value("celeriac_queue_oldest_message_age_seconds", queue=queue) == 0.0
        assert "# TYPE celeriac_task_queue_wait_seconds histogram" in metrics.text
    finally:
        client.close()
        process.terminate()
        code = process.wait(timeout=30)
        rest = ""
        if process.stderr is not None:
            rest = process.stderr.read()
            process.stderr.close()
    assert code == 0, "".join(lines) + rest
