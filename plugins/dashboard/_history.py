"""Task history: the records the Tasks pages and API list, filter, sort and page through.

:class:`MemoryHistory` keeps at most ``max_tasks`` records in memory; :class:`SQLiteHistory`
keeps them in a SQLite file, so history survives a dashboard restart, bounded by count and age.
A record is the JSON-able dict of one task (see :data:`FIELDS`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FIELDS", "SORT_KEYS", "History", "MemoryHistory", "Query", "SQLiteHistory", "open_history"]

#: The fields of a task record.
FIELDS: tuple[str, ...] = (
    "uuid",
    "name",
    "state",
    "worker",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "runtime",
    "retries",
    "eta",
    "expires",
    "queue",
    "parent_id",
    "root_id",
    "children",
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
    "timestamp",
)
#: Columns a task list can be sorted by.
SORT_KEYS: tuple[str, ...] = ("timestamp", "name", "state", "worker", "runtime", "received", "started", "uuid")
_FINAL = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}


@dataclass(frozen=True, slots=True)
class Query:
    """Filters, sort order and page of a task list."""

    state: str | None = None
    name: str | None = None
    worker: str | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None
    sort: str = "timestamp"
    descending: bool = True
    offset: int = 0
    limit: int = 50

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.state and record.get("state") != self.state:
            return False
        if self.name and record.get("name") != self.name:
            return False
        if self.worker and record.get("worker") != self.worker:
            return False
        stamp = record.get("timestamp") or 0.0
        if self.since is not None and stamp < self.since:
            return False
        if self.until is not None and stamp > self.until:
            return False
        if self.search:
            needle = self.search.lower()
            haystack = " ".join(str(record.get(key) or "") for key in ("args", "kwargs", "result", "uuid"))
            if needle not in haystack.lower():
                return False
        return True


def normalize(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record with exactly :data:`FIELDS`, JSON-able values."""
    out: dict[str, Any] = {}
    for key in FIELDS:
        value = record.get(key)
        if key == "children":
            value = [str(child) for child in (value or [])]
        elif value is not None and not isinstance(value, str | int | float | bool):
            value = repr(value)
        out[key] = value
    if out["worker"] is None and record.get("hostname"):
        out["worker"] = str(record["hostname"])
    out["state"] = out["state"] or "PENDING"
    return out


class History:
    """Interface of the history stores."""

    def put(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def get(self, task_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def query(self, query: Query) -> tuple[int, list[dict[str, Any]]]:
        """``(total matching, the page)``."""
        raise NotImplementedError

    def names(self) -> list[str]:
        """Task names seen, sorted."""
        raise NotImplementedError

    def counts(self) -> dict[tuple[str, str], int]:
        """How many records are in each ``(task name, current state)`` (name ``unknown`` if none)."""
        raise NotImplementedError

    def prune(self) -> int:
        """Drop what is over the bounds; return how many records went."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


def _sort_key(key: str) -> Any:
    def read(record: Mapping[str, Any]) -> tuple[int, Any]:
        value = record.get(key)
        return (0, "") if value is None else (1, value)

    return read


class MemoryHistory(History):
    """The newest ``max_tasks`` records in memory (oldest first out)."""

    def __init__(self, max_tasks: int = 10000, max_age: float | None = None) -> None:
        self.max_tasks = max_tasks
        self.max_age = max_age
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, record: Mapping[str, Any]) -> None:
        row = normalize(record)
        with self._lock:
            self._records[row["uuid"]] = row
            self._records.move_to_end(row["uuid"])
            while len(self._records) > self.max_tasks:
                self._records.popitem(last=False)

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._records.get(task_id)
            return dict(row) if row else None

    def query(self, query: Query) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            rows = [row for row in self._records.values() if query.matches(row)]
        rows.sort(key=_sort_key(query.sort), reverse=query.descending)
        return len(rows), [dict(row) for row in rows[query.offset : query.offset + query.limit]]

    def names(self) -> list[str]:
        with self._lock:
            return sorted({row["name"] for row in self._records.values() if row["name"]})

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            found = Counter((row["name"] or "unknown", row["state"]) for row in self._records.values())
        return dict(found)

    def prune(self) -> int:
        if self.max_age is None:
            return 0
        cutoff = time.time() - self.max_age
        with self._lock:
            old = [key for key, row in self._records.items() if _expired(row, cutoff)]
            for key in old:
                del self._records[key]
        return len(old)

    def __len__(self) -> int:
        return len(self._records)


def _expired(row: Mapping[str, Any], cutoff: float) -> bool:
    return row["state"] in _FINAL and (row.get("timestamp") or 0.0) < cutoff


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    uuid TEXT PRIMARY KEY,
    name TEXT, state TEXT, worker TEXT,
    timestamp REAL, received REAL, started REAL, runtime REAL,
    search TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_timestamp ON tasks (timestamp);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks (name);
"""


class SQLiteHistory(History):
    """Records in a SQLite file (WAL), at most ``max_tasks``, finished ones at most ``max_age`` s old."""

    def __init__(self, path: str | Path, max_tasks: int = 10000, max_age: float | None = 7 * 86400.0) -> None:
        self.path = Path(path)
        self.max_tasks = max_tasks
        self.max_age = max_age
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            from celeriac import ConfigError

            raise ConfigError(f"[celeriac.dashboard] history_db: cannot open {str(self.path)!r}: {exc}") from None
        self._writes = 0

    def put(self, record: Mapping[str, Any]) -> None:
        row = normalize(record)
        search = " ".join(str(row.get(key) or "") for key in ("args", "kwargs", "result", "uuid")).lower()
        values = (
            row["uuid"],
            row["name"],
            row["state"],
            row["worker"],
            row["timestamp"],
            row["received"],
            row["started"],
            row["runtime"],
            search,
            json.dumps(row),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            self._writes += 1
            due = self._writes % 500 == 0
        if due:
            self.prune()

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._db.execute("SELECT data FROM tasks WHERE uuid = ?", (task_id,)).fetchone()
        return json.loads(found[0]) if found else None

    def query(self, query: Query) -> tuple[int, list[dict[str, Any]]]:
        where, params = _where(query)
        column = query.sort if query.sort in SORT_KEYS else "timestamp"
        order = "DESC" if query.descending else "ASC"
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM tasks{where}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT data FROM tasks{where} ORDER BY {column} IS NULL {order}, {column} {order} LIMIT ? OFFSET ?",
                [*params, query.limit, query.offset],
            ).fetchall()
        return int(total), [json.loads(row[0]) for row in rows]

    def names(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT name FROM tasks WHERE name IS NOT NULL ORDER BY name").fetchall()
        return [row[0] for row in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT coalesce(name, 'unknown'), state, count(*) FROM tasks GROUP BY 1, 2"
            ).fetchall()
        return {(str(name), str(state)): int(count) for name, state, count in rows}

    def prune(self) -> int:
        removed = 0
        with self._lock:
            if self.max_age is not None:
                cutoff = time.time() - self.max_age
                removed += self._db.execute(
                    "DELETE FROM tasks WHERE state IN ('SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED') AND timestamp < ?",
                    (cutoff,),
                ).rowcount
            removed += self._db.execute(
                "DELETE FROM tasks WHERE uuid IN (SELECT uuid FROM tasks ORDER BY timestamp DESC LIMIT -1 OFFSET ?)",
                (self.max_tasks,),
            ).rowcount
        return removed

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM tasks").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _where(query: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("state", "name", "worker"):
        value = getattr(query, column)
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("timestamp >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("timestamp <= ?")
        params.append(query.until)
    if query.search:
        clauses.append("instr(search, ?) > 0")
        params.append(query.search.lower())
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def open_history(path: str | None, max_tasks: int, max_age: float | None) -> History:
    """The store the config asks for: SQLite at ``path`` (``sqlite:///`` prefix allowed), else memory."""
    if path:
        for prefix in ("sqlite:///", "sqlite://"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        return SQLiteHistory(path, max_tasks, max_age)
    return MemoryHistory(max_tasks, max_age)
