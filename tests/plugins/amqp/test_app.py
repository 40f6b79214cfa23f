"""The README's examples on RabbitMQ: an app with ``broker_url = "amqp://..."`` and a worker in this
process, results in Redis or sent back over AMQP (``rpc://``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from celeriac import Celeriac, NotRegistered, TaskRevokedError, states
from celeriac.plugins.amqp import _testing
from celeriac.testing import start_worker

pytestmark = pytest.mark.timeout(90)


def _redis_or_skip() -> str:
    from celeriac.plugins.redis import _testing as redis_testing

    url = redis_testing.server_url(11)
    redis_testing.require_server(url)
    return url


@pytest.fixture(params=["rpc", "redis"])
def app(request: pytest.FixtureRequest, amqp_url: str) -> Iterator[Celeriac]:
    store = "rpc://" if request.param == "rpc" else _redis_or_skip()
    queue = f"app-{uuid.uuid4().hex}"
    application = Celeriac(
        "tests", broker_url=amqp_url, result_store=store, task_default_queue=queue, environ={}, set_as_current=False
    )
    yield application
    application.close()
    _testing.delete_queues(amqp_url, queue, "mail")


def test_the_readme_examples_run_unchanged(app: Celeriac) -> None:
    attempts: list[float] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True, max_retries=5)
    def send_mail(self: object, to: str) -> str:
        attempts.append(time.time())
        if len(attempts) < 2:
            raise self.retry(exc=ConnectionError("smtp down"), countdown=0.3)  # type: ignore[attr-defined]
        return f"sent to {to}"

    with start_worker(app, pool="threads", concurrency=2):
        assert add.delay(2, 3).get(timeout=20) == 5
        started = time.time()
        assert add.apply_async((2, 3), countdown=0.5, priority=7).get(timeout=20) == 5
        assert time.time() - started >= 0.5 - 0.05
        assert app.send_task(add.name, [1, 2]).get(timeout=20) == 3
        assert add.apply((2, 3)).get() == 5
        assert send_mail.delay("a@example.com").get(timeout=20) == "sent to a@example.com"
        assert attempts[1] - attempts[0] >= 0.3 - 0.05
        expired = add.apply_async((1, 1), eta=None, expires=-1)
        with pytest.raises(TaskRevokedError):
            expired.get(timeout=20)


def test_an_unknown_task_is_dead_lettered_and_fails(app: Celeriac) -> None:
    queue = app.conf.task_default_queue
    with start_worker(app, pool="threads", concurrency=1):
        result = app.send_task("no.such.task", [1])
        with pytest.raises(NotRegistered):
            result.get(timeout=20)
    [dead] = app.transport.fetch([f"{queue}.dead-letter"], limit=1, timeout=10)
    assert dead.envelope.headers["task"] == "no.such.task"
    assert "no.such.task" in dead.envelope.headers["x-death-reason"]
    app.transport.ack(dead)


def test_a_retried_task_answers_its_caller_over_rpc(amqp_url: str) -> None:
    queue = f"app-{uuid.uuid4().hex}"
    settings = {"broker_url": amqp_url, "result_store": "rpc://", "task_default_queue": queue}
    client = Celeriac("client", environ={}, set_as_current=False, **settings)
    worker_app = Celeriac("worker", environ={}, set_as_current=False, **settings)  # as in another process
    tries: list[int] = []

    @worker_app.task(name="rpc.flaky", bind=True)
    def flaky(self: object) -> str:
        tries.append(1)
        if len(tries) < 2:
            raise self.retry(countdown=0.1)  # type: ignore[attr-defined]
        return "ok"

    try:
        with start_worker(worker_app, pool="threads", concurrency=1):
            result = client.send_task("rpc.flaky")
            assert result.get(timeout=5) == "ok"
            assert result.state == states.SUCCESS
    finally:
        client.close()
        worker_app.close()
        _testing.delete_queues(amqp_url, queue)


def test_an_unknown_task_answers_its_caller_over_rpc(amqp_url: str) -> None:
    queue = f"app-{uuid.uuid4().hex}"
    settings = {"broker_url": amqp_url, "result_store": "rpc://", "task_default_queue": queue}
    client = Celeriac("client", environ={}, set_as_current=False, **settings)
    worker_app = Celeriac("worker", environ={}, set_as_current=False, **settings)  # as in another process
    try:
        with start_worker(worker_app, pool="threads", concurrency=1), pytest.raises(NotRegistered):
            client.send_task("no.such.task").get(timeout=5)
    finally:
        client.close()
        worker_app.close()
        _testing.delete_queues(amqp_url, queue)
