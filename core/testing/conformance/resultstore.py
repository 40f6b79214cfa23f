"""The conformance suite every result store must pass.

Subclass :class:`ResultStoreSuite` in a test module (its name does not start with ``Test``, so
pytest collects only your subclass) and provide a ``make_store`` fixture. ``make_store`` returns
a function ``make(**options) -> ResultStore`` that opens a **new instance on the same backend
namespace** each call (same database, same key prefix), so one instance can write while another
reads. Use a fresh namespace per test so tests do not see each other's data. The suite closes
every store it makes::

    class TestMyStore(ResultStoreSuite):
        @pytest.fixture
        def make_store(self, tmp_path):
            url = f"mystore://{tmp_path / 'results.db'}"
            return lambda **options: MyResultStore(url, options)

Nothing here sleeps to paper over a race: waits use timeouts and expiry is checked by polling
until a deadline. Each test takes well under two seconds on a working store.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from celeriac import ResultRecord, ResultStore

__all__ = ["ResultStoreSuite", "eventually"]

MakeStore = Callable[..., ResultStore]

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
STARTED = "STARTED"
READY = frozenset({SUCCESS, FAILURE, "REVOKED"})

#: A wait that should end early is given this long, so a broken store fails instead of hanging.
LONG_TIMEOUT = 10.0


def eventually(check: Callable[[], bool], *, timeout: float = 2.0, interval: float = 0.01) -> bool:
    """Call ``check`` until it returns true or ``timeout`` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _unique(prefix: str = "task") -> str:
    return f"{prefix}-{uuid.uuid4()}"


def _record(task_id: str, state: str = SUCCESS, payload: bytes = b'{"result": 42}') -> ResultRecord:
    return ResultRecord(task_id=task_id, state=state, payload=payload)


def _set_later(store: ResultStore, records: list[ResultRecord], delay: float = 0.1) -> threading.Thread:
    """Store ``records`` in order from another thread after ``delay`` seconds.

    The delay only makes it likely that the caller is already blocked in ``wait``; the tests
    assert the same thing whether or not it is.
    """

    def run() -> None:
        time.sleep(delay)
        for record in records:
            store.set(record)

    thread = threading.Thread(target=run, name="conformance-writer", daemon=True)
    thread.start()
    return thread


class ResultStoreSuite:
    """Tests every :class:`~celeriac.ResultStore` must pass.

    Needs a ``make_store`` fixture (in the subclass, a conftest or the test module) returning
    ``make(**options) -> ResultStore``.
    """

    @pytest.fixture
    def open_store(self, make_store: MakeStore) -> Iterator[MakeStore]:
        """Like ``make_store``, but closes every store it opened when the test ends."""
        opened: list[ResultStore] = []

        def open_(**options: object) -> ResultStore:
            store = make_store(**options)
            opened.append(store)
            return store

        yield open_
        for store in opened:
            store.close()

    @pytest.fixture
    def store(self, open_store: MakeStore) -> ResultStore:
        """One open store."""
        return open_store()

    # -- set / get / get_many / forget ------------------------------------------------------

    def test_is_a_result_store(self, store: ResultStore) -> None:
        assert isinstance(store, ResultStore)
        assert isinstance(store.info(), dict)

    def test_set_then_get_round_trips_every_field(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        record = ResultRecord(
            task_id=_unique(),
            state=FAILURE,
            payload=b"\x00\x01binary\xff\xfe\x00 payload \x80",
            content_type="application/x-msgpack",
            content_encoding="binary",
        )
        writer.set(record)
        got = reader.get(record.task_id)
        assert got == record
        assert got is not None
        assert type(got.payload) is bytes

    def test_get_of_a_missing_id_is_none(self, store: ResultStore) -> None:
        assert store.get(_unique()) is None

    def test_set_replaces_the_earlier_record(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        task_id = _unique()
        writer.set(_record(task_id, STARTED, b"started"))
        writer.set(_record(task_id, SUCCESS, b"done"))
        assert reader.get(task_id) == _record(task_id, SUCCESS, b"done")

    def test_get_many_leaves_out_missing_ids(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        first, second, missing = _unique(), _unique(), _unique()
        writer.set(_record(first, SUCCESS, b"1"))
        writer.set(_record(second, FAILURE, b"2"))
        assert reader.get_many([first, missing, second]) == {
            first: _record(first, SUCCESS, b"1"),
            second: _record(second, FAILURE, b"2"),
        }
        assert reader.get_many([]) == {}

    def test_forget_deletes_only_that_record_and_is_idempotent(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        gone, kept = _unique(), _unique()
        writer.set(_record(gone))
        writer.set(_record(kept))
        reader.forget(gone)
        assert writer.get(gone) is None
        assert writer.get(kept) == _record(kept)
        reader.forget(gone)
        reader.forget(_unique())
        assert writer.get(kept) == _record(kept)

    # -- expiry -------------------------------------------------------------------------------

    def test_expired_records_disappear(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        short, long, forever = _unique(), _unique(), _unique()
        writer.set(_record(short), expires=0.2)
        writer.set(_record(long), expires=60)
        writer.set(_record(forever))
        assert eventually(lambda: reader.get(short) is None), "record set with expires=0.2 never expired"
        assert reader.get_many([short, long, forever]).keys() == {long, forever}
        assert reader.wait(short, states=READY, timeout=0.05) is None

    def test_set_without_expires_keeps_a_record_that_used_to_expire(self, store: ResultStore) -> None:
        task_id, probe = _unique(), _unique()
        store.set(_record(task_id, STARTED), expires=0.2)
        store.set(_record(task_id, SUCCESS))
        store.set(_record(probe), expires=0.2)
        assert eventually(lambda: store.get(probe) is None)
        assert store.get(task_id) == _record(task_id, SUCCESS)

    def test_cleanup_returns_a_count(self, store: ResultStore) -> None:
        store.set(_record(_unique()), expires=60)
        removed = store.cleanup()
        assert isinstance(removed, int)
        assert removed >= 0

    # -- wait ---------------------------------------------------------------------------------

    def test_wait_returns_at_once_when_already_in_a_state(self, store: ResultStore) -> None:
        task_id = _unique()
        store.set(_record(task_id, SUCCESS))
        started = time.monotonic()
        assert store.wait(task_id, states=READY, timeout=LONG_TIMEOUT) == _record(task_id, SUCCESS)
        assert time.monotonic() - started < LONG_TIMEOUT / 2

    def test_wait_wakes_when_another_instance_sets_a_ready_state(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        task_id = _unique()
        done = _record(task_id, SUCCESS, b"done")
        thread = _set_later(writer, [_record(task_id, STARTED), done])
        started = time.monotonic()
        got = reader.wait(task_id, states=READY, timeout=LONG_TIMEOUT)
        elapsed = time.monotonic() - started
        thread.join(LONG_TIMEOUT)
        assert got == done
        assert elapsed < LONG_TIMEOUT / 2, f"wait took {elapsed:.2f}s after the state was set"

    def test_wait_wakes_when_another_thread_sets_on_the_same_instance(self, store: ResultStore) -> None:
        task_id = _unique()
        done = _record(task_id, FAILURE, b"boom")
        thread = _set_later(store, [done])
        started = time.monotonic()
        got = store.wait(task_id, states=READY, timeout=LONG_TIMEOUT)
        elapsed = time.monotonic() - started
        thread.join(LONG_TIMEOUT)
        assert got == done
        assert elapsed < LONG_TIMEOUT / 2, f"wait took {elapsed:.2f}s after the state was set"

    def test_concurrent_waits_on_different_ids_each_get_their_record(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        records = [_record(_unique(), SUCCESS, str(index).encode()) for index in range(5)]
        results: dict[str, ResultRecord | None] = {}

        def wait_for(task_id: str) -> None:
            results[task_id] = reader.wait(task_id, states=READY, timeout=LONG_TIMEOUT)

        waiters = [threading.Thread(target=wait_for, args=(r.task_id,), daemon=True) for r in records]
        for thread in waiters:
            thread.start()
        started = time.monotonic()
        writer_thread = _set_later(writer, list(reversed(records)))
        for thread in [*waiters, writer_thread]:
            thread.join(LONG_TIMEOUT)
        elapsed = time.monotonic() - started
        assert results == {record.task_id: record for record in records}
        assert elapsed < LONG_TIMEOUT / 2, f"waits took {elapsed:.2f}s after the states were set"

    def test_wait_ignores_other_states_and_returns_the_latest_record_at_timeout(self, store: ResultStore) -> None:
        task_id = _unique()
        store.set(_record(task_id, STARTED, b"running"))
        started = time.monotonic()
        got = store.wait(task_id, states=READY, timeout=0.3)
        assert time.monotonic() - started >= 0.25
        assert got == _record(task_id, STARTED, b"running")

    def test_wait_for_a_missing_id_returns_none_at_timeout(self, store: ResultStore) -> None:
        assert store.wait(_unique(), states=READY, timeout=0.1) is None

    def test_wait_matches_any_of_the_given_states(self, store: ResultStore) -> None:
        task_id = _unique()
        store.set(_record(task_id, STARTED))
        assert store.wait(task_id, states=frozenset({STARTED}), timeout=LONG_TIMEOUT) == _record(task_id, STARTED)

    # -- counters -----------------------------------------------------------------------------

    def test_incr_starts_at_zero_and_adds_amounts(self, store: ResultStore) -> None:
        key = _unique("counter")
        assert store.incr(key) == 1
        assert store.incr(key, 5) == 6
        assert store.incr(key, -2) == 4
        assert store.incr(key, 0) == 4
        assert store.incr(_unique("counter"), 0) == 0

    def test_incr_is_shared_between_instances(self, open_store: MakeStore) -> None:
        first, second = open_store(), open_store()
        key = _unique("counter")
        assert first.incr(key) == 1
        assert second.incr(key) == 2
        assert first.incr(key, 10) == 12

    def test_incr_is_atomic_under_concurrency(self, open_store: MakeStore) -> None:
        stores = [open_store(), open_store()]
        key = _unique("counter")
        threads_count, per_thread = 8, 200
        seen: list[list[int]] = [[] for _ in range(threads_count)]
        barrier = threading.Barrier(threads_count)

        def hammer(index: int) -> None:
            store = stores[index % len(stores)]
            barrier.wait(LONG_TIMEOUT)
            for _ in range(per_thread):
                seen[index].append(store.incr(key))

        threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LONG_TIMEOUT)
        total = threads_count * per_thread
        assert stores[0].incr(key, 0) == total
        returned = sorted(value for values in seen for value in values)
        assert returned == list(range(1, total + 1)), "two increments returned the same value"

    def test_incr_with_expires_starts_again_after_expiry(self, store: ResultStore) -> None:
        key = _unique("counter")
        assert store.incr(key, 3, expires=0.2) == 3
        assert eventually(lambda: store.incr(key, 0) == 0), "counter set with expires=0.2 never expired"
        assert store.incr(key) == 1

    # -- leases and small values (beat) -----------------------------------------------------
    #
    # Optional: a store that raises NotImplementedError from acquire_lease skips these.

    @staticmethod
    def _require_leases(store: ResultStore) -> None:
        try:
            store.lease_owner(_unique("probe"))
        except NotImplementedError as exc:
            pytest.skip(f"{type(store).__name__} has no leases: {exc}")

    def test_a_lease_is_held_by_one_owner_and_renewed_by_it(self, open_store: MakeStore) -> None:
        first, second = open_store(), open_store()
        self._require_leases(first)
        lease = _unique("lease")
        assert first.lease_owner(lease) is None
        assert first.acquire_lease(lease, "a", LONG_TIMEOUT) is True
        assert second.acquire_lease(lease, "b", LONG_TIMEOUT) is False
        assert first.acquire_lease(lease, "a", LONG_TIMEOUT) is True  # renewal
        assert second.lease_owner(lease) == "a"

    def test_an_expired_lease_goes_to_the_next_owner(self, open_store: MakeStore) -> None:
        first, second = open_store(), open_store()
        self._require_leases(first)
        lease = _unique("lease")
        assert first.acquire_lease(lease, "a", 0.2)
        assert eventually(lambda: second.acquire_lease(lease, "b", LONG_TIMEOUT)), "a 0.2 s lease never ran out"
        assert first.lease_owner(lease) == "b"
        assert first.acquire_lease(lease, "a", LONG_TIMEOUT) is False

    def test_only_the_holder_releases_a_lease(self, open_store: MakeStore) -> None:
        first, second = open_store(), open_store()
        self._require_leases(first)
        lease = _unique("lease")
        assert first.acquire_lease(lease, "a", LONG_TIMEOUT)
        assert second.release_lease(lease, "b") is False
        assert second.lease_owner(lease) == "a"
        assert first.release_lease(lease, "a") is True
        assert second.lease_owner(lease) is None
        assert second.acquire_lease(lease, "b", LONG_TIMEOUT) is True

    def test_one_of_many_concurrent_owners_gets_a_lease(self, open_store: MakeStore) -> None:
        stores = [open_store() for _ in range(3)]
        self._require_leases(stores[0])
        lease, count = _unique("lease"), 12
        barrier = threading.Barrier(count)
        won: list[str] = []

        def contend(index: int) -> None:
            barrier.wait(LONG_TIMEOUT)
            if stores[index % len(stores)].acquire_lease(lease, f"owner-{index}", LONG_TIMEOUT):
                won.append(f"owner-{index}")

        threads = [threading.Thread(target=contend, args=(i,), daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LONG_TIMEOUT)
        assert len(won) == 1, f"several owners got the lease: {won}"
        assert stores[0].lease_owner(lease) == won[0]

    def test_meta_values_round_trip_between_instances(self, open_store: MakeStore) -> None:
        writer, reader = open_store(), open_store()
        self._require_leases(writer)
        key = _unique("meta")
        assert reader.get_meta(key) is None
        assert writer.set_meta(key, "2026-01-01T00:00:00+00:00") is True
        assert reader.get_meta(key) == "2026-01-01T00:00:00+00:00"
        assert writer.set_meta(key, "änder ✓") is True
        assert reader.get_meta(key) == "änder ✓"
        assert writer.delete_meta(key) is True
        assert reader.get_meta(key) is None
        assert writer.delete_meta(key) is False

    def test_a_fenced_meta_write_needs_the_unexpired_lease(self, open_store: MakeStore) -> None:
        holder, other = open_store(), open_store()
        self._require_leases(holder)
        lease, key = _unique("lease"), _unique("meta")
        assert other.set_meta(key, "nobody holds it", lease=lease, owner="b") is False
        assert holder.acquire_lease(lease, "a", 0.3)
        assert holder.set_meta(key, "one", lease=lease, owner="a") is True
        assert other.set_meta(key, "two", lease=lease, owner="b") is False
        assert other.get_meta(key) == "one"
        assert eventually(lambda: holder.lease_owner(lease) is None), "a 0.3 s lease never ran out"
        assert holder.set_meta(key, "three", lease=lease, owner="a") is False, "wrote with an expired lease"
        assert other.get_meta(key) == "one"
