"""Redis going away: a publish fails with one clear line in bounded time, a fetch keeps
reconnecting without raising, and a worker whose Redis restarts drains the rest by itself.
Each test runs its own ``redis-server`` on a free port."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import celeriac
import pytest
from celeriac.plugins.redis._transport import RedisTransport
from celeriac.plugins.resultstores._redis import RedisResultStore

pytestmark = pytest.mark.timeout(60)


def envelope(number: int) -> celeriac.Envelope:
    return celeriac.Envelope(b"%d" % number, "application/json", headers={"number": number})


def test_publish_to_an_unreachable_redis_fails_within_the_publish_timeout(private_redis: Any) -> None:
    private_redis.stop()
    transport = RedisTransport(private_redis.url, {"publish_timeout": 1.0})
    try:
        started = time.monotonic()
        with pytest.raises(celeriac.TransportError) as raised:
            transport.publish(envelope(1), "jobs")
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    message = str(raised.value)
    assert 0.5 <= elapsed < 3.0
    assert f"127.0.0.1:{private_redis.port}/0" in message
    assert "redis-server running" in message
    assert "\n" not in message


def test_fetch_rides_out_a_restart_and_nothing_redis_kept_is_lost(
    private_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    producer = RedisTransport(private_redis.url, {"publish_timeout": 10})
    consumer = RedisTransport(private_redis.url)
    try:
        producer.publish_many((envelope(number), "jobs") for number in range(10))
        held = consumer.fetch(["jobs"], limit=3, timeout=5)
        assert len(held) == 3

        private_redis.stop()
        started = time.monotonic()
        assert consumer.fetch(["jobs"], limit=3, timeout=0.5) == []  # no exception while down
        assert time.monotonic() - started < 2.0
        private_redis.start()

        consumer.ack_many(held)  # the pending list survived the restart
        rest: list[celeriac.Delivery] = []
        deadline = time.monotonic() + 10
        while len(rest) < 7 and time.monotonic() < deadline:
            rest += consumer.fetch(["jobs"], limit=7, timeout=1)
        assert sorted(delivery.envelope.headers["number"] for delivery in rest) == list(range(3, 10))
        consumer.ack_many(rest)
        assert consumer.queue_length("jobs") == 0
    finally:
        producer.close()
        consumer.close()
    messages = [record.getMessage() for record in caplog.records]
    assert any("lost the connection to redis" in message for message in messages)
    assert any("reconnected to redis" in message for message in messages)


def test_wait_for_a_result_survives_a_restart(private_redis: Any) -> None:
    waiter, writer = RedisResultStore(private_redis.url), RedisResultStore(private_redis.url)
    task_id = str(uuid.uuid4())
    got: list[celeriac.ResultRecord | None] = []
    try:
        waiter.set(celeriac.ResultRecord(task_id, "STARTED", b"{}"))
        thread = threading.Thread(
            target=lambda: got.append(waiter.wait(task_id, states=frozenset({"SUCCESS"}), timeout=30)), daemon=True
        )
        thread.start()
        private_redis.stop()
        private_redis.start()
        writer.set(celeriac.ResultRecord(task_id, "SUCCESS", b'{"result": 1}'))
        thread.join(20)
        assert got == [celeriac.ResultRecord(task_id, "SUCCESS", b'{"result": 1}')]
    finally:
        waiter.close()
        writer.close()


@pytest.mark.e2e
def test_a_worker_whose_redis_restarts_drains_the_rest(private_redis: Any, project: Any, prefix: str) -> None:
    queue = "restart"
    project.configure(private_redis.url, private_redis.url, queue, visibility_timeout=5)
    worker = project.start_worker()
    app = celeriac.Celeriac("client", broker_url=private_redis.url, result_store=private_redis.url, environ={})
    try:
        results = [app.send_task("redis_tasks.sleep", [0.05, f"t{number}"], queue=queue) for number in range(30)]
        project.wait_for_events(lambda events: sum(event[0] == "end" for event in events) >= 5)

        private_redis.stop()
        worker.wait_for_line("lost the connection to redis")
        private_redis.start()

        assert [result.get(timeout=40) for result in results] == [f"t{number}" for number in range(30)]
        worker.wait_for_line("reconnected to redis")
        assert worker.proc.poll() is None
        ends = [event[1] for event in project.events() if event[0] == "end"]
        assert sorted(set(ends)) == sorted(f"t{number}" for number in range(30))
    finally:
        app.close()
