"""The REST API, /metrics and /healthz against a real worker subprocess on Redis."""

from __future__ import annotations

import itertools
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from celeriac.plugins.dashboard import DashboardConfig, _api, create_app
from celeriac.plugins.dashboard._monitor import Monitor
from celeriac.plugins.dashboard._security import verify_password
from celeriac.testing import wait_for
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from .conftest import CELERIAC, Cluster, csrf_headers, dashboard_client, serve, stop_serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def client(cluster: Cluster) -> Any:
    with dashboard_client(cluster) as client:
        wait_for(lambda: _worker(client, cluster.hostname), timeout=15, message="the worker never appeared")
        yield client


def _worker(client: TestClient, hostname: str) -> dict[str, Any] | None:
    workers = client.get("/api/workers").json()["workers"]
    return next((w for w in workers if w["hostname"] == hostname and w["alive"]), None)


def _task(client: TestClient, task_id: str, state: str) -> dict[str, Any] | None:
    response = client.get(f"/api/tasks/{task_id}")
    return response.json() if response.status_code == 200 and response.json()["state"] == state else None


def test_workers_list_and_detail_show_pool_queues_tasks_and_masked_conf(client: TestClient, cluster: Cluster) -> None:
    worker = _worker(client, cluster.hostname)
    assert worker is not None and worker["sw_ident"] == "celeriac"
    assert isinstance(worker["online"], float) and worker["online"] <= time.time() and worker["offline"] is None
    detail = client.get(f"/api/workers/{cluster.hostname}").json()
    inspect = detail["inspect"]
    assert inspect["stats"]["pool"]["max-concurrency"] == 2
    assert [q["name"] for q in inspect["active_queues"]] == [cluster.queue]
    assert "dashboard_tasks.add" in inspect["registered"]
    assert inspect["conf"]["broker_url"].startswith("redis://")
    assert client.get("/api/workers/nobody@nowhere").status_code == 404


def test_tasks_appear_with_results_and_can_be_filtered_sorted_searched_and_paged(
    client: TestClient, cluster: Cluster
) -> None:
    ok = cluster.app.send_task("dashboard_tasks.add", [2, 3])
    bad = cluster.app.send_task("dashboard_tasks.fail", ["boom-marker"])
    assert ok.get(timeout=15) == 5
    done = wait_for(lambda: _task(client, ok.id, "SUCCESS"), timeout=15)
    failed = wait_for(lambda: _task(client, bad.id, "FAILURE"), timeout=15)
    assert done["result"] == "5" and done["worker"] == cluster.hostname and done["runtime"] is not None
    assert done["args"] == "(2, 3)" or "2, 3" in done["args"]
    assert "boom-marker" in failed["exception"] and "ValueError" in failed["traceback"]

    def ids(**params: Any) -> list[str]:
        page = client.get("/api/tasks", params=params).json()
        return [task["uuid"] for task in page["tasks"]]

    assert ok.id in ids(state="SUCCESS") and bad.id not in ids(state="SUCCESS")
    assert ids(name="dashboard_tasks.fail", search="boom-marker") == [bad.id]
    assert ok.id not in ids(worker="someone-else@host")
    page = client.get("/api/tasks", params={"limit": 1, "sort": "name", "order": "asc"}).json()
    assert page["total"] >= 2 and len(page["tasks"]) == 1
    assert "dashboard_tasks.add" in client.get("/api/tasks/names").json()["names"]
    result = client.get(f"/api/tasks/{ok.id}/result").json()
    assert result == {"task_id": ok.id, "state": "SUCCESS", "result": 5, "traceback": None}
    assert client.get("/api/tasks", params={"sort": "nonsense"}).status_code == 400
    assert client.get("/api/tasks", params={"state": "DONE"}).json()["error"].startswith("state: one of")
    assert client.get("/api/tasks/no-such-task").status_code == 404


def test_send_a_task_by_name_then_revoke_it_before_it_runs(client: TestClient, cluster: Cluster) -> None:
    headers = csrf_headers(client)
    sent = client.post(
        "/api/tasks/send", json={"name": "dashboard_tasks.add", "args": [1, 1], "countdown": 2}, headers=headers
    )
    assert sent.status_code == 202, sent.text
    task_id = sent.json()["task_id"]
    revoked = client.post(f"/api/tasks/{task_id}/revoke", json={"terminate": False}, headers=headers)
    assert revoked.status_code == 200
    assert any(cluster.hostname in reply for reply in revoked.json()["replies"])
    record = wait_for(
        lambda: _task(client, task_id, "REVOKED"), timeout=20, message="the revoked task was not reported"
    )
    assert record["name"] == "dashboard_tasks.add"  # no worker ever received it: the dashboard knows the name
    assert cluster.app.AsyncResult(task_id).state == "REVOKED"
    assert client.post("/api/tasks/send", json={"name": ""}, headers=headers).status_code == 400


def test_pool_queue_and_limit_controls(client: TestClient, cluster: Cluster) -> None:
    headers = csrf_headers(client)
    base = f"/api/workers/{cluster.hostname}"

    def pool_size() -> int:
        return int(client.get(base).json()["inspect"]["stats"]["pool"]["max-concurrency"])

    grown = client.post(f"{base}/pool-grow", json={"n": 1}, headers=headers)
    assert grown.status_code == 200 and "ok" in grown.json()["reply"], grown.text
    assert pool_size() == 3
    assert client.post(f"{base}/pool-shrink", json={"n": 1}, headers=headers).status_code == 200
    assert pool_size() == 2
    extra = f"{cluster.queue}-extra"
    assert "ok" in client.post(f"{base}/add-consumer", json={"queue": extra}, headers=headers).json()["reply"]
    queues = [q["name"] for q in client.get(base).json()["inspect"]["active_queues"]]
    assert extra in queues
    assert "ok" in client.post(f"{base}/cancel-consumer", json={"queue": extra}, headers=headers).json()["reply"]
    rate = client.post(
        f"{base}/rate-limit", json={"task_name": "dashboard_tasks.add", "rate": "100/m"}, headers=headers
    )
    assert "ok" in rate.json()["reply"]
    off = client.post(f"{base}/rate-limit", json={"task_name": "dashboard_tasks.add", "rate": None}, headers=headers)
    assert "ok" in off.json()["reply"]
    limits = client.post(
        f"{base}/time-limit", json={"task_name": "dashboard_tasks.add", "soft": 10, "hard": 20}, headers=headers
    )
    assert "ok" in limits.json()["reply"]
    unknown = client.post(f"{base}/rate-limit", json={"task_name": "no.such.task", "rate": "1/s"}, headers=headers)
    assert unknown.status_code == 400 and "unknown task" in unknown.json()["reply"]["error"]
    assert client.post(f"{base}/pool-grow", json={"n": 0}, headers=headers).status_code == 400
    assert client.post(f"{base}/explode", json={}, headers=headers).status_code == 404
    assert client.post(f"{base}/autoscale", json={"max": 1, "min": 3}, headers=headers).status_code == 400


def test_queues_metrics_health_and_openapi(client: TestClient, cluster: Cluster) -> None:
    assert cluster.app.send_task("dashboard_tasks.add", [4, 4]).get(timeout=15) == 8
    queues = {q["name"]: q for q in client.get("/api/queues").json()["queues"]}
    assert queues[cluster.queue]["consumers"] == [cluster.hostname]
    assert queues[cluster.queue]["length"] == 0
    wait_for(lambda: "dashboard_tasks.add" in client.get("/metrics").text, timeout=10)
    text = client.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {
        "celeriac_dashboard_tasks",
        "celeriac_task_events",
        "celeriac_task_runtime_seconds",
        "celeriac_queue_length",
        "celeriac_workers_online",
    } <= set(families)
    assert families["celeriac_dashboard_tasks"].type == "gauge"
    assert families["celeriac_task_events"].type == "counter"
    current = {
        sample.labels["state"]: sample.value
        for sample in families["celeriac_dashboard_tasks"].samples
        if sample.labels["name"] == "dashboard_tasks.add"
    }
    assert current.get("SUCCESS", 0) >= 1 and "STARTED" not in current  # each task once, in its current state
    online = [sample.value for sample in families["celeriac_workers_online"].samples]
    assert online and online[0] >= 1
    assert client.get("/healthz").json() == {"status": "ok", "receiving_events": True}
    graphs = client.get("/api/graphs").json()
    assert "dashboard_tasks.add" in graphs["runtimes"] and graphs["throughput"]
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/workers", "/api/tasks", "/api/tasks/{task_id}/revoke", "/api/queues", "/metrics"):
        assert path in spec["paths"]
    assert "/api/workers/{hostname}/pool-grow" in spec["paths"]


def test_the_celeriac_dashboard_command_serves_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    history = tmp_path / "history.db"
    command = [CELERIAC, "dashboard", "--port", str(port), "--history-db", str(history), "--read-only"]
    process = subprocess.Popen(command, cwd=cluster.directory, env=cluster.env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def workers() -> list[str]:
            try:
                response = httpx.get(f"{base}/api/workers", timeout=2)
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                return []
            return [w["hostname"] for w in response.json()["workers"] if w["alive"]]

        wait_for(lambda: cluster.hostname in workers(), timeout=30, message="the dashboard never showed the worker")
        assert httpx.get(f"{base}/healthz", timeout=2).json()["status"] == "ok"
        assert httpx.get(f"{base}/api/settings", timeout=2).json()["read_only"] is True
        assert "celeriac" in httpx.get(f"{base}/workers", timeout=2).text
        assert history.exists()
    finally:
        process.terminate()
        process.wait(15)
        if process.stderr is not None:
            process.stderr.close()


def test_the_event_stream_tells_a_page_that_fell_behind_to_resync(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_api, "STREAM_QUEUE_SIZE", 3)
    monitor = Monitor(cluster.app)
    url, server, thread = serve(create_app(cluster.app, DashboardConfig(), monitor=monitor, start_monitor=False))
    try:
        with httpx.stream("GET", f"{url}/api/stream", timeout=15) as response:
            events = (line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: "))
            assert next(events) == "hello"
            beat = {"type": "worker-heartbeat", "hostname": "busy@host", "freq": 2.0}
            for _ in range(200):  # far more than the page's queue holds before the stream drains it
                monitor.apply({**beat, "timestamp": time.time()})
            assert "resync" in itertools.islice(events, 5)
    finally:
        stop_serving(server, thread)


def _dashboard(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [CELERIAC, "dashboard", *args], cwd=tmp_path, capture_output=True, text=True, timeout=30, env=env, input=stdin
    )


def test_the_command_refuses_a_port_in_use_or_out_of_range_before_printing_the_url(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _dashboard(tmp_path, "--port", str(port))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"celeriac: dashboard: port {port} on 127.0.0.1 is in use; stop what listens there or pick another with --port"
    ]
    result = _dashboard(tmp_path, "--port", "99999")
    assert result.returncode == 2 and "99999 is not in the range 1<=x<=65535" in result.stderr
    assert "http://" not in result.stderr


def test_hash_password_reads_stdin(tmp_path: Path) -> None:
    result = _dashboard(tmp_path, "--hash-password", "--password-stdin", stdin="s3cret-pass\n")
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest.startswith("scrypt$")
    assert verify_password("s3cret-pass", digest) and not verify_password("other", digest)
    empty = _dashboard(tmp_path, "--hash-password", "--password-stdin", stdin="")
    assert empty.returncode == 2 and "the password is empty" in empty.stderr
    alone = _dashboard(tmp_path, "--password-stdin")
    assert alone.returncode == 2 and "--password-stdin goes with --hash-password" in alone.stderr
