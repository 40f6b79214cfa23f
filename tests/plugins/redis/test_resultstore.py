"""What the Redis result store does beyond the conformance suite: Celery's key names, the
stored format, expiry, one round trip per batch, options, and an app using it end to end."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import celeriac
import pytest
import redis
from celeriac.plugins import resultstores
from celeriac.plugins.resultstores._redis import RedisResultStore
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def open_store(results_url: str, prefix: str) -> Iterator[Callable[..., RedisResultStore]]:
    opened: list[RedisResultStore] = []

    def open_(**options: Any) -> RedisResultStore:
        store = RedisResultStore(results_url, {"global_keyprefix": prefix, **options})
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def raw(results_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(results_url)
    yield client
    client.close()


def test_records_live_under_celerys_key_names_with_expiry(
    open_store: Callable[..., RedisResultStore], raw: redis.Redis, prefix: str
) -> None:
    store = open_store()
    record = celeriac.ResultRecord("abc", "SUCCESS", b'{"status": "SUCCESS"}', "application/json", "utf-8")
    store.set(record, expires=100)
    key = f"{prefix}celery-task-meta-abc"
    assert raw.get(key) == b"celeriac/1\nSUCCESS\napplication/json\nutf-8\n" + record.payload
    assert 99_000 < raw.pttl(key) <= 100_000
    store.set(record)
    assert raw.pttl(key) == -1
    store.incr("chord-x", 2, expires=50)
    assert raw.get(f"{prefix}celeriac-counter-chord-x") == b"2"


def test_a_result_written_by_celerys_redis_backend_is_read(
    open_store: Callable[..., RedisResultStore], raw: redis.Redis, prefix: str
) -> None:
    meta = {"status": "SUCCESS", "result": 4, "traceback": None, "children": [], "task_id": "celery-1"}
    raw.set(f"{prefix}celery-task-meta-celery-1", json.dumps(meta))
    record = open_store().get("celery-1")
    assert record is not None
    assert (record.state, json.loads(record.payload)["result"]) == ("SUCCESS", 4)


def test_set_many_is_one_round_trip_and_wakes_every_waiter(open_store: Callable[..., RedisResultStore]) -> None:
    writer, reader = open_store(), open_store()
    records = [celeriac.ResultRecord(str(uuid.uuid4()), "SUCCESS", b"%d" % number) for number in range(20)]
    got: dict[str, celeriac.ResultRecord | None] = {}

    def wait(task_id: str) -> None:
        got[task_id] = reader.wait(task_id, states=frozenset({"SUCCESS"}), timeout=10)

    threads = [threading.Thread(target=wait, args=(record.task_id,), daemon=True) for record in records]
    for thread in threads:
        thread.start()
    commands: list[int] = []
    original = writer._lean.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        commands.append(1)
        return original(*args, **kwargs)

    writer._lean.pipeline = counting_pipeline  # type: ignore[method-assign]
    writer.set_many(records, expires=60)
    for thread in threads:
        thread.join(10)
    assert commands == [1]
    assert got == {record.task_id: record for record in records}
    assert reader.get_many([record.task_id for record in records[:3]]) == {r.task_id: r for r in records[:3]}


def test_options_are_checked(results_url: str) -> None:
    with pytest.raises(celeriac.ConfigError, match="unknown option 'expires' for redis"):
        RedisResultStore(results_url, {"expires": 5})
    with pytest.raises(celeriac.ConfigError, match="retry_timeout: expected a positive float, got -1"):
        RedisResultStore(results_url, {"retry_timeout": -1})
    store = RedisResultStore("redis://:hunter2@127.0.0.1:6379/14?global_keyprefix=x:&retry_timeout=2")
    try:
        assert (store.prefix, store.retry_timeout) == ("x:", 2.0)
        assert "hunter2" not in repr(store.info())
    finally:
        store.close()


def test_an_unreachable_store_raises_a_transport_error(results_url: str) -> None:
    store = RedisResultStore("redis://127.0.0.1:1/0", {"retry_timeout": 0.3})
    try:
        with pytest.raises(celeriac.TransportError, match=r"cannot read from the result store at 127.0.0.1:1/0"):
            store.get("x")
        with pytest.raises(celeriac.TransportError, match="cannot count in"):
            store.incr("x")
    finally:
        store.close()


def test_the_plugin_hook_serves_redis_urls(results_url: str) -> None:
    store = resultstores.celeriac_result_store(url=results_url, scheme="redis", options={})
    assert isinstance(store, RedisResultStore)
    store.close()


def test_an_app_on_redis_runs_tasks_end_to_end(broker_url: str, results_url: str, prefix: str) -> None:
    app = celeriac.Celeriac(
        "e2e",
        broker_url=f"{broker_url}?global_keyprefix={prefix}",
        result_store=f"{results_url}?global_keyprefix={prefix}",
        environ={},
        set_as_current=False,
    )

    @app.task(name="e2e.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="e2e.fail")
    def fail() -> None:
        raise ValueError("nope")

    try:
        with start_worker(app, pool="threads", concurrency=2):
            assert add.delay(2, 3).get(timeout=10) == 5
            assert [result.get(timeout=10) for result in [add.delay(i, i) for i in range(20)]] == [
                2 * i for i in range(20)
            ]
            assert add.apply_async((1, 1), countdown=0.3).get(timeout=10) == 2
            assert add.apply_async((4, 4), priority=9).get(timeout=10) == 8
            with pytest.raises(ValueError, match="nope"):
                fail.delay().get(timeout=10)
    finally:
        app.close()


# -- waiting ---------------------------------------------------------------------------------


def _record(task_id: str, state: str, number: int = 0) -> celeriac.ResultRecord:
    return celeriac.ResultRecord(task_id, state, b'{"result": %d}' % number, "application/json", "utf-8")


def test_wait_is_woken_on_the_waiting_threads_own_connection(open_store: Callable[..., RedisResultStore]) -> None:
    waiter, writer = open_store(), open_store()
    task_id = str(uuid.uuid4())
    waiter.set(_record(task_id, "STARTED"))
    got: list[celeriac.ResultRecord | None] = []
    thread = threading.Thread(
        target=lambda: got.append(waiter.wait(task_id, states=frozenset({"SUCCESS"}), timeout=10)), daemon=True
    )
    thread.start()
    wait_for(lambda: any(w.subscribed is not None for w in waiter._all_waiters))
    writer.set(_record(task_id, "SUCCESS", 7))
    thread.join(10)
    assert got == [_record(task_id, "SUCCESS", 7)]
    assert waiter._listener is None  # RESP3: no listener thread, no hand-off


def test_wait_returns_the_latest_record_when_the_timeout_passes(open_store: Callable[..., RedisResultStore]) -> None:
    store = open_store()
    task_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert store.wait(task_id, states=frozenset({"SUCCESS"}), timeout=0.05) is None
    store.set(_record(task_id, "STARTED"))
    assert store.wait(task_id, states=frozenset({"SUCCESS"}), timeout=0.05) == _record(task_id, "STARTED")
    store.set(_record(other, "SUCCESS", 2))
    assert store.wait(other, states=frozenset({"SUCCESS"}), timeout=0) == _record(other, "SUCCESS", 2)  # read once
    assert store.wait(task_id, states=frozenset({"SUCCESS"}), timeout=0) == _record(task_id, "STARTED")


def test_consecutive_waits_of_one_thread_share_a_connection_and_ignore_old_channels(
    open_store: Callable[..., RedisResultStore],
) -> None:
    store, writer = open_store(), open_store()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    writer.set(_record(first, "SUCCESS", 1))
    assert store.wait(first, states=frozenset({"SUCCESS"}), timeout=5) == _record(first, "SUCCESS", 1)
    writer.set(_record(first, "FAILURE", 2))  # published on a channel this thread still listens to
    writer.set(_record(second, "STARTED", 3))
    # the FAILURE message of `first` arrives first on the connection and must not be taken
    assert store.wait(second, states=frozenset({"STARTED"}), timeout=5) == _record(second, "STARTED", 3)
    [waiter] = list(store._all_waiters)
    assert waiter.subscribed == store._key(second).encode()


def test_a_waiters_connection_killed_by_the_server_is_reopened(private_redis: Any) -> None:
    store, writer = RedisResultStore(private_redis.url), RedisResultStore(private_redis.url)
    admin = redis.Redis(port=private_redis.port, protocol=2)
    task_id = str(uuid.uuid4())
    got: list[celeriac.ResultRecord | None] = []
    try:
        thread = threading.Thread(
            target=lambda: got.append(store.wait(task_id, states=frozenset({"SUCCESS"}), timeout=20)), daemon=True
        )
        thread.start()
        wait_for(lambda: admin.pubsub_numsub(store._key(task_id))[0][1] == 1)
        assert admin.client_kill_filter(_type="pubsub") == 1
        writer.set(_record(task_id, "SUCCESS", 1))
        thread.join(15)
        assert got == [_record(task_id, "SUCCESS", 1)]
    finally:
        admin.close()
        store.close()
        writer.close()


@pytest.mark.redis_options("--rename-command", "HELLO", "")
def test_without_resp3_waits_go_through_the_listener_thread(private_redis: Any) -> None:
    store, writer = RedisResultStore(private_redis.url), RedisResultStore(private_redis.url)
    task_id = str(uuid.uuid4())
    got: list[celeriac.ResultRecord | None] = []
    try:
        thread = threading.Thread(
            target=lambda: got.append(store.wait(task_id, states=frozenset({"SUCCESS"}), timeout=10)), daemon=True
        )
        thread.start()
        wait_for(lambda: store._listener is not None and store._listener.watches)
        writer.set(_record(task_id, "SUCCESS", 5))
        thread.join(10)
        assert got == [_record(task_id, "SUCCESS", 5)]
        assert store._resp3 is False
    finally:
        store.close()
        writer.close()
