"""The rpc:// result store against a real RabbitMQ: the shared suite (adapted where rpc differs) and
its own behaviour (reply queues, the worker side, apps end to end)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from celeriac import Celeriac, PluginError, ResultRecord, ResultStore
from celeriac.plugins import amqp as amqp_plugin
from celeriac.plugins.amqp import _testing
from celeriac.plugins.amqp._rpc import RPCResultStore
from celeriac.testing import start_worker
from celeriac.testing.conformance.resultstore import READY, ResultStoreSuite, eventually

pytestmark = pytest.mark.timeout(60)

MakeStore = Callable[..., ResultStore]
SUCCESS, FAILURE, STARTED = "SUCCESS", "FAILURE", "STARTED"
NO_COUNTER = "rpc:// keeps no state shared between processes, so it has no counter (incr raises)"


def _record(
    task_id: str, state: str = SUCCESS, payload: bytes = b'{"result": 42}', to: str | None = None
) -> ResultRecord:
    return ResultRecord(task_id=task_id, state=state, payload=payload, reply_to=to)


def _unique() -> str:
    return f"task-{uuid.uuid4()}"


class TestRPCStoreConformance(ResultStoreSuite):
    """The shared suite. A result reaches only the client whose reply queue it is sent to, so the
    tests where one instance writes and another reads are re-stated with the writer sending to
    the reader's ``reply_to``; tests on one instance use the local path (no ``reply_to``)."""

    @pytest.fixture
    def make_store(self, amqp_url: str) -> MakeStore:
        return lambda **options: RPCResultStore("rpc://", options, broker_url=amqp_url)

    def test_set_then_get_round_trips_every_field(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        record = ResultRecord(
            task_id=_unique(),
            state=FAILURE,
            payload=b"\x00\x01binary\xff\xfe\x00 payload \x80",
            content_type="application/x-msgpack",
            content_encoding="binary",
        )
        writer.set(dataclasses.replace(record, reply_to=reader.reply_to))
        got = reader.get(record.task_id)
        assert got == record
        assert got is not None
        assert type(got.payload) is bytes

    def test_set_replaces_the_earlier_record(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        task_id = _unique()
        writer.set(_record(task_id, STARTED, b"started", to=reader.reply_to))
        writer.set(_record(task_id, SUCCESS, b"done", to=reader.reply_to))
        assert reader.get(task_id) == _record(task_id, SUCCESS, b"done")

    def test_get_many_leaves_out_missing_ids(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        first, second, missing = _unique(), _unique(), _unique()
        writer.set_many(
            [_record(first, SUCCESS, b"1", to=reader.reply_to), _record(second, FAILURE, b"2", to=reader.reply_to)]
        )
        assert reader.get_many([first, missing, second]) == {
            first: _record(first, SUCCESS, b"1"),
            second: _record(second, FAILURE, b"2"),
        }
        assert reader.get_many([]) == {}

    def test_forget_deletes_only_that_record_and_is_idempotent(self, open_store: MakeStore) -> None:
        # forget() drops the result from the one client that can read it
        writer, reader = open_store(), open_store()
        gone, kept = _unique(), _unique()
        writer.set_many([_record(gone, to=reader.reply_to), _record(kept, to=reader.reply_to)])
        assert reader.get(gone) == _record(gone)
        reader.forget(gone)
        assert reader.get(gone) is None
        assert reader.get(kept) == _record(kept)
        reader.forget(gone)
        reader.forget(_unique())
        assert reader.get(kept) == _record(kept)

    def test_expired_records_disappear(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        short, long, forever = _unique(), _unique(), _unique()
        writer.set(_record(short, to=reader.reply_to), expires=0.2)
        writer.set(_record(long, to=reader.reply_to), expires=60)
        writer.set(_record(forever, to=reader.reply_to))
        assert eventually(lambda: reader.get(short) is None), "record set with expires=0.2 never expired"
        assert reader.get_many([short, long, forever]).keys() == {long, forever}
        assert reader.wait(short, states=READY, timeout=0.05) is None

    def test_wait_wakes_when_another_instance_sets_a_ready_state(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        task_id = _unique()
        done = _record(task_id, SUCCESS, b"done")
        to = reader.reply_to

        def later() -> None:
            time.sleep(0.1)  # only makes it likely that the reader is already waiting
            writer.set(_record(task_id, STARTED, to=to))
            writer.set(dataclasses.replace(done, reply_to=to))

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        started = time.monotonic()
        got = reader.wait(task_id, states=READY, timeout=10)
        elapsed = time.monotonic() - started
        thread.join(10)
        assert got == done
        assert elapsed < 5

    def test_concurrent_waits_on_different_ids_each_get_their_record(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        records = [_record(_unique(), SUCCESS, str(index).encode()) for index in range(5)]
        results: dict[str, ResultRecord | None] = {}
        to = reader.reply_to

        def wait_for(task_id: str) -> None:
            results[task_id] = reader.wait(task_id, states=READY, timeout=10)

        waiters = [threading.Thread(target=wait_for, args=(r.task_id,), daemon=True) for r in records]
        for thread in waiters:
            thread.start()
        for record in reversed(records):
            writer.set(dataclasses.replace(record, reply_to=to))
        for thread in waiters:
            thread.join(10)
        assert results == {record.task_id: record for record in records}

    @pytest.mark.skip(reason=NO_COUNTER)
    def test_incr_starts_at_zero_and_adds_amounts(self) -> None: ...

    @pytest.mark.skip(reason=NO_COUNTER)
    def test_incr_is_shared_between_instances(self) -> None: ...

    @pytest.mark.skip(reason=NO_COUNTER)
    def test_incr_is_atomic_under_concurrency(self) -> None: ...

    @pytest.mark.skip(reason=NO_COUNTER)
    def test_incr_with_expires_starts_again_after_expiry(self) -> None: ...


# -- rpc's own behaviour ----------------------------------------------------------------------


@pytest.fixture
def rpc_store(amqp_url: str) -> Iterator[Callable[..., RPCResultStore]]:
    opened: list[RPCResultStore] = []

    def open_(**options: object) -> RPCResultStore:
        store = RPCResultStore("rpc://", options, broker_url=amqp_url)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def test_incr_says_why_it_is_not_available(rpc_store: Callable[..., RPCResultStore]) -> None:
    with pytest.raises(NotImplementedError, match="chords"):
        rpc_store().incr("counter")


def test_reply_queue_is_declared_once_and_deleted_at_close(
    rpc_store: Callable[..., RPCResultStore], open_transport: Callable[..., object], amqp_url: str
) -> None:
    store = rpc_store()
    name = store.reply_to
    assert name == store.reply_to
    assert name.startswith("celeriac.reply.")
    admin = open_transport()
    assert admin.queue_length(name) == 0  # type: ignore[attr-defined]
    store.close()
    probe = RPCResultStore("rpc://", broker_url=amqp_url)
    try:
        exists = probe._publisher.run(lambda declarer: _queue_exists(declarer, name))
    finally:
        probe.close()
    assert exists is False


def _queue_exists(declarer: object, name: str) -> bool:
    import amqp

    try:
        declarer.channel.queue_declare(name, passive=True)  # type: ignore[attr-defined]
    except amqp.exceptions.NotFound:
        return False
    return True


def test_a_result_for_a_client_that_is_gone_is_dropped_with_a_warning(
    rpc_store: Callable[..., RPCResultStore], caplog: pytest.LogCaptureFixture
) -> None:
    worker_side = rpc_store()
    caplog.set_level(logging.WARNING, logger="celeriac.amqp")
    task_id = _unique()
    worker_side.set(_record(task_id, to=f"celeriac.reply.{uuid.uuid4()}"))
    assert f"dropped the result of task {task_id}" in caplog.text


def test_results_reach_the_sending_client_and_no_other(rpc_store: Callable[..., RPCResultStore]) -> None:
    client, other, worker_side = rpc_store(), rpc_store(), rpc_store()
    other.reply_to  # noqa: B018 - another client with a reply queue of its own
    task_id = _unique()
    worker_side.set(_record(task_id, to=client.reply_to))
    assert client.wait(task_id, states=READY, timeout=10) == _record(task_id)
    assert other.get(task_id) is None


def test_options_are_checked(amqp_url: str) -> None:
    from celeriac import ConfigError

    with pytest.raises(ConfigError, match="reply_queue_expires"):
        RPCResultStore("rpc://", {"reply_queue_expires": -1}, broker_url=amqp_url)
    with pytest.raises(ConfigError, match="unknown amqp option"):
        RPCResultStore("rpc://", {"queue_typo": 1}, broker_url=amqp_url)


def test_rpc_needs_an_amqp_broker() -> None:
    app = Celeriac("tests", broker_url="memory://rpc-check", result_store="rpc://", environ={}, set_as_current=False)
    try:
        with pytest.raises(PluginError, match="needs an amqp:// broker_url"):
            amqp_plugin.celeriac_result_store(url="rpc://", scheme="rpc", options={}, app=app)
        assert amqp_plugin.celeriac_result_store(url="memory://", scheme="memory", options={}, app=app) is None
        assert amqp_plugin.celeriac_result_store_schemes() == ["rpc"]
    finally:
        app.close()


def test_an_app_with_rpc_results_runs_tasks_end_to_end(amqp_url: str) -> None:
    queue = f"rpc-e2e-{uuid.uuid4().hex}"
    app = Celeriac("tests", broker_url=amqp_url, result_store="rpc://", environ={}, set_as_current=False)

    @app.task(name="rpc.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rpc.fail")
    def fail() -> None:
        raise ValueError("boom")

    try:
        assert type(app.result_store).__name__ == "RPCResultStore"
        with start_worker(app, pool="threads", concurrency=2, queues=[queue]):
            results = [add.apply_async((i, i), queue=queue) for i in range(20)]
            assert [result.get(timeout=20) for result in results] == [2 * i for i in range(20)]
            failed = fail.apply_async(queue=queue)
            with pytest.raises(ValueError, match="boom"):
                failed.get(timeout=20)
            assert failed.state == FAILURE
    finally:
        app.close()
        _testing.delete_queues(amqp_url, queue)


def test_unread_results_beyond_the_limit_are_dropped_with_a_warning(
    rpc_store: Callable[..., RPCResultStore], caplog: pytest.LogCaptureFixture
) -> None:
    client, worker_side = rpc_store(max_unread_results=3), rpc_store()
    caplog.set_level(logging.WARNING, logger="celeriac.amqp")
    ids = [_unique() for _ in range(4)]
    worker_side.set_many([_record(task_id, to=client.reply_to) for task_id in ids[:3]])
    assert client.wait(ids[2], states=READY, timeout=10) is not None
    assert client.get(ids[0]) is not None  # read again: the least recently used is now ids[1]
    worker_side.set(_record(ids[3], to=client.reply_to))
    assert client.wait(ids[3], states=READY, timeout=10) is not None
    assert [client.get(task_id) is not None for task_id in ids] == [True, False, True, True]
    assert "rpc:// dropped 1 result(s) nobody read" in caplog.text
