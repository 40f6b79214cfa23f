"""What the sqlite result store does beyond the conformance suite: URLs, options, expiry
sweeps, counters' lifetimes, waiting without busy polling, other processes, errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celeriac
import pytest
from celeriac.plugins import resultstores
from celeriac.plugins.resultstores._sqlite import SQLiteResultStore, SQLiteResultStoreError

pytestmark = pytest.mark.timeout(60)

READY = frozenset({"SUCCESS", "FAILURE"})


def record(task_id: str, state: str = "SUCCESS", payload: bytes = b"42") -> celeriac.ResultRecord:
    return celeriac.ResultRecord(task_id=task_id, state=state, payload=payload)


def rows(path: Path, table: str) -> int:
    connection = sqlite3.connect(path)
    try:
        count: int = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()
    return count


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def open_store(url: str) -> Iterator[Callable[..., SQLiteResultStore]]:
    opened: list[SQLiteResultStore] = []

    def open_(**options: Any) -> SQLiteResultStore:
        store = SQLiteResultStore(url, options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., SQLiteResultStore]) -> SQLiteResultStore:
    return open_store()


def test_hook_creates_it_for_sqlite_urls(url: str) -> None:
    store = resultstores.celeriac_result_store(url=url, scheme="sqlite", options={})

    assert isinstance(store, SQLiteResultStore)
    assert store.shared_between_processes is True
    assert store.info()["path"] == str(store.path)
    assert "sqlite" in resultstores.celeriac_result_store_schemes()
    store.close()


def test_relative_and_default_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative, default = SQLiteResultStore("sqlite:///r.db"), SQLiteResultStore("sqlite://")
    try:
        assert (relative.path, default.path) == (tmp_path / "r.db", tmp_path / "celeriac.db")
    finally:
        relative.close()
        default.close()


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("sqlite:////no/such/dir/r.db", {}, "directory /no/such/dir does not exist; create it"),
        ("sqlite://host/r.db", {}, "has no host"),
        ("sqlite:///:memory:", {}, "cannot be shared"),
        ("sqlite:///r.db", {"timeout": 1}, "unknown option 'timeout'"),
        ("sqlite:///r.db", {"busy_timeout": -1}, r"busy_timeout: expected a number of seconds >= 0"),
        ("sqlite:///r.db", {"synchronous": "OFF"}, "synchronous: expected NORMAL or FULL"),
    ],
)
def test_bad_urls_and_options_are_config_errors(
    url: str, options: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(celeriac.ConfigError, match=message):
        SQLiteResultStore(url, options)


def test_cleanup_deletes_exactly_the_expired_rows(store: SQLiteResultStore) -> None:
    store.set(record("gone-1"), expires=0.01)
    store.set(record("gone-2"), expires=0.01)
    store.set(record("kept"), expires=3600)
    store.set(record("forever"))
    store.incr("counter-gone", expires=0.01)
    store.incr("counter-kept")
    assert store.wait("never", states=READY, timeout=0.05) is None  # let the short expiries pass

    assert store.cleanup() == 3

    assert rows(store.path, "celeriac_results") == 2
    assert rows(store.path, "celeriac_counters") == 1
    assert store.cleanup() == 0


def test_set_sweeps_expired_rows_every_cleanup_interval(open_store: Callable[..., SQLiteResultStore]) -> None:
    store = open_store(cleanup_interval=0.05)
    store.set(record("new"))
    store.set(record("old"), expires=0.01)
    assert rows(store.path, "celeriac_results") == 2
    deadline = time.monotonic() + 5
    while rows(store.path, "celeriac_results") != 1 and time.monotonic() < deadline:
        store.set(record("new"))  # a write; sweeps once the interval passed

    assert rows(store.path, "celeriac_results") == 1
    assert store.get("new") is not None


def test_counter_lifetime_is_kept_reset_or_restarted(store: SQLiteResultStore) -> None:
    assert store.incr("kept", 2, expires=3600) == 2
    assert store.incr("kept") == 3  # no expires: the lifetime stays
    assert store.incr("short", 5, expires=0.01) == 5
    assert store.wait("never", states=READY, timeout=0.05) is None
    assert store.incr("short", 1) == 1  # expired: starts again from 0, now without expiry
    assert store.incr("short", 1) == 2


def test_get_many_reads_more_ids_than_one_batch(store: SQLiteResultStore) -> None:
    ids = [f"task-{number}" for number in range(1200)]
    for task_id in ids[::2]:
        store.set(record(task_id))

    found = store.get_many([*ids, *ids[:10]])

    assert sorted(found) == sorted(ids[::2])


def test_an_idle_wait_backs_off_instead_of_busy_polling(
    store: SQLiteResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    get = store.get

    def counting(task_id: str) -> celeriac.ResultRecord | None:
        reads.append(task_id)
        return get(task_id)

    monkeypatch.setattr(store, "get", counting)
    started = time.monotonic()

    assert store.wait("missing", states=READY, timeout=1.0) is None

    elapsed = time.monotonic() - started
    assert 1 <= len(reads) <= 10 + elapsed / store.polling_interval


def test_a_wait_in_one_thread_is_woken_by_a_set_in_another_store_of_this_process(
    open_store: Callable[..., SQLiteResultStore],
) -> None:
    reader, writer = open_store(polling_interval=30), open_store()  # only a notification can wake it in time
    got: list[celeriac.ResultRecord | None] = []
    waiter = threading.Thread(target=lambda: got.append(reader.wait("t", states=READY, timeout=20)))
    waiter.start()
    assert reader.wait("started", states=READY, timeout=0.1) is None  # let the waiter block

    writer.set(record("t"))
    waiter.join(10)

    assert not waiter.is_alive()
    assert got == [record("t")]


WRITER = """
import sys
from celeriac import ResultRecord
from celeriac.plugins.resultstores._sqlite import SQLiteResultStore

store = SQLiteResultStore(sys.argv[1])
print(store.incr("shared"), flush=True)
sys.stdin.readline()
store.set(ResultRecord("from-child", "SUCCESS", b"child"))
store.close()
"""


def test_another_process_shares_results_and_counters(store: SQLiteResultStore, url: str) -> None:
    assert store.incr("shared") == 1
    got: list[celeriac.ResultRecord | None] = []
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "2"
        waiter = threading.Thread(target=lambda: got.append(store.wait("from-child", states=READY, timeout=30)))
        waiter.start()
        child.stdin.write("go\n")
        child.stdin.close()
        assert child.wait(30) == 0
        waiter.join(30)
    assert got == [celeriac.ResultRecord("from-child", "SUCCESS", b"child")]
    assert store.incr("shared", 0) == 2


def test_transport_and_results_share_one_file(tmp_path: Path) -> None:
    from celeriac.plugins.sqlite._transport import SQLiteTransport

    url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    transport, store = SQLiteTransport(url), SQLiteResultStore(url)
    try:
        transport.publish(celeriac.Envelope(b"x", "text/plain"), "q")
        store.set(record("t"))
        assert transport.queue_length("q") == 1
        assert store.get("t") == record("t")
    finally:
        transport.close()
        store.close()


def test_a_corrupt_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(b"\x00not sqlite\xff" * 500)

    with pytest.raises(SQLiteResultStoreError) as caught:
        SQLiteResultStore(f"sqlite:///{path}")

    message = str(caught.value)
    assert message.startswith(f"sqlite result store {path}: open: the file is not a usable SQLite database")
    assert "\n" not in message
    assert isinstance(caught.value, celeriac.HandledError)


def test_a_database_locked_too_long_is_a_bounded_one_line_error(url: str, tmp_path: Path) -> None:
    store = SQLiteResultStore(url, {"busy_timeout": 0.2})
    locker = sqlite3.connect(tmp_path / "results.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(celeriac.TransportError) as caught:
            store.set(record("t"))
        assert time.monotonic() - started < 5
        assert "locked" in str(caught.value) and "busy_timeout=0.2s" in str(caught.value)
        with pytest.raises(celeriac.TransportError, match="locked"):
            store.incr("c")
        assert store.get("t") is None  # readers still read (WAL)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    store.set(record("t"))
    assert store.get("t") == record("t")
    store.close()


def test_a_closed_store_refuses_work(store: SQLiteResultStore) -> None:
    store.close()
    store.close()
    with pytest.raises(celeriac.TransportError, match="closed"):
        store.get("t")
