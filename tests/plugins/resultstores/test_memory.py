"""Behaviour specific to the ``memory://`` result store (the rest is in the conformance suite)."""

from __future__ import annotations

import gc
import threading
import uuid

import pytest
from celeriac import ResultRecord, ResultStore
from celeriac.plugins import resultstores
from celeriac.plugins.resultstores import _memory
from celeriac.plugins.resultstores._memory import MemoryResultStore
from celeriac.testing.conformance.resultstore import eventually


def _name() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


def _record(task_id: str = "t1", state: str = "SUCCESS") -> ResultRecord:
    return ResultRecord(task_id=task_id, state=state, payload=b"{}")


def test_hook_creates_a_memory_store_for_the_memory_scheme_only() -> None:
    url = _name()
    store = resultstores.celeriac_result_store(url=url, scheme="memory", options={})
    assert isinstance(store, MemoryResultStore)
    assert store.url == url
    assert resultstores.celeriac_result_store(url="nosql://localhost", scheme="nosql", options={}) is None
    assert "memory" in resultstores.celeriac_result_store_schemes()


def test_memory_results_stay_in_this_process() -> None:
    assert MemoryResultStore.shared_between_processes is False
    assert issubclass(MemoryResultStore, ResultStore)
    assert MemoryResultStore.schemes == ("memory",)


@pytest.mark.parametrize(
    ("url", "name"),
    [("memory://", ""), ("memory://jobs", "jobs"), ("memory://jobs/", "jobs"), ("memory:///jobs", "jobs")],
)
def test_store_name_comes_from_the_url(url: str, name: str) -> None:
    assert _memory.store_name(url) == name


def test_instances_with_the_same_name_share_results() -> None:
    url = _name()
    writer, reader = MemoryResultStore(url), MemoryResultStore(url + "/")
    writer.set(_record())
    assert reader.get("t1") == _record()


def test_instances_with_different_names_are_isolated() -> None:
    first, second = MemoryResultStore(_name()), MemoryResultStore(_name())
    first.set(_record())
    first.incr("counter")
    assert second.get("t1") is None
    assert second.incr("counter", 0) == 0


def test_state_is_freed_when_the_last_instance_goes() -> None:
    url = _name()
    store = MemoryResultStore(url)
    store.set(_record())
    name = store.name
    assert name in _memory._states
    del store
    gc.collect()
    assert name not in _memory._states
    assert MemoryResultStore(url).get("t1") is None


def test_state_survives_while_any_instance_holds_it() -> None:
    url = _name()
    keeper, writer = MemoryResultStore(url), MemoryResultStore(url)
    writer.set(_record())
    del writer
    gc.collect()
    assert MemoryResultStore(url).get("t1") == _record()
    assert keeper.get("t1") == _record()


def test_cleanup_counts_expired_records_and_counters() -> None:
    store = MemoryResultStore(_name())
    store.set(_record("short-1"), expires=0.05)
    store.set(_record("short-2"), expires=0.05)
    store.incr("short-counter", expires=0.05)
    store.set(_record("kept"), expires=60)
    store.incr("kept-counter")
    removed = 0

    def all_removed() -> bool:
        nonlocal removed
        removed += store.cleanup()
        return removed >= 3

    assert eventually(all_removed)
    assert removed == 3
    assert store.info()["records"] == 1
    assert store.get("kept") == _record("kept")
    assert store.incr("kept-counter", 0) == 1
    assert store.cleanup() == 0


def test_expired_records_are_swept_on_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "SWEEP_INTERVAL", 0.0)
    store = MemoryResultStore(_name())
    store.set(_record("short"), expires=0.05)

    def swept_by_set() -> bool:
        store.set(_record("other"))
        return bool(store.info()["records"] == 1)

    assert eventually(swept_by_set)
    assert store.get("other") == _record("other")


def test_waiters_are_dropped_when_waits_end() -> None:
    store = MemoryResultStore(_name())
    assert store.wait("t1", states=frozenset({"SUCCESS"}), timeout=0.01) is None
    results: list[ResultRecord | None] = []
    thread = threading.Thread(
        target=lambda: results.append(store.wait("t1", states=frozenset({"SUCCESS"}), timeout=10)), daemon=True
    )
    thread.start()
    assert eventually(lambda: "t1" in store._state.waiters)
    store.set(_record("t1", "STARTED"))
    store.set(_record("t1", "SUCCESS"))
    thread.join(10)
    assert results == [_record("t1", "SUCCESS")]
    assert store._state.waiters == {}


def test_info_names_the_store() -> None:
    store = MemoryResultStore("memory://info-test-" + uuid.uuid4().hex)
    assert store.info()["result_store"] == "MemoryResultStore"
    assert store.info()["name"] == store.name
