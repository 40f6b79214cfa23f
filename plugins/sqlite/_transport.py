"""The ``sqlite://`` transport: queues in one SQLite file shared by every process on the machine.

Rows of ``celeriac_messages`` are messages (schema in :mod:`._database`). A message is

* **ready** when ``owner IS NULL AND not_before IS NULL`` (the ``celeriac_messages_ready``
  partial index, ordered ``queue, priority DESC, id``);
* **delayed** while ``not_before`` is set; a fetch first moves every due one to ready;
* **leased** while ``owner`` is set; a fetch first returns every lease whose ``lease_until``
  passed to ready (the consumer died or stalled), so it is delivered again.

A fetch claims rows atomically in one ``BEGIN IMMEDIATE`` transaction::

    UPDATE celeriac_messages SET owner = :me, lease_until = :now + visibility_timeout,
                                 delivery_count = delivery_count + 1
     WHERE id IN (SELECT id FROM celeriac_messages
                   WHERE queue = :queue AND owner IS NULL AND not_before IS NULL
                   ORDER BY priority DESC, id LIMIT :n)
    RETURNING ...

A delivery's tag is ``(id, delivery_count)`` and every settle matches ``owner`` too, so a
consumer whose lease ran out cannot ack, reject or extend the copy that was delivered again.

Waiting: a fetch with nothing to take first asks with a read-only query (no write lock) whether
anything is ready or due, then sleeps 1 ms, 2 ms, 4 ms ... up to ``polling_interval``, waking
early when a transport of this process commits (:class:`~._database.Notifier`), when the file's
``PRAGMA data_version`` shows another process committed (the wait restarts at 1 ms: activity), or
when the earliest ETA or lease deadline arrives.

Broadcast channels are emulated in :mod:`._broadcast`; the connection, schema and errors live in
:mod:`._database`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import celeriac
from celeriac.plugins.sqlite._broadcast import SQLiteSubscription, insert_broadcast, last_broadcast_id
from celeriac.plugins.sqlite._database import (
    MIN_WAIT,
    Database,
    SQLiteBrokerError,
    database_path,
    decode_envelope,
    dumps_data,
    parse_settings,
    shared_notifier,
)

__all__ = ["SQLiteTransport"]

logger = logging.getLogger("celeriac.sqlite")

_COLUMNS = "id, priority, delivery_count, body, content_type, content_encoding, headers, properties"

_INSERT = (
    "INSERT INTO celeriac_messages (queue, priority, not_before, published_at, body, content_type,"
    " content_encoding, headers, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SCHEDULED = (
    "SELECT not_before, body, content_type, content_encoding, headers, properties FROM celeriac_messages"
    " WHERE queue = :queue AND not_before IS NOT NULL AND not_before > :now ORDER BY not_before, id LIMIT :limit"
)
_PROMOTE_DUE = "UPDATE celeriac_messages SET not_before = NULL WHERE not_before IS NOT NULL AND not_before <= ?"
_EXPIRE_LEASES = (
    "UPDATE celeriac_messages SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL AND lease_until <= ?"
)
_CLAIM = (
    "UPDATE celeriac_messages SET owner = ?, lease_until = ?, delivery_count = delivery_count + 1"
    " WHERE id IN (SELECT id FROM celeriac_messages WHERE queue = ? AND owner IS NULL AND not_before IS NULL"
    f" ORDER BY priority DESC, id LIMIT ?) RETURNING {_COLUMNS}"
)
#: Is a message ready on the queues (``{marks}``), and when are the next ETA and lease deadline?
_PROBE = (
    "SELECT EXISTS (SELECT 1 FROM celeriac_messages WHERE owner IS NULL AND not_before IS NULL AND queue IN ({marks})),"
    " (SELECT MIN(not_before) FROM celeriac_messages WHERE not_before IS NOT NULL),"
    " (SELECT MIN(lease_until) FROM celeriac_messages WHERE owner IS NOT NULL)"
)
_MATCH = "id = ? AND owner = ? AND delivery_count = ?"
_ACK = f"DELETE FROM celeriac_messages WHERE {_MATCH}"
_REQUEUE = f"UPDATE celeriac_messages SET owner = NULL, lease_until = NULL WHERE {_MATCH}"
_EXTEND = f"UPDATE celeriac_messages SET lease_until = MAX(lease_until, ?) WHERE {_MATCH}"
#: Ready messages of a queue, three ways (each served by one partial index): ready, due, lease expired.
_READY_PARTS = (
    "queue = :queue AND owner IS NULL AND not_before IS NULL",
    "not_before <= :now AND queue = :queue AND owner IS NULL",
    "owner IS NOT NULL AND lease_until <= :now AND queue = :queue",
)
_QUEUE_LENGTH = "SELECT " + " + ".join(
    f"(SELECT COUNT(*) FROM celeriac_messages WHERE {part})" for part in _READY_PARTS
)

#: When the oldest ready message of a queue became ready (the three ways of ``_READY_PARTS``).
_OLDEST_READY = (
    "SELECT MIN(t) FROM ("
    f"SELECT MIN(published_at) AS t FROM celeriac_messages WHERE {_READY_PARTS[0]}"
    f" UNION ALL SELECT MIN(not_before) FROM celeriac_messages WHERE {_READY_PARTS[1]}"
    f" UNION ALL SELECT MIN(published_at) FROM celeriac_messages WHERE {_READY_PARTS[2]})"
)

Row = tuple[int, int, int, bytes, str, str, str, str]


def _message_row(envelope: celeriac.Envelope, queue: str, eta: float | None, now: float) -> tuple[Any, ...]:
    not_before = eta if eta is not None and eta > now else None
    return (
        queue,
        envelope.priority,
        not_before,
        now,
        bytes(envelope.body),
        envelope.content_type,
        envelope.content_encoding,
        dumps_data(envelope.headers),
        dumps_data(envelope.properties),
    )


def _tag(delivery: celeriac.Delivery) -> tuple[int, int] | None:
    """The ``(id, delivery_count)`` of a delivery this transport made, None for foreign tags."""
    tag = delivery.tag
    if isinstance(tag, tuple) and len(tag) == 2 and all(isinstance(part, int) for part in tag):
        return tag[0], tag[1]
    return None


class SQLiteTransport(celeriac.Transport):
    """Queues in a SQLite file (WAL mode) that every process on this machine can share.

    Thread-safe: one connection per transport, used by one thread at a time. After
    :meth:`close`, publishing, fetching and subscribing raise :class:`~celeriac.TransportError`
    and a fetch blocked at that moment returns ``[]``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    shared_between_processes: ClassVar[bool] = True

    def __init__(self, url: str = "sqlite:///celeriac.db", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = parse_settings(self.options)
        self.path = database_path(url)
        self.visibility_timeout = self.settings.visibility_timeout
        self._db = Database(self.path, self.settings)
        self._notifier = shared_notifier(self.path)
        #: Identifies this transport's leases; the pid helps whoever reads the table.
        self.owner = f"{uuid.uuid4().hex[:16]}@{os.getpid()}"
        self._creator_pid = os.getpid()
        self._wake_generation = 0
        self._rotation = 0
        self._idle_wait = MIN_WAIT
        self._closed = False
        self._next_broadcast_sweep = 0.0
        self._subscriptions: weakref.WeakSet[SQLiteSubscription] = weakref.WeakSet()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def needs_lease_extension(self) -> bool:
        """Always true: a fetched message comes back after ``visibility_timeout`` unless extended."""
        return True

    # -- publishing --------------------------------------------------------------------------

    def publish(self, envelope: celeriac.Envelope, queue: str, *, eta: float | None = None) -> None:
        """Insert ``envelope`` into ``queue`` (invisible until ``eta``); committed on return."""
        row = _message_row(envelope, queue, eta, time.time())
        with self._db.connection("publish") as connection:
            connection.execute(_INSERT, row)
        self._notifier.bump()

    def publish_many(self, items: Iterable[tuple[celeriac.Envelope, str]]) -> None:
        """Insert several envelopes in one transaction."""
        now = time.time()
        rows = [_message_row(envelope, queue, None, now) for envelope, queue in items]
        if not rows:
            return
        with self._db.transaction("publish") as connection:
            connection.executemany(_INSERT, rows)
        self._notifier.bump()

    # -- consuming ---------------------------------------------------------------------------

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[celeriac.Delivery]:
        """Lease up to ``limit`` messages from ``queues``, blocking up to ``timeout`` seconds.

        The queue served first rotates from call to call, and the first pass gives each queue
        an equal share of ``limit``, so no queue starves. Returns ``[]`` early after
        :meth:`wake` or :meth:`close`.
        """
        if limit < 1:
            raise ValueError(f"fetch limit must be at least 1, got {limit}")
        if self._closed:
            raise SQLiteBrokerError(f"sqlite broker {self.path}: fetch: the transport is closed")
        names = list(dict.fromkeys(queues))
        if names:
            start = self._rotation % len(names)
            self._rotation += 1
            names = names[start:] + names[:start]
        deadline = time.monotonic() + max(timeout, 0.0)
        generation = self._wake_generation
        try:
            while True:
                seen_local = self._notifier.generation
                seen_version = self._db.data_version()
                ready, next_due = self._probe(names)
                if ready or (next_due is not None and next_due <= time.time()):
                    deliveries = self._claim(names, limit)
                    if deliveries:
                        self._idle_wait = MIN_WAIT
                        return deliveries
                    if generation != self._wake_generation or self.closed:
                        return []
                    continue  # another consumer was faster: look again
                if not self._idle(deadline, generation, seen_local, seen_version, next_due):
                    return []
        except celeriac.TransportError:
            if self.closed:  # closed by another thread while this one waited
                return []
            raise

    def _idle(self, deadline: float, generation: int, seen_local: int, seen_version: int, due: float | None) -> bool:
        """Sleep until something may be fetchable; False when the fetch should give up instead."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or generation != self._wake_generation or self._closed:
                return False
            pause = min(self._idle_wait, remaining)
            if due is not None:
                pause = min(pause, max(due - time.time(), 0.0))
            self._notifier.wait(seen_local, pause)
            if generation != self._wake_generation or self._closed:
                return False
            if self._notifier.generation != seen_local or self._db.data_version() != seen_version:
                self._idle_wait = MIN_WAIT  # activity: poll fast again
                return True
            if due is not None and time.time() >= due:
                return True
            self._idle_wait = min(self._idle_wait * 2, self.settings.polling_interval)

    def _probe(self, names: Sequence[str]) -> tuple[bool, float | None]:
        """Read-only: is a message ready on ``names``, and when is the next ETA or lease deadline?"""
        if not names:
            return False, None
        sql = _PROBE.format(marks=",".join("?" * len(names)))
        with self._db.connection("fetch") as connection:
            ready, delayed, leased = connection.execute(sql, names).fetchone()
        dues = [due for due in (delayed, leased) if due is not None]
        return bool(ready), min(dues) if dues else None

    def _claim(self, names: Sequence[str], limit: int) -> list[celeriac.Delivery]:
        """In one write transaction: promote due ETAs, expire leases, lease up to ``limit``."""
        now = time.time()
        lease_until = now + self.visibility_timeout
        claimed: dict[str, list[Row]] = {name: [] for name in names}
        with self._db.transaction("fetch") as connection:
            if self._closed:  # close() is returning this transport's leases: take no more
                return []
            connection.execute(_PROMOTE_DUE, (now,))
            connection.execute(_EXPIRE_LEASES, (now,))
            remaining = limit
            share = -(-limit // len(names))
            more: list[str] = []
            for name in names:
                if remaining <= 0:
                    break
                want = min(share, remaining)
                rows = connection.execute(_CLAIM, (self.owner, lease_until, name, want)).fetchall()
                claimed[name] += rows
                remaining -= len(rows)
                if len(rows) == want:
                    more.append(name)
            for name in more:
                if remaining <= 0:
                    break
                rows = connection.execute(_CLAIM, (self.owner, lease_until, name, remaining)).fetchall()
                claimed[name] += rows
                remaining -= len(rows)
        deliveries = []
        for name, rows in claimed.items():
            rows.sort(key=lambda row: (-row[1], row[0]))
            for row_id, _, count, body, content_type, encoding, headers, properties in rows:
                envelope = decode_envelope(body, content_type, encoding, headers, properties)
                deliveries.append(celeriac.Delivery(envelope, name, (row_id, count), count > 1, count))
        return deliveries

    def ack(self, delivery: celeriac.Delivery) -> None:
        """Delete the message; a no-op when the delivery is unknown, settled, or its lease ran out."""
        tag = _tag(delivery)
        if tag is not None:
            with self._db.connection("ack") as connection:
                connection.execute(_ACK, (tag[0], self.owner, tag[1]))

    def ack_many(self, deliveries: Iterable[celeriac.Delivery]) -> None:
        """Ack several deliveries in one transaction."""
        rows = [(tag[0], self.owner, tag[1]) for delivery in deliveries if (tag := _tag(delivery)) is not None]
        if rows:
            with self._db.transaction("ack") as connection:
                connection.executemany(_ACK, rows)

    def reject(self, delivery: celeriac.Delivery, *, requeue: bool) -> None:
        """Put the message back in its place (delivered again next) or delete it."""
        tag = _tag(delivery)
        if tag is None:
            return
        with self._db.connection("reject") as connection:
            changed = connection.execute(_REQUEUE if requeue else _ACK, (tag[0], self.owner, tag[1])).rowcount
        if requeue and changed:
            self._notifier.bump()

    def dead_letter(self, delivery: celeriac.Delivery, reason: str) -> None:
        """Atomically move the message to its dead-letter queue with ``x-death-*`` headers."""
        tag = _tag(delivery)
        if tag is None:
            return
        match = (tag[0], self.owner, tag[1])
        with self._db.transaction("dead-letter") as connection:
            row = connection.execute(f"SELECT queue, headers FROM celeriac_messages WHERE {_MATCH}", match).fetchone()
            if row is None:
                return
            queue, headers_json = row
            headers = json.loads(headers_json)
            now = time.time()
            headers.update({"x-death-reason": reason, "x-death-queue": queue, "x-death-time": now})
            connection.execute(
                "INSERT INTO celeriac_messages (queue, priority, published_at, body, content_type, content_encoding,"
                " headers, properties) SELECT ?, priority, ?, body, content_type, content_encoding, ?, properties"
                " FROM celeriac_messages WHERE id = ?",
                (self.dead_letter_queue(queue), now, dumps_data(headers), tag[0]),
            )
            connection.execute("DELETE FROM celeriac_messages WHERE id = ?", (tag[0],))
        self._notifier.bump()

    def extend_lease(self, deliveries: Sequence[celeriac.Delivery], seconds: float) -> None:
        """Keep the messages leased for at least ``seconds`` from now (never shortens a lease)."""
        until = time.time() + seconds
        rows = [(until, tag[0], self.owner, tag[1]) for delivery in deliveries if (tag := _tag(delivery)) is not None]
        if rows:
            with self._db.transaction("extend leases") as connection:
                connection.executemany(_EXTEND, rows)

    # -- queues ------------------------------------------------------------------------------

    def queue_length(self, queue: str) -> int:
        """Messages ready on ``queue``: due delayed ones and expired leases included."""
        with self._db.connection("queue length") as connection:
            count: int = connection.execute(_QUEUE_LENGTH, {"queue": queue, "now": time.time()}).fetchone()[0]
        return count

    def scheduled(self, queue: str, limit: int = 100) -> list[tuple[float, celeriac.Envelope]]:
        """Delayed messages of ``queue`` not yet due, soonest first."""
        with self._db.connection("list delayed messages") as connection:
            rows = connection.execute(_SCHEDULED, {"queue": queue, "now": time.time(), "limit": limit}).fetchall()
        return [
            (not_before, decode_envelope(body, content_type, encoding, headers, properties))
            for not_before, body, content_type, encoding, headers, properties in rows
        ]

    def oldest_message_age(self, queue: str) -> float | None:
        """Seconds the oldest ready message of ``queue`` has waited (0.0 when none is): since
        its ETA for a delayed one that is due, since publishing otherwise (a delayed message
        already made ready by a fetch counts from its publishing)."""
        now = time.time()
        with self._db.connection("oldest message age") as connection:
            oldest = connection.execute(_OLDEST_READY, {"queue": queue, "now": now}).fetchone()[0]
        return 0.0 if oldest is None else max(0.0, now - float(oldest))

    def purge(self, queue: str) -> int:
        """Delete every ready message on ``queue`` (what :meth:`queue_length` counts)."""
        parameters = {"queue": queue, "now": time.time()}
        with self._db.transaction("purge") as connection:
            return sum(
                connection.execute(f"DELETE FROM celeriac_messages WHERE {part}", parameters).rowcount
                for part in _READY_PARTS
            )

    # -- broadcast ---------------------------------------------------------------------------

    def broadcast(self, channel: str, envelope: celeriac.Envelope) -> None:
        """Record ``envelope`` for the current subscribers of ``channel`` (see :mod:`._broadcast`)."""
        now = time.time()
        sweep = now >= self._next_broadcast_sweep
        if sweep:
            self._next_broadcast_sweep = now + max(self.settings.broadcast_ttl / 4, 1.0)
        with self._db.transaction("broadcast") as connection:
            insert_broadcast(connection, channel, envelope, now, self.settings.broadcast_ttl if sweep else None)
        self._notifier.bump()

    def subscribe(self, channel: str) -> celeriac.Subscription:
        """Receive broadcasts on ``channel`` committed from now on."""
        with self._db.connection("subscribe") as connection:
            last_id = last_broadcast_id(connection)
        subscription = SQLiteSubscription(
            self._db, self._notifier, channel, last_id, self.settings.polling_interval, lambda: self._closed
        )
        self._subscriptions.add(subscription)
        return subscription

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Make fetches blocked on this transport return ``[]`` now."""
        self._wake_generation += 1
        self._notifier.bump()

    def close(self) -> None:
        """Return this transport's unsettled messages to their queues, end its subscriptions,
        close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake_generation += 1
        for subscription in list(self._subscriptions):
            subscription.close()
        returned = 0
        if os.getpid() != self._creator_pid:
            # A forked child shares the owner id: handing back would take the parent's leases.
            self._db.close()
            return
        try:
            with self._db.connection("close") as connection:
                returned = connection.execute(
                    "UPDATE celeriac_messages SET owner = NULL, lease_until = NULL WHERE owner = ?", (self.owner,)
                ).rowcount
        except celeriac.TransportError as exc:
            logger.warning("%s; unsettled messages come back when their leases expire", exc)
        finally:
            self._db.close()
        if returned:
            self._notifier.bump()
        else:
            with self._notifier.condition:
                self._notifier.condition.notify_all()

    def info(self) -> dict[str, Any]:
        """The class, file, visibility timeout and SQLite version."""
        return {
            **super().info(),
            "path": str(self.path),
            "visibility_timeout": self.visibility_timeout,
            "sqlite_version": sqlite3.sqlite_version,
        }
