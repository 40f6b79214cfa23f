"""The result-store interface: where task states and results live.

A result store keeps one :class:`ResultRecord` per task id: the state and an encoded payload
(the kernel encodes the result meta with the ``result_serializer``; the store never looks
inside). It is created by the ``celeriac_result_store`` hook from a URL and options and shared
by every thread of an app, so every method must be thread-safe.

What a store must provide (checked by :mod:`celeriac.testing.conformance`): ``set`` with
expiry, ``get``, ``wait`` (by notification where the store can, polling otherwise),
``forget``, and an atomic counter ``incr`` (for chords). Optional, for beat: leases
(``acquire_lease`` / ``release_lease`` / ``lease_owner``) and small stored values with fenced
writes (``get_meta`` / ``set_meta`` / ``delete_meta``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["ResultRecord", "ResultStore"]


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """A stored task state: ``payload`` is the encoded meta, opaque to the store."""

    task_id: str
    state: str
    payload: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    #: The ``reply_to`` of the task message, for stores that send results back to the caller
    #: (``rpc://``); ``None`` when unknown.
    reply_to: str | None = None


class ResultStore(ABC):
    """Base class of every result-store plugin."""

    schemes: ClassVar[tuple[str, ...]] = ()
    #: False when only the creating process can read results (``memory://``).
    shared_between_processes: ClassVar[bool] = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options: dict[str, Any] = dict(options or {})

    @property
    def reply_to(self) -> str | None:
        """Where workers should send this client's results, for stores that route results back
        to the caller (``rpc://``: the client's reply queue). ``send_task`` puts it in the
        message's ``reply_to`` property; the worker passes it back in :attr:`ResultRecord.reply_to`.
        ``None`` (the default) for stores keyed by task id only."""
        return None

    @abstractmethod
    def set(self, record: ResultRecord, *, expires: float | None = None) -> None:
        """Store ``record``, replacing any earlier one; gone after ``expires`` seconds."""

    def set_many(self, records: Sequence[ResultRecord], *, expires: float | None = None) -> None:
        """Store several records (the worker batches what finished together); stores override
        this to use one round trip."""
        for record in records:
            self.set(record, expires=expires)

    @abstractmethod
    def get(self, task_id: str) -> ResultRecord | None:
        """The record of ``task_id``, or ``None`` when there is none (or it expired)."""

    def get_many(self, task_ids: Iterable[str]) -> dict[str, ResultRecord]:
        """Records of several ids (missing ids are left out); stores override to batch."""
        found: dict[str, ResultRecord] = {}
        for task_id in task_ids:
            record = self.get(task_id)
            if record is not None:
                found[task_id] = record
        return found

    def wait(
        self,
        task_id: str,
        *,
        states: frozenset[str],
        timeout: float | None = None,
    ) -> ResultRecord | None:
        """Block until the record of ``task_id`` is in one of ``states``.

        Returns the record, or the latest record (possibly ``None``) when ``timeout`` passes.
        The default polls with a backoff from 5 ms to 200 ms; stores that can be notified
        (pub/sub, condition variables) override it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            record = self.get(task_id)
            if record is not None and record.state in states:
                return record
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return record
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete the record of ``task_id``; idempotent."""

    @abstractmethod
    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """Atomically add ``amount`` to the counter ``key`` (0 when new); returns the new value."""

    def cleanup(self) -> int:
        """Delete expired records now; returns how many. Stores that expire natively return 0."""
        return 0

    # -- leases and small values (used by beat) ---------------------------------------------
    #
    # Not abstract, so stores written before these existed keep working; a store that cannot
    # offer them raises ``NotImplementedError`` with a message saying so, and beat turns that
    # into a one-line error. Built-in stores: memory (in-process), redis, sqlite.

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Hold the lease ``name`` for ``ttl`` seconds on behalf of ``owner``.

        Takes it when nobody holds it (or the holder's time ran out) and renews it when
        ``owner`` already holds it; atomic across every process that shares the store.

        :return: whether ``owner`` holds the lease now.
        """
        raise self._unsupported("acquire_lease")

    def release_lease(self, name: str, owner: str) -> bool:
        """Give up the lease ``name`` if ``owner`` holds it; returns whether it did."""
        raise self._unsupported("release_lease")

    def lease_owner(self, name: str) -> str | None:
        """Who holds the unexpired lease ``name`` (``None``: nobody)."""
        raise self._unsupported("lease_owner")

    def get_meta(self, key: str) -> str | None:
        """The small value stored under ``key`` by :meth:`set_meta`, or ``None``."""
        raise self._unsupported("get_meta")

    def set_meta(self, key: str, value: str, *, lease: str | None = None, owner: str | None = None) -> bool:
        """Store the small string ``value`` under ``key`` (kept until replaced; no expiry).

        With ``lease`` and ``owner``, a *fenced* write: it happens only if ``owner`` holds the
        unexpired lease ``lease``, checked atomically with the write, so a process that lost
        its lease can no longer write.

        :return: whether the value was written.
        """
        raise self._unsupported("set_meta")

    def delete_meta(self, key: str) -> bool:
        """Delete the value stored under ``key``; returns whether there was one."""
        raise self._unsupported("delete_meta")

    def _unsupported(self, method: str) -> NotImplementedError:
        scheme = self.url.partition("://")[0] or "?"
        return NotImplementedError(
            f"the {type(self).__name__} result store ({scheme}://) does not implement {method}() "
            "(leases and stored values, which beat needs); use a result store that does, "
            "e.g. redis://... or sqlite:///celeriac.db"
        )

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def info(self) -> dict[str, Any]:
        """Facts for inspection; secrets must not appear."""
        return {"result_store": type(self).__name__}
