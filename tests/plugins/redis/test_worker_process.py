"""``celeriac worker`` processes on Redis: a killed worker's task runs elsewhere and its
result is stored once; a task longer than the visibility timeout runs once; an ETA task runs
once and on time across a worker restart."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import celeriac
import pytest
import redis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def client_app(broker_url: str, results_url: str, prefix: str) -> Iterator[celeriac.Celeriac]:
    app = celeriac.Celeriac(
        "client",
        broker_url=f"{broker_url}?global_keyprefix={prefix}",
        result_store=f"{results_url}?global_keyprefix={prefix}",
        environ={},
        set_as_current=False,
    )
    yield app
    app.close()


class Publications:
    """Counts the states published for one task id (every result write is published)."""

    def __init__(self, url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._pubsub.get_message(timeout=5)  # the confirmation
        self.states: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None:
                self.states.append(message["data"].split(b"\n")[1].decode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


def configure(project: Any, broker_url: str, results_url: str, prefix: str, **options: Any) -> str:
    queue = f"work-{uuid.uuid4().hex[:8]}"
    project.configure(
        f"{broker_url}?global_keyprefix={prefix}", f"{results_url}?global_keyprefix={prefix}", queue, **options
    )
    return queue


def test_a_task_of_a_killed_worker_runs_on_another_and_its_result_is_stored_once(
    project: Any, client_app: celeriac.Celeriac, broker_url: str, results_url: str, prefix: str
) -> None:
    queue = configure(project, broker_url, results_url, prefix, visibility_timeout=1.5)
    first = project.start_worker()
    task_id = str(uuid.uuid4())
    publications = Publications(results_url, f"{prefix}celery-task-meta-{task_id}")
    try:
        result = client_app.send_task("redis_tasks.sleep", [1.0, "victim"], queue=queue, task_id=task_id)
        project.wait_for_events(lambda events: any(event[0] == "start" for event in events))

        first.kill()  # SIGKILL mid-task: no hand-back, no ack
        second = project.start_worker()

        assert result.get(timeout=30) == "victim"
        events = project.events()
        assert [(event, pid) for event, _, _, pid in events if event == "start"] == [
            ("start", first.proc.pid),
            ("start", second.proc.pid),
        ]
        assert [(event, pid) for event, _, _, pid in events if event == "end"] == [("end", second.proc.pid)]
        deadline = time.monotonic() + 1.0  # a duplicate write would come right after
        while time.monotonic() < deadline and publications.states.count("SUCCESS") < 2:
            time.sleep(0.05)
        assert publications.states.count("SUCCESS") == 1
    finally:
        publications.close()


def test_a_task_ten_times_longer_than_the_visibility_timeout_runs_once(
    project: Any, client_app: celeriac.Celeriac, broker_url: str, results_url: str, prefix: str
) -> None:
    queue = configure(project, broker_url, results_url, prefix, visibility_timeout=0.5)
    project.start_worker()
    project.start_worker()  # an idle second worker that would claim an unrenewed lease

    result = client_app.send_task("redis_tasks.sleep", [5.0, "long"], queue=queue)

    assert result.get(timeout=30) == "long"
    starts = [event for event in project.events() if event[0] == "start"]
    assert len(starts) == 1


def test_an_eta_task_runs_once_and_on_time_although_the_worker_restarts(
    project: Any, client_app: celeriac.Celeriac, broker_url: str, results_url: str, prefix: str
) -> None:
    queue = configure(project, broker_url, results_url, prefix)
    first = project.start_worker()
    eta = time.time() + 5
    result = client_app.send_task("redis_tasks.stamp", ["eta"], queue=queue, countdown=eta - time.time())

    # A shutdown 5 s before the ETA. (-SIGTERM: the signal came before the worker installed its
    # handler, right after logging "ready" -- a restart all the same.)
    assert first.terminate() in (0, -signal.SIGTERM)
    project.start_worker()

    ran_at = result.get(timeout=30)
    runs = [event for event in project.events() if event[0] == "run"]
    assert len(runs) == 1
    assert abs(ran_at - eta) <= 0.5, f"ran {ran_at - eta:+.3f}s off its ETA"
