"""Opening the broker file: URL, options, pragmas, schema, and errors turned into one line.

A :class:`Database` is one ``sqlite3`` connection guarded by a lock, so the threads of one
transport (consumer, pool threads acking, lease keeper) take turns within the process instead
of meeting SQLite's sleep-based busy handler. Every statement runs inside
:meth:`Database.connection` or :meth:`Database.transaction`, which turn ``sqlite3`` errors into
:class:`SQLiteBrokerError` naming the file and what to do. A process that forks gets a fresh
connection on first use (a connection must not cross ``fork``).

:class:`Notifier` is shared by every transport on one file in this process: writers bump it
after a commit, so a fetch blocked in the same process wakes at once instead of at its next
poll.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import celeriac

__all__ = [
    "DEFAULT_FILE",
    "MIN_SQLITE",
    "MIN_WAIT",
    "Database",
    "Notifier",
    "Settings",
    "SQLiteBrokerError",
    "database_path",
    "decode_envelope",
    "dumps_data",
    "parse_settings",
    "shared_notifier",
]

#: The file ``sqlite://`` and ``sqlite:///`` (no path) mean, in the current directory.
DEFAULT_FILE = "celeriac.db"
#: ``UPDATE ... RETURNING`` needs 3.35.
MIN_SQLITE = (3, 35, 0)
#: The first idle wait (seconds) of a fetch or subscription; doubled while idle up to ``polling_interval``.
MIN_WAIT = 0.001
#: Bumped when the tables change shape; a file from another version is refused, not misread.
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- first in first out; never reused, so tags stay unique
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,            -- 0-9, higher first
    not_before REAL,                      -- unix time a delayed message becomes ready; NULL once due
    owner TEXT,                           -- the transport holding the lease; NULL when not leased
    lease_until REAL,                     -- unix time the lease ends (when owner is set)
    delivery_count INTEGER NOT NULL DEFAULT 0,
    published_at REAL NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers TEXT NOT NULL,                -- JSON
    properties TEXT NOT NULL              -- JSON
);
CREATE INDEX IF NOT EXISTS celeriac_messages_ready
    ON celeriac_messages (queue, priority DESC, id) WHERE owner IS NULL AND not_before IS NULL;
CREATE INDEX IF NOT EXISTS celeriac_messages_delayed
    ON celeriac_messages (not_before) WHERE not_before IS NOT NULL;
CREATE INDEX IF NOT EXISTS celeriac_messages_leased
    ON celeriac_messages (lease_until) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_broadcasts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- a subscription remembers the last id it saw
    channel TEXT NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers TEXT NOT NULL,
    properties TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_broadcasts_channel ON celeriac_broadcasts (channel, id);
CREATE INDEX IF NOT EXISTS celeriac_broadcasts_created ON celeriac_broadcasts (created_at);
"""


#: Connections inherited across ``fork``: never used or closed by the child (closing one could
#: checkpoint or unlock on the parent's behalf), just kept from the garbage collector.
_abandoned: list[sqlite3.Connection] = []


class SQLiteBrokerError(celeriac.TransportError, celeriac.HandledError):
    """The broker file cannot be used right now (locked, corrupt, unreadable, closed).

    A :class:`~celeriac.TransportError` for code that handles broker failures, and a
    :class:`~celeriac.HandledError` so the CLI prints it as one line instead of a traceback.
    """


# -- URL and options ---------------------------------------------------------------------------


def database_path(url: str, setting: str = "broker_url") -> Path:
    """The absolute path of a ``sqlite://`` URL, relative paths taken from the current directory.

    ``sqlite:///relative.db`` -> ``./relative.db``; ``sqlite:////abs/path.db`` -> ``/abs/path.db``;
    ``sqlite://`` and ``sqlite:///`` -> ``./celeriac.db``. Raises :class:`~celeriac.ConfigError`
    for a host, a query string, ``:memory:`` or a directory that does not exist.
    """
    parts = urlsplit(url)
    expected = "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
    if parts.netloc:
        raise celeriac.ConfigError(f"{setting} {url!r}: a sqlite URL has no host; {expected}")
    if parts.query or parts.fragment:
        raise celeriac.ConfigError(
            f"{setting} {url!r}: a sqlite URL takes no ?query; put options in broker_transport_options"
        )
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if raw in (":memory:", ""):
        if raw == ":memory:":
            raise celeriac.ConfigError(
                f"{setting} {url!r}: an in-memory SQLite database cannot be shared between processes; "
                "use memory:// for one process or a file path"
            )
        raw = DEFAULT_FILE
    path = Path(raw).absolute()
    if path.is_dir():
        raise celeriac.ConfigError(f"{setting} {url!r}: {path} is a directory; name a file inside it, e.g. {expected}")
    if not path.parent.is_dir():
        raise celeriac.ConfigError(
            f"{setting} {url!r}: directory {path.parent} does not exist; create it or choose another path"
        )
    return path


@dataclass(frozen=True, slots=True)
class Settings:
    """The transport's options (``broker_transport_options``), checked."""

    visibility_timeout: float = 60.0
    busy_timeout: float = 5.0
    polling_interval: float = 0.05
    broadcast_ttl: float = 60.0
    synchronous: str = "NORMAL"


_SYNCHRONOUS = ("NORMAL", "FULL")


def parse_settings(options: Mapping[str, Any], prefix: str = "broker_transport_options") -> Settings:
    """Check ``options`` (unknown keys and bad values are a :class:`~celeriac.ConfigError`)."""
    defaults = Settings()
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise celeriac.ConfigError(
            f"{prefix}: unknown option {unknown[0]!r} for the sqlite transport; known: {', '.join(sorted(known))}"
        )

    def seconds(name: str, *, allow_zero: bool = False) -> float:
        value = options.get(name)
        if value is None:
            result: float = getattr(defaults, name)
            return result
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value < 0
            or (value == 0 and not allow_zero)
        ):
            kind = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
            raise celeriac.ConfigError(f"{prefix}.{name}: expected {kind}, got {value!r}")
        return float(value)

    synchronous = options.get("synchronous", defaults.synchronous)
    if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
        raise celeriac.ConfigError(
            f"{prefix}.synchronous: expected one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
        )
    return Settings(
        visibility_timeout=seconds("visibility_timeout"),
        busy_timeout=seconds("busy_timeout", allow_zero=True),
        polling_interval=max(seconds("polling_interval"), 0.001),
        broadcast_ttl=seconds("broadcast_ttl"),
        synchronous=synchronous.upper(),
    )


# -- rows ----------------------------------------------------------------------------------------


def dumps_data(value: Any) -> str:
    """Headers or properties as compact JSON (they are plain data by the Envelope contract)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def decode_envelope(
    body: bytes, content_type: str, content_encoding: str, headers: str, properties: str
) -> celeriac.Envelope:
    """An envelope from the columns of a ``celeriac_messages`` or ``celeriac_broadcasts`` row."""
    return celeriac.Envelope(
        body=bytes(body),
        content_type=content_type,
        content_encoding=content_encoding,
        headers=json.loads(headers),
        properties=json.loads(properties),
    )


# -- errors ------------------------------------------------------------------------------------


def describe_error(exc: sqlite3.Error, path: Path, busy_timeout: float, action: str) -> str:
    """One line saying what went wrong with ``path`` while doing ``action``, and what to do."""
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return (
            f"sqlite broker {path}: {action}: the database stayed locked by another connection for longer than "
            f"busy_timeout={busy_timeout:g}s; retry, find the process holding it, "
            "or raise broker_transport_options.busy_timeout"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return (
            f"sqlite broker {path}: {action}: the file is not a usable SQLite database ({text}); "
            "move it away (a fresh one is created) or point broker_url at another file"
        )
    if "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
        return (
            f"sqlite broker {path}: {action}: cannot open the file for writing ({text}); "
            "check that the file and its directory are writable by this user"
        )
    return f"sqlite broker {path}: {action}: {text}"


# -- the connection ----------------------------------------------------------------------------


class Database:
    """One connection to the broker file; use :meth:`connection` or :meth:`transaction`."""

    def __init__(self, path: Path, settings: Settings) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise celeriac.ConfigError(
                f"the sqlite transport needs SQLite >= {'.'.join(map(str, MIN_SQLITE))}; "
                f"this Python has {sqlite3.sqlite_version}"
            )
        self.path = path
        self.settings = settings
        self._lock = threading.Lock()
        self._closed = False
        self._connection: sqlite3.Connection | None = None
        self._pid = os.getpid()
        with self.connection("open"):
            pass

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            str(self.path), timeout=self.settings.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise celeriac.ConfigError(
                    f"sqlite broker {self.path}: cannot switch to WAL mode (got {mode!r}); "
                    "put the file on a local file system"
                )
            connection.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
            connection.execute("PRAGMA journal_size_limit = 67108864")
            self._create_schema(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        try:
            row = connection.execute("SELECT value FROM celeriac_meta WHERE key = 'transport_schema'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None
        if row is None:
            connection.executescript(
                "BEGIN IMMEDIATE;"
                + SCHEMA
                + f"INSERT OR IGNORE INTO celeriac_meta (key, value) VALUES ('transport_schema', '{SCHEMA_VERSION}');"
                + "COMMIT;"
            )
            row = connection.execute("SELECT value FROM celeriac_meta WHERE key = 'transport_schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            found = None if row is None else row[0]
            raise celeriac.ConfigError(
                f"sqlite broker {self.path}: the file holds transport schema version {found!r}, "
                f"this celeriac uses {SCHEMA_VERSION!r}; drain it with the celeriac that wrote it, or use another file"
            )

    @contextmanager
    def connection(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread alone; errors become :class:`SQLiteBrokerError`."""
        settings = self.settings
        if not self._lock.acquire(timeout=settings.busy_timeout * 2 + 1.0):
            raise SQLiteBrokerError(
                f"sqlite broker {self.path}: {action}: another thread of this process held the connection for "
                f"longer than {settings.busy_timeout * 2 + 1.0:g}s"
            )
        try:
            if self._closed:
                raise SQLiteBrokerError(f"sqlite broker {self.path}: {action}: the transport is closed")
            try:
                if self._connection is None or self._pid != os.getpid():
                    if self._connection is not None:
                        _abandoned.append(self._connection)  # inherited across fork
                    self._pid = os.getpid()
                    self._connection = self._open()
                yield self._connection
            except sqlite3.Error as exc:
                connection = self._connection
                if connection is not None and connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise SQLiteBrokerError(describe_error(exc, self.path, settings.busy_timeout, action)) from exc
        finally:
            self._lock.release()

    @contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock is taken up front, so the busy
        timeout applies and no deadlock can arise from upgrading a read lock)."""
        with self.connection(action) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the file (cheap: no I/O)."""
        with self.connection("check for changes") as connection:
            value: int = connection.execute("PRAGMA data_version").fetchone()[0]
            return value

    def close(self) -> None:
        """Close the connection; later use raises :class:`SQLiteBrokerError`. Idempotent."""
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
            if connection is not None and self._pid == os.getpid():
                connection.close()


# -- wakeups within one process ----------------------------------------------------------------


class Notifier:
    """A generation counter and condition shared by every transport on one file in this process."""

    __slots__ = ("__weakref__", "condition", "generation")

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.generation = 0

    def bump(self) -> None:
        """Something may have become fetchable: wake every waiter."""
        with self.condition:
            self.generation += 1
            self.condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds unless the generation moved past ``seen``."""
        with self.condition:
            if self.generation == seen and timeout > 0:
                self.condition.wait(timeout)


_notifiers: weakref.WeakValueDictionary[str, Notifier] = weakref.WeakValueDictionary()
_notifiers_lock = threading.Lock()


def shared_notifier(path: Path) -> Notifier:
    """The notifier of ``path`` in this process (lives while some transport holds it)."""
    with _notifiers_lock:
        notifier = _notifiers.get(str(path))
        if notifier is None:
            notifier = _notifiers[str(path)] = Notifier()
        return notifier
