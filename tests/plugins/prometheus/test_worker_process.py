"""End to end: ``celeriac worker --metrics-port`` as a subprocess, scraped over HTTP."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celeriac import Celeriac

from tests._cli import Process, cli_env

from .conftest import REDIS_DB, scrape_url


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
    process = Process(["worker", "-l", "info", "--metrics-port", "0"], tmp_path, cli_env())
    client = Celeriac("client", broker_url=broker_url, result_store=broker_url, environ={})
    try:
        process.wait_for_line(" ready: pool=")
        found = re.search(r"metrics on (http://\S+/metrics)", process.wait_for_line("metrics on ", timeout=0))
        assert found is not None, "no metrics line in:\n" + process.stderr
        url = found.group(1)
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
        code = process.stop(timeout=30)
    assert code == 0, process.stderr
