"""The task history (memory and SQLite: bounds, filters, restart survival) and the counters
behind the graphs and /metrics, fed with event dicts of Celery's shape."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import celeriac
import pytest
from celeriac.plugins.dashboard import DashboardConfig, create_app
from celeriac.plugins.dashboard._history import MemoryHistory, Query, SQLiteHistory, open_history
from celeriac.plugins.dashboard._monitor import Monitor
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient


def task_events(
    task_id: str, name: str = "proj.add", *, at: float | None = None, ok: bool = True
) -> list[dict[str, Any]]:
    now = at if at is not None else time.time()
    base = {"uuid": task_id, "hostname": "w1@host", "pid": 1, "clock": 1, "utcoffset": 0}
    finish: dict[str, Any] = (
        {"type": "task-succeeded", "result": "42", "runtime": 0.25}
        if ok
        else {"type": "task-failed", "exception": "ValueError('bad')", "traceback": "Traceback ...\nValueError: bad"}
    )
    return [
        {
            **base,
            "type": "task-received",
            "name": name,
            "args": "(1, 2)",
            "kwargs": "{'key': 'needle'}",
            "timestamp": now,
        },
        {**base, "type": "task-started", "timestamp": now + 0.01},
        {**base, **finish, "timestamp": now + 0.3},
    ]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_history_filters_sorts_pages_and_bounds(kind: str, tmp_path: Path) -> None:
    history = MemoryHistory(max_tasks=3) if kind == "memory" else SQLiteHistory(tmp_path / "h.db", max_tasks=3)
    now = time.time()
    for index in range(5):
        history.put(
            {
                "uuid": f"t{index}",
                "name": "a" if index % 2 else "b",
                "state": "SUCCESS",
                "timestamp": now + index,
                "args": f"({index},)",
                "worker": "w1",
            }
        )
    history.prune()
    assert len(history) == 3  # the oldest went first
    assert history.get("t0") is None and history.get("t4") is not None
    total, rows = history.query(Query(sort="timestamp", descending=True))
    assert total == 3 and [row["uuid"] for row in rows] == ["t4", "t3", "t2"]
    assert [row["uuid"] for row in history.query(Query(name="a"))[1]] == ["t3"]
    assert [row["uuid"] for row in history.query(Query(search="(2,)"))[1]] == ["t2"]
    assert history.query(Query(since=now + 3.5))[0] == 1
    assert [row["uuid"] for row in history.query(Query(limit=1, offset=1, descending=False))[1]] == ["t3"]
    assert history.names() == ["a", "b"]
    history.close()


def test_sqlite_history_drops_finished_tasks_older_than_max_age(tmp_path: Path) -> None:
    history = SQLiteHistory(tmp_path / "h.db", max_tasks=100, max_age=60)
    history.put({"uuid": "old", "state": "SUCCESS", "timestamp": time.time() - 3600})
    history.put({"uuid": "old-running", "state": "STARTED", "timestamp": time.time() - 3600})
    history.put({"uuid": "new", "state": "SUCCESS", "timestamp": time.time()})
    assert history.prune() == 1
    assert history.get("old") is None and history.get("old-running") and history.get("new")
    history.close()


def test_task_history_survives_a_dashboard_restart_with_sqlite(app: celeriac.Celeriac, tmp_path: Path) -> None:
    config = DashboardConfig(history_db=f"sqlite:///{tmp_path / 'history.db'}")
    task_id = str(uuid.uuid4())
    first = Monitor(app, open_history(config.history_db, 100, None))
    for event in task_events(task_id):
        first.apply(event)
    first.history.close()

    second = Monitor(app, open_history(config.history_db, 100, None))  # a new process would do this
    web = create_app(app, config, monitor=second, start_monitor=False)
    with TestClient(web, base_url="http://127.0.0.1") as client:
        record = client.get(f"/api/tasks/{task_id}").json()
    assert record["state"] == "SUCCESS" and record["result"] == "42" and record["worker"] == "w1@host"
    second.history.close()


def test_monitor_links_children_and_counts_for_graphs_and_metrics(app: celeriac.Celeriac) -> None:
    monitor = Monitor(app)
    parent, child = str(uuid.uuid4()), str(uuid.uuid4())
    for event in task_events(parent):
        monitor.apply(event)
    for event in task_events(child, "proj.fail", ok=False):
        event["parent_id"] = parent
        event["root_id"] = parent
        monitor.apply(event)
    monitor.apply(
        {
            "type": "worker-heartbeat",
            "hostname": "w1@host",
            "timestamp": time.time(),
            "freq": 2.0,
            "active": 0,
            "processed": 2,
            "local_received": time.time(),
        }
    )
    assert monitor.history.get(parent)["children"] == [child]  # type: ignore[index]
    workers = monitor.workers()
    assert workers[0]["succeeded"] == 1 and workers[0]["failed"] == 1 and workers[0]["alive"]
    graphs = monitor.stats.graphs()
    assert sum(p["succeeded"] for p in graphs["throughput"]) == 1
    assert sum(p["failed"] for p in graphs["throughput"]) == 1
    assert graphs["runtimes"]["proj.add"]["p50"] == pytest.approx(0.25)
    monitor.stats.queue_sample({"default": 7})
    text = monitor.stats.prometheus(workers_online=1, current=monitor.history.counts())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert families["celeriac_dashboard_tasks"].type == "gauge"
    current = {labels: value for (name, labels), value in samples.items() if name == "celeriac_dashboard_tasks"}
    # each task once, in its current state (not once per event)
    assert current == {
        (("name", "proj.add"), ("state", "SUCCESS")): 1,
        (("name", "proj.fail"), ("state", "FAILURE")): 1,
    }
    assert samples[("celeriac_task_events_total", (("name", "proj.fail"), ("state", "FAILURE")))] == 1
    assert samples[("celeriac_task_events_total", (("name", "proj.add"), ("state", "STARTED")))] == 1
    assert samples[("celeriac_task_runtime_seconds_count", (("name", "proj.add"),))] == 1
    assert samples[("celeriac_task_runtime_seconds_bucket", (("le", "0.25"), ("name", "proj.add")))] == 1
    assert samples[("celeriac_queue_length", (("queue", "default"),))] == 7
    assert samples[("celeriac_workers_online", ())] == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_history_counts_tasks_by_name_and_current_state(kind: str, tmp_path: Path) -> None:
    history = MemoryHistory() if kind == "memory" else SQLiteHistory(tmp_path / "h.db")
    for index, (name, state) in enumerate([("a", "SUCCESS"), ("a", "SUCCESS"), ("a", "FAILURE"), (None, "REVOKED")]):
        history.put({"uuid": f"t{index}", "name": name, "state": state, "timestamp": time.time()})
    history.put({"uuid": "t0", "name": "a", "state": "STARTED", "timestamp": time.time()})  # replaces t0
    assert history.counts() == {
        ("a", "STARTED"): 1,
        ("a", "SUCCESS"): 1,
        ("a", "FAILURE"): 1,
        ("unknown", "REVOKED"): 1,
    }
    history.close()


def test_a_task_revoked_before_a_worker_got_it_keeps_the_name_the_dashboard_knows(app: celeriac.Celeriac) -> None:
    monitor = Monitor(app)
    sent_here, revoked_here, announced = (str(uuid.uuid4()) for _ in range(3))
    monitor.remember_name(sent_here, "proj.sent")  # what /api/tasks/send does
    revoked = {"type": "task-revoked", "hostname": "w1@host", "timestamp": time.time(), "expired": False}
    monitor.apply({**revoked, "uuid": sent_here})
    assert monitor.history.get(sent_here)["name"] == "proj.sent"  # type: ignore[index]
    # revoked first, named afterwards (a revoke request with a name): the record is filled in
    monitor.apply({**revoked, "uuid": revoked_here})
    assert monitor.history.get(revoked_here)["name"] is None  # type: ignore[index]
    monitor.remember_name(revoked_here, "proj.revoked")
    assert monitor.history.get(revoked_here)["name"] == "proj.revoked"  # type: ignore[index]
    # a task-sent event names it too
    monitor.apply({"type": "task-sent", "uuid": announced, "name": "proj.announced", "timestamp": time.time()})
    monitor.apply({**revoked, "uuid": announced})
    record = monitor.history.get(announced)
    assert record is not None and record["name"] == "proj.announced" and record["state"] == "REVOKED"
    assert monitor.history.counts()[("proj.sent", "REVOKED")] == 1


def test_workers_report_when_they_came_online_and_went_offline(app: celeriac.Celeriac) -> None:
    monitor = Monitor(app)
    now = time.time()
    beat = {"type": "worker-heartbeat", "freq": 2.0, "active": 0, "processed": 0}
    monitor.apply({**beat, "hostname": "seen@host", "timestamp": now, "local_received": now})
    monitor.apply(
        {**beat, "type": "worker-online", "hostname": "born@host", "timestamp": now - 5, "local_received": now - 5}
    )
    monitor.apply({**beat, "hostname": "born@host", "timestamp": now, "local_received": now})
    monitor.apply({**beat, "hostname": "gone@host", "timestamp": now - 60, "local_received": now - 60})
    monitor.apply({**beat, "type": "worker-offline", "hostname": "left@host", "timestamp": now, "local_received": now})
    workers = {worker["hostname"]: worker for worker in monitor.workers()}
    assert workers["seen@host"]["online"] == now and workers["seen@host"]["offline"] is None
    assert workers["born@host"]["online"] == now - 5 and workers["born@host"]["alive"]
    assert not workers["gone@host"]["alive"] and workers["gone@host"]["offline"] > now - 60
    assert workers["left@host"]["offline"] == now and not workers["left@host"]["alive"]
