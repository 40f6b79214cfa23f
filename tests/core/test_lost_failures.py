"""A task that fails outside its own code (a hard time limit kills its process) is a failure like
any other: stored, counted, signalled, evented, its errbacks run -- by the worker process, since
the process that ran it is gone."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from celeriac import Celeriac, TimeLimitExceeded
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_hard_time_limit_failure_is_seen_by_signals_events_stats_and_errbacks() -> None:
    name = f"lost-{uuid.uuid4().hex}"
    app = Celeriac("tests", broker_url=f"memory://{name}", result_store=f"memory://{name}", environ={})
    app.conf.update({"worker_send_task_events": True})
    failures: list[tuple[str, str]] = []
    app.on("task_failure")(lambda task_id, exception: failures.append((task_id, type(exception).__name__)))
    state = app.events.State()
    receiver = app.events.Receiver(handlers={"*": state.event})
    capture = threading.Thread(target=receiver.capture, daemon=True)
    capture.start()

    @app.task(name="t.stuck", time_limit=0.5)
    def stuck() -> None:
        time.sleep(30)

    @app.task(name="t.on_error")
    def on_error(task_id: str) -> str:
        return f"handled {task_id}"

    @app.task(name="t.fine")
    def fine() -> str:
        return "ok"

    try:
        with start_worker(app, pool="processes", concurrency=1) as worker:
            result = stuck.apply_async(link_error=on_error.s())
            with pytest.raises(TimeLimitExceeded):
                result.get(timeout=20)
            assert fine.delay().get(timeout=20) == "ok"  # the worker (and a new child) carry on
            wait_for(lambda: state.tasks.get(result.id) is not None and state.tasks[result.id].state == "FAILURE")
            wait_for(lambda: [t.state for t in state.tasks.values() if t.name == "t.on_error"] == ["SUCCESS"])
            assert worker.stats.failed == 1
            assert worker.stats.total["t.stuck"] == 1
        assert failures == [(result.id, "TimeLimitExceeded")]
        assert "TimeLimitExceeded" in (state.tasks[result.id].exception or "")
    finally:
        receiver.close()
        capture.join(5)
        app.close()
