"""A message that keeps coming back is dead-lettered after ``worker_max_deliveries`` deliveries."""

from __future__ import annotations

from typing import Any

import pytest
from celeriac import Celeriac, Reject, WorkerLostError
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("bound", [3, 5])
def test_a_message_requeued_forever_ends_in_the_dead_letter_queue(
    workflow_settings: dict[str, Any], bound: int
) -> None:
    app = Celeriac("tests", environ={}, worker_max_deliveries=bound, **workflow_settings)
    deliveries: list[int] = []
    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))

    @app.task(name="t.poison", bind=True)
    def poison(self: Any) -> None:
        deliveries.append(self.request.delivery_count)
        raise Reject("try again", requeue=True)

    @app.task(name="t.fine")
    def fine(x: int) -> int:
        return x

    try:
        transport = app.transport
        queue = f"poison-{bound}"
        poison.apply_async(queue=queue)
        with start_worker(app, pool="threads", concurrency=2, queues=[queue]):
            wait_for(lambda: transport.queue_length(transport.dead_letter_queue(queue)) == 1, timeout=30)
            assert fine.apply_async((7,), queue=queue).get(timeout=10) == 7  # the worker still serves
        dead = transport.fetch([transport.dead_letter_queue(queue)], limit=5, timeout=1)
        assert len(dead) == 1
        assert f"worker_max_deliveries={bound}" in dead[0].envelope.headers["x-death-reason"]
        result = app.AsyncResult(dead[0].envelope.headers["id"])
        assert result.state == "FAILURE"  # the caller learns it, instead of waiting on PENDING forever
        with pytest.raises(WorkerLostError, match="worker_max_deliveries"):
            result.get(timeout=5)
        assert len(rejected) == 1
        if deliveries[-1] > 1:  # the transport counts deliveries of a requeued message
            assert deliveries == list(range(1, bound + 1))
        transport.ack(dead[0])
    finally:
        app.close()


def test_zero_means_no_bound() -> None:
    app = Celeriac(
        "tests", environ={}, broker_url="memory://no-bound", result_store="memory://no-bound", worker_max_deliveries=0
    )

    @app.task(name="t.stubborn", bind=True)
    def stubborn(self: Any) -> int:
        if self.request.delivery_count < 15:
            raise Reject("not yet", requeue=True)
        return self.request.delivery_count

    try:
        result = stubborn.delay()
        with start_worker(app, pool="threads", concurrency=1):
            assert result.get(timeout=20) == 15
        assert app.transport.queue_length("default.dead-letter") == 0
    finally:
        app.close()


def test_config_kind_ints_and_the_autoscale_flag() -> None:
    from celeriac.cli._commands import _autoscale
    from celeriac.exceptions import ConfigError, HandledError

    assert Celeriac("tests", environ={}, broker_url="memory://k", worker_autoscale="2,8").conf.worker_autoscale == [
        2,
        8,
    ]
    with pytest.raises(ConfigError, match="expected a list of integers"):
        Celeriac("tests", environ={}, broker_url="memory://k", worker_autoscale=["2", "x"])
    assert _autoscale("10,3") == [3, 10]
    assert _autoscale("4") == [0, 4]
    with pytest.raises(HandledError, match="expected MAX,MIN"):
        _autoscale("ten")


def test_a_bad_pool_option_is_a_config_error_naming_the_key(tmp_path: Any) -> None:
    from celeriac.exceptions import ConfigError

    (tmp_path / "celeriac.toml").write_text(
        '[celeriac]\nbroker_url = "memory://badopt"\nresult_store = "memory://badopt"\n'
        "[celeriac.worker]\npool_options = { bogus = 1 }\n"
    )
    app = Celeriac.from_config(tmp_path / "celeriac.toml", environ={})
    try:
        worker = app.Worker(pool="asyncio")
        with pytest.raises(ConfigError, match=r"celeriac.toml: \[celeriac.worker\] pool_options: .*bogus"):
            worker.start()
    finally:
        app.close()
