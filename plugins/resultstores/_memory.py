"""``memory://`` — a result store inside the current process.

Features: expiry, notified ``wait`` (a condition variable per waited-on task id, no polling),
atomic counters. Results are visible only to the process that wrote them
(``shared_between_processes = False``), so it suits tests and single-process apps.

Connection string: ``memory://`` (the default store) or ``memory://NAME``. Every instance with
the same name shares one state, so a client and a worker in one process see the same results,
while tests isolate themselves with unique names. A state lives as long as some instance of it
does (it is held in a :class:`weakref.WeakValueDictionary`), so nothing leaks between tests.

Options: none.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import celeriac

__all__ = ["MemoryResultStore"]

#: Expired entries are swept on ``set`` at most this often (seconds); reads drop them lazily.
SWEEP_INTERVAL = 30.0


class _Waiter:
    """A condition variable shared by every thread waiting on one task id."""

    __slots__ = ("condition", "count")

    def __init__(self, lock: threading.Lock) -> None:
        self.condition = threading.Condition(lock)
        self.count = 0


class _StoreState:
    """The data behind every store instance of one name; guarded by ``lock``."""

    __slots__ = ("__weakref__", "counters", "lock", "next_sweep", "records", "waiters")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: task id -> (record, monotonic expiry time or None)
        self.records: dict[str, tuple[celeriac.ResultRecord, float | None]] = {}
        #: counter key -> (value, monotonic expiry time or None)
        self.counters: dict[str, tuple[int, float | None]] = {}
        self.waiters: dict[str, _Waiter] = {}
        self.next_sweep = time.monotonic() + SWEEP_INTERVAL

    def live_record(self, task_id: str, now: float) -> celeriac.ResultRecord | None:
        """The unexpired record of ``task_id``, dropping it when expired; caller holds ``lock``."""
        entry = self.records.get(task_id)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at is not None and expires_at <= now:
            del self.records[task_id]
            return None
        return record

    def sweep(self, now: float) -> int:
        """Delete every expired record and counter; caller holds ``lock``. Returns how many."""
        expired_records = [key for key, (_, at) in self.records.items() if at is not None and at <= now]
        expired_counters = [key for key, (_, at) in self.counters.items() if at is not None and at <= now]
        for key in expired_records:
            del self.records[key]
        for key in expired_counters:
            del self.counters[key]
        self.next_sweep = now + SWEEP_INTERVAL
        return len(expired_records) + len(expired_counters)


_states: weakref.WeakValueDictionary[str, _StoreState] = weakref.WeakValueDictionary()
_states_lock = threading.Lock()


def store_name(url: str) -> str:
    """The state name of a ``memory://`` URL: ``memory://NAME/`` -> ``NAME``, ``memory://`` -> ``""``."""
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def _shared_state(name: str) -> _StoreState:
    with _states_lock:
        state = _states.get(name)
        if state is None:
            state = _StoreState()
            _states[name] = state
        return state


def _expiry_time(expires: float | None, now: float) -> float | None:
    return None if expires is None else now + expires


class MemoryResultStore(celeriac.ResultStore):
    """Results in this process's memory, shared by every instance with the same URL name."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    shared_between_processes: ClassVar[bool] = False

    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.name = store_name(url)
        # The strong reference that keeps the named state alive while this instance is.
        self._state = _shared_state(self.name)

    def set(self, record: celeriac.ResultRecord, *, expires: float | None = None) -> None:
        """Store ``record`` (gone after ``expires`` seconds) and wake threads waiting on it."""
        state = self._state
        with state.lock:
            now = time.monotonic()
            if now >= state.next_sweep:
                state.sweep(now)
            state.records[record.task_id] = (record, _expiry_time(expires, now))
            waiter = state.waiters.get(record.task_id)
            if waiter is not None:
                waiter.condition.notify_all()

    def get(self, task_id: str) -> celeriac.ResultRecord | None:
        """The record of ``task_id``, or ``None`` when missing or expired."""
        state = self._state
        with state.lock:
            return state.live_record(task_id, time.monotonic())

    def get_many(self, task_ids: Iterable[str]) -> dict[str, celeriac.ResultRecord]:
        """Records of several ids, read under one lock; missing and expired ids are left out."""
        state = self._state
        found: dict[str, celeriac.ResultRecord] = {}
        with state.lock:
            now = time.monotonic()
            for task_id in task_ids:
                record = state.live_record(task_id, now)
                if record is not None:
                    found[task_id] = record
        return found

    def wait(
        self,
        task_id: str,
        *,
        states: frozenset[str],
        timeout: float | None = None,
    ) -> celeriac.ResultRecord | None:
        """Block until ``task_id`` is in one of ``states``; woken by ``set``, never polling.

        Returns the record, or the latest record (``None`` if there is none) after ``timeout``.
        """
        state = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        with state.lock:
            waiter = state.waiters.get(task_id)
            if waiter is None:
                waiter = state.waiters[task_id] = _Waiter(state.lock)
            waiter.count += 1
            try:
                while True:
                    now = time.monotonic()
                    record = state.live_record(task_id, now)
                    if record is not None and record.state in states:
                        return record
                    if deadline is None:
                        waiter.condition.wait()
                    elif deadline <= now:
                        return record
                    else:
                        waiter.condition.wait(deadline - now)
            finally:
                waiter.count -= 1
                if waiter.count == 0:
                    del state.waiters[task_id]

    def forget(self, task_id: str) -> None:
        """Delete the record of ``task_id``; does nothing when there is none."""
        state = self._state
        with state.lock:
            state.records.pop(task_id, None)

    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """Atomically add ``amount`` to counter ``key``; ``expires`` (re)sets its lifetime."""
        state = self._state
        with state.lock:
            now = time.monotonic()
            value, expires_at = state.counters.get(key, (0, None))
            if expires_at is not None and expires_at <= now:
                value, expires_at = 0, None
            value += amount
            if expires is not None:
                expires_at = now + expires
            state.counters[key] = (value, expires_at)
            return value

    def cleanup(self) -> int:
        """Delete expired records and counters now; returns how many were deleted."""
        state = self._state
        with state.lock:
            return state.sweep(time.monotonic())

    def info(self) -> dict[str, Any]:
        """The store class, its name and how many records it holds (expired ones included)."""
        with self._state.lock:
            records = len(self._state.records)
        return {"result_store": type(self).__name__, "name": self.name, "records": records}

    # -- leases and small values (beat) ------------------------------------------------------

    def _extras(self) -> _Extras:
        """Leases and values of this store's state; caller holds the state's lock."""
        extras = _state_extras.get(self._state)
        if extras is None:
            extras = _state_extras[self._state] = _Extras()
        return extras

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take lease ``name`` (free or expired) or renew it (held by ``owner``) for ``ttl`` seconds."""
        with self._state.lock:
            leases = self._extras().leases
            now = time.monotonic()
            holder = leases.get(name)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            leases[name] = (owner, now + ttl)
            return True

    def release_lease(self, name: str, owner: str) -> bool:
        """Give up lease ``name`` if ``owner`` holds it."""
        with self._state.lock:
            leases = self._extras().leases
            holder = leases.get(name)
            if holder is None or holder[0] != owner or holder[1] <= time.monotonic():
                return False
            del leases[name]
            return True

    def lease_owner(self, name: str) -> str | None:
        """The holder of the unexpired lease ``name``, or ``None``."""
        with self._state.lock:
            holder = self._extras().leases.get(name)
            return holder[0] if holder is not None and holder[1] > time.monotonic() else None

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        with self._state.lock:
            return self._extras().values.get(key)

    def set_meta(self, key: str, value: str, *, lease: str | None = None, owner: str | None = None) -> bool:
        """Store ``value`` under ``key``; with ``lease``/``owner`` only while ``owner`` holds that lease."""
        with self._state.lock:
            extras = self._extras()
            if lease is not None:
                holder = extras.leases.get(lease)
                if holder is None or holder[0] != owner or holder[1] <= time.monotonic():
                    return False
            extras.values[key] = value
            return True

    def delete_meta(self, key: str) -> bool:
        """Delete the value stored under ``key``; returns whether there was one."""
        with self._state.lock:
            return self._extras().values.pop(key, None) is not None


class _Extras:
    """Leases (name -> owner, monotonic expiry) and small values of one store state."""

    __slots__ = ("leases", "values")

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, float]] = {}
        self.values: dict[str, str] = {}


#: Leases and values per store state, alive as long as the state is.
_state_extras: weakref.WeakKeyDictionary[_StoreState, _Extras] = weakref.WeakKeyDictionary()
