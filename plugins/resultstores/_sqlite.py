"""``sqlite://`` — results in a SQLite file shared by every process on this machine.

Features: expiry (rows carry an ``expires_at`` unix time; reads ignore expired rows and
``set`` sweeps them every ``cleanup_interval`` seconds, ``cleanup()`` at once), atomic
counters (one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement), and ``wait``
without a fixed sleep: it polls after 1 ms, 2 ms, 4 ms ... up to ``polling_interval``, and
starts again at 1 ms whenever the file changed (``PRAGMA data_version``, no I/O) or a store of
this process on the same file wrote (woken at once).

Connection string: ``sqlite:///relative/path.db`` (relative to the current directory),
``sqlite:////absolute/path.db``, or ``sqlite://`` for ``./celeriac.db``. The file may be the one
the ``sqlite://`` transport uses (the tables are ``celeriac_results`` and ``celeriac_counters``).
WAL mode, so the file must be on a local file system.

Options (``result_store_options``): ``busy_timeout`` (seconds to wait for another process's
write lock before a one-line error, default 5), ``polling_interval`` (longest wait between
polls in ``wait``, default 0.05 s), ``cleanup_interval`` (seconds between sweeps of expired
rows by ``set``, default 60), ``synchronous`` (``NORMAL`` default, or ``FULL``).

This module does not share code with the ``sqlite`` transport plugin: plugins are independent.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import celeriac

__all__ = ["SQLiteResultStore", "SQLiteResultStoreError"]

DEFAULT_FILE = "celeriac.db"
MIN_SQLITE = (3, 35, 0)
SCHEMA_VERSION = "1"
MIN_WAIT = 0.001
#: Most ids per ``get_many`` query (SQLite limits bound parameters).
BATCH = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_results (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    expires_at REAL                    -- unix time; NULL: kept forever
);
CREATE INDEX IF NOT EXISTS celeriac_results_expiry ON celeriac_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS celeriac_counters_expiry ON celeriac_counters (expires_at) WHERE expires_at IS NOT NULL;
"""

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_SET = (
    "INSERT OR REPLACE INTO celeriac_results (task_id, state, payload, content_type, content_encoding, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_GET = (
    "SELECT task_id, state, payload, content_type, content_encoding FROM celeriac_results"
    f" WHERE task_id = ? AND {_LIVE}"
)
#: An expired counter restarts from 0; ``expires`` (re)sets the lifetime, else an unexpired one is kept.
_INCR = (
    "INSERT INTO celeriac_counters (key, value, expires_at) VALUES (:key, :amount, :expires_at)"
    " ON CONFLICT (key) DO UPDATE SET"
    " value = CASE WHEN expires_at IS NOT NULL AND expires_at <= :now THEN :amount ELSE value + :amount END,"
    " expires_at = CASE WHEN :expires_at IS NOT NULL THEN :expires_at"
    " WHEN expires_at IS NOT NULL AND expires_at <= :now THEN NULL ELSE expires_at END"
    " RETURNING value"
)
_OPTIONS = ("busy_timeout", "cleanup_interval", "polling_interval", "synchronous")


#: Connections inherited across ``fork``: the child never uses or closes them.
_abandoned: list[sqlite3.Connection] = []


class SQLiteResultStoreError(celeriac.TransportError, celeriac.HandledError):
    """The result file cannot be used (locked too long, corrupt, unreadable, closed); one line."""


def result_path(url: str) -> Path:
    """The absolute path of a ``sqlite://`` result-store URL (see the module docstring)."""
    parts = urlsplit(url)
    expected = "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
    if parts.netloc or parts.query or parts.fragment:
        raise celeriac.ConfigError(f"result_store {url!r}: a sqlite URL has no host or ?query; {expected}")
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if raw == ":memory:":
        raise celeriac.ConfigError(
            f"result_store {url!r}: an in-memory SQLite database cannot be shared; use memory:// or a file path"
        )
    path = Path(raw or DEFAULT_FILE).absolute()
    if path.is_dir():
        raise celeriac.ConfigError(f"result_store {url!r}: {path} is a directory; {expected}")
    if not path.parent.is_dir():
        raise celeriac.ConfigError(
            f"result_store {url!r}: directory {path.parent} does not exist; create it or choose another path"
        )
    return path


def _seconds(options: Mapping[str, Any], name: str, default: float, *, allow_zero: bool = False) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        kind = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
        raise celeriac.ConfigError(f"result_store_options.{name}: expected {kind}, got {value!r}")
    return float(value)


def _describe(exc: sqlite3.Error, path: Path, busy_timeout: float, action: str) -> str:
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return (
            f"sqlite result store {path}: {action}: the database stayed locked by another connection for longer "
            f"than busy_timeout={busy_timeout:g}s; retry, find the process holding it, "
            "or raise result_store_options.busy_timeout"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return (
            f"sqlite result store {path}: {action}: the file is not a usable SQLite database ({text}); "
            "move it away (a fresh one is created) or point result_store at another file"
        )
    if "unable to open" in lowered or "readonly" in lowered:
        return f"sqlite result store {path}: {action}: cannot open the file for writing ({text}); check permissions"
    return f"sqlite result store {path}: {action}: {text}"


class _Notifier:
    """Wakes ``wait`` in this process when a store on the same file writes."""

    __slots__ = ("__weakref__", "condition", "generation")

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.generation = 0

    def bump(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()


_notifiers: weakref.WeakValueDictionary[str, _Notifier] = weakref.WeakValueDictionary()
_notifiers_lock = threading.Lock()


def _shared_notifier(path: Path) -> _Notifier:
    with _notifiers_lock:
        notifier = _notifiers.get(str(path))
        if notifier is None:
            notifier = _notifiers[str(path)] = _Notifier()
        return notifier


class SQLiteResultStore(celeriac.ResultStore):
    """Results and counters in a SQLite file; thread-safe (one connection, one thread at a time)."""

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    shared_between_processes: ClassVar[bool] = True

    def __init__(self, url: str = "sqlite:///celeriac.db", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        unknown = sorted(set(self.options) - set(_OPTIONS))
        if unknown:
            raise celeriac.ConfigError(
                f"result_store_options: unknown option {unknown[0]!r} for the sqlite result store; "
                f"known: {', '.join(_OPTIONS)}"
            )
        self.busy_timeout = _seconds(self.options, "busy_timeout", 5.0, allow_zero=True)
        self.polling_interval = max(_seconds(self.options, "polling_interval", 0.05), MIN_WAIT)
        self.cleanup_interval = _seconds(self.options, "cleanup_interval", 60.0)
        synchronous = self.options.get("synchronous", "NORMAL")
        if not isinstance(synchronous, str) or synchronous.upper() not in ("NORMAL", "FULL"):
            raise celeriac.ConfigError(
                f"result_store_options.synchronous: expected NORMAL or FULL, got {synchronous!r}"
            )
        self.synchronous = synchronous.upper()
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise celeriac.ConfigError(
                f"the sqlite result store needs SQLite >= 3.35; this Python has {sqlite3.sqlite_version}"
            )
        self.path = result_path(url)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._next_sweep = time.time() + self.cleanup_interval
        self._notifier = _shared_notifier(self.path)
        with self._session("open"):
            pass

    # -- the connection ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise celeriac.ConfigError(
                    f"sqlite result store {self.path}: cannot switch to WAL mode (got {mode!r}); "
                    "put the file on a local file system"
                )
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
            try:
                row = connection.execute("SELECT value FROM celeriac_meta WHERE key = 'results_schema'").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                row = None
            if row is None:
                connection.executescript(
                    "BEGIN IMMEDIATE;"
                    + SCHEMA
                    + f"INSERT OR IGNORE INTO celeriac_meta (key, value) VALUES ('results_schema', '{SCHEMA_VERSION}');"
                    + "COMMIT;"
                )
                row = connection.execute("SELECT value FROM celeriac_meta WHERE key = 'results_schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise celeriac.ConfigError(
                    f"sqlite result store {self.path}: the file holds results schema version "
                    f"{None if row is None else row[0]!r}, this celeriac uses {SCHEMA_VERSION!r}; use another file"
                )
        except BaseException:
            connection.close()
            raise
        return connection

    @contextmanager
    def _session(self, action: str, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection for this thread alone (a ``BEGIN IMMEDIATE`` transaction with ``write``);
        ``sqlite3`` errors become one-line :class:`SQLiteResultStoreError`."""
        if not self._lock.acquire(timeout=self.busy_timeout * 2 + 1.0):
            raise SQLiteResultStoreError(
                f"sqlite result store {self.path}: {action}: another thread held the connection too long"
            )
        try:
            if self._closed:
                raise SQLiteResultStoreError(f"sqlite result store {self.path}: {action}: the store is closed")
            try:
                if self._connection is None or self._pid != os.getpid():
                    if self._connection is not None:
                        _abandoned.append(self._connection)  # inherited across fork: never touch it
                    self._pid = os.getpid()
                    self._connection = self._open()
                connection = self._connection
                if not write:
                    yield connection
                    return
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._connection is not None and self._connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._connection.execute("ROLLBACK")
                raise SQLiteResultStoreError(_describe(exc, self.path, self.busy_timeout, action)) from exc
        finally:
            self._lock.release()

    # -- records -------------------------------------------------------------------------------

    def set(self, record: celeriac.ResultRecord, *, expires: float | None = None) -> None:
        """Store ``record`` (gone after ``expires`` seconds) and wake waiters of this process."""
        now = time.time()
        row = (
            record.task_id,
            record.state,
            bytes(record.payload),
            record.content_type,
            record.content_encoding,
            None if expires is None else now + expires,
        )
        with self._session("store a result") as connection:
            connection.execute(_SET, row)
        self._notifier.bump()
        if now >= self._next_sweep:
            self._next_sweep = now + self.cleanup_interval
            self.cleanup()

    def get(self, task_id: str) -> celeriac.ResultRecord | None:
        """The record of ``task_id``, or ``None`` when missing or expired."""
        with self._session("read a result") as connection:
            row = connection.execute(_GET, (task_id, time.time())).fetchone()
        return None if row is None else celeriac.ResultRecord(row[0], row[1], bytes(row[2]), row[3], row[4])

    def get_many(self, task_ids: Iterable[str]) -> dict[str, celeriac.ResultRecord]:
        """Records of several ids, read in batches; missing and expired ids are left out."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, celeriac.ResultRecord] = {}
        now = time.time()
        with self._session("read results") as connection:
            for start in range(0, len(ids), BATCH):
                batch = ids[start : start + BATCH]
                rows = connection.execute(
                    "SELECT task_id, state, payload, content_type, content_encoding FROM celeriac_results"
                    f" WHERE task_id IN ({','.join('?' * len(batch))}) AND {_LIVE}",
                    [*batch, now],
                ).fetchall()
                for row in rows:
                    found[row[0]] = celeriac.ResultRecord(row[0], row[1], bytes(row[2]), row[3], row[4])
        return found

    def wait(
        self,
        task_id: str,
        *,
        states: frozenset[str],
        timeout: float | None = None,
    ) -> celeriac.ResultRecord | None:
        """Block until ``task_id`` is in one of ``states``; the latest record (or None) at timeout.

        Polls after 1 ms, doubling up to ``polling_interval`` while nothing changes; a change to
        the file (another process) or a write by this process starts again at 1 ms.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        notifier = self._notifier
        pause = MIN_WAIT
        while True:
            seen_local = notifier.generation
            seen_version = self._data_version()
            record = self.get(task_id)
            if record is not None and record.state in states:
                return record
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return record
                with notifier.condition:
                    if notifier.generation == seen_local:
                        notifier.condition.wait(pause if remaining is None else min(pause, remaining))
                if notifier.generation != seen_local or self._data_version() != seen_version:
                    pause = MIN_WAIT
                    break
                pause = min(pause * 2, self.polling_interval)

    def _data_version(self) -> int:
        with self._session("check for changes") as connection:
            value: int = connection.execute("PRAGMA data_version").fetchone()[0]
        return value

    def forget(self, task_id: str) -> None:
        """Delete the record of ``task_id``; does nothing when there is none."""
        with self._session("forget a result") as connection:
            connection.execute("DELETE FROM celeriac_results WHERE task_id = ?", (task_id,))

    # -- counters ------------------------------------------------------------------------------

    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """Atomically add ``amount`` to counter ``key`` (0 when new or expired); ``expires``
        (re)sets its lifetime. One statement, so concurrent processes never lose an update."""
        now = time.time()
        parameters = {
            "key": key,
            "amount": amount,
            "now": now,
            "expires_at": None if expires is None else now + expires,
        }
        with self._session("increment a counter") as connection:
            value: int = connection.execute(_INCR, parameters).fetchone()[0]
        return value

    # -- housekeeping --------------------------------------------------------------------------

    def cleanup(self) -> int:
        """Delete expired records and counters now; returns how many."""
        now = time.time()
        with self._session("delete expired results", write=True) as connection:
            records = connection.execute("DELETE FROM celeriac_results WHERE expires_at <= ?", (now,)).rowcount
            counters = connection.execute("DELETE FROM celeriac_counters WHERE expires_at <= ?", (now,)).rowcount
        return records + counters

    def close(self) -> None:
        """Close the connection; later calls raise :class:`SQLiteResultStoreError`. Idempotent."""
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            connection.close()

    def info(self) -> dict[str, Any]:
        """The store class, file and SQLite version."""
        return {"result_store": type(self).__name__, "path": str(self.path), "sqlite_version": sqlite3.sqlite_version}

    # -- leases and small values (beat) ------------------------------------------------------

    def _beat_session(
        self, action: str, *, write: bool = False
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A session on a file that has the lease and value tables (created on first use)."""
        if not getattr(self, "_beat_tables_ready", False):
            with self._session("create the lease tables", write=True) as connection:
                for statement in _BEAT_SCHEMA:
                    connection.execute(statement)
            self._beat_tables_ready = True
        return self._session(action, write=write)

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take (free or expired) or renew (same owner) the lease in one upsert statement."""
        now = time.time()
        parameters = {"name": name, "owner": owner, "now": now, "expires_at": now + ttl}
        with self._beat_session("take a lease") as connection:
            row = connection.execute(_ACQUIRE_LEASE, parameters).fetchone()
        return row is not None

    def release_lease(self, name: str, owner: str) -> bool:
        """Delete the lease if ``owner`` holds it (and it has not expired)."""
        with self._beat_session("release a lease") as connection:
            cursor = connection.execute(
                "DELETE FROM celeriac_leases WHERE name = ? AND owner = ? AND expires_at > ?",
                (name, owner, time.time()),
            )
            return cursor.rowcount > 0

    def lease_owner(self, name: str) -> str | None:
        """The holder of the unexpired lease ``name``, or ``None``."""
        with self._beat_session("read a lease") as connection:
            row = connection.execute(
                "SELECT owner FROM celeriac_leases WHERE name = ? AND expires_at > ?", (name, time.time())
            ).fetchone()
        return None if row is None else str(row[0])

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        with self._beat_session("read a value") as connection:
            row = connection.execute("SELECT value FROM celeriac_values WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str, *, lease: str | None = None, owner: str | None = None) -> bool:
        """Upsert the value; with ``lease``/``owner`` inside one write transaction that checks the lease."""
        with self._beat_session("store a value", write=True) as connection:
            if lease is not None:
                held = connection.execute(
                    "SELECT 1 FROM celeriac_leases WHERE name = ? AND owner = ? AND expires_at > ?",
                    (lease, owner, time.time()),
                ).fetchone()
                if held is None:
                    return False
            connection.execute(
                "INSERT INTO celeriac_values (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        return True

    def delete_meta(self, key: str) -> bool:
        """Delete the value stored under ``key``; returns whether there was one."""
        with self._beat_session("delete a value", write=True) as connection:
            return connection.execute("DELETE FROM celeriac_values WHERE key = ?", (key,)).rowcount > 0


_BEAT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS celeriac_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS celeriac_values (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
#: Insert, or take over an expired lease, or renew our own; a row comes back only if we hold it.
_ACQUIRE_LEASE = (
    "INSERT INTO celeriac_leases (name, owner, expires_at) VALUES (:name, :owner, :expires_at)"
    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE celeriac_leases.owner = excluded.owner OR celeriac_leases.expires_at <= :now"
    " RETURNING owner"
)
