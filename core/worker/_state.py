"""Revoked task ids kept across worker restarts (``worker_state_db`` / ``--statedb``).

The file is JSON, ``{"revoked": {"<task id>": <unix time revoked>, ...}}``, rewritten
atomically (temporary file + rename). Writes are debounced: :meth:`RevokeStore.save` only
marks the set changed, and a background timer writes it at most once every
``_WRITE_INTERVAL`` seconds (so a burst of revokes costs one write, never in the mailbox
thread); :meth:`RevokeStore.close` (worker stop) and interpreter exit write what is pending.

Revoked ids expire ``REVOKE_EXPIRES`` seconds (3 hours, as in Celery) after they were
revoked: they are dropped when the file is read and written, and from the worker's memory by
:func:`expire` (the mailbox calls it).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from ..exceptions import ConfigError

__all__ = ["REVOKE_EXPIRES", "RevokeStore", "expire"]

logger = logging.getLogger("celeriac.worker")

#: Seconds a revoked id is remembered (Celery's ``REVOKE_EXPIRES``).
REVOKE_EXPIRES = 3 * 3600.0
#: At most one write of the state file per this many seconds.
_WRITE_INTERVAL = 1.0

_open_stores: weakref.WeakSet[RevokeStore] = weakref.WeakSet()


def _fresh(revoked: Mapping[str, float], now: float | None = None) -> dict[str, float]:
    """The ids of ``revoked`` that have not expired (a copy, safe against concurrent changes)."""
    cutoff = (time.time() if now is None else now) - REVOKE_EXPIRES
    for _ in range(5):
        try:
            items = list(revoked.items())
        except RuntimeError:  # changed by another thread while copied: try again
            continue
        return {task_id: when for task_id, when in items if when >= cutoff}
    return {task_id: when for task_id, when in dict(revoked).items() if when >= cutoff}


def expire(revoked: MutableMapping[str, float], now: float | None = None) -> int:
    """Drop the ids revoked more than ``REVOKE_EXPIRES`` seconds ago; how many were dropped."""
    cutoff = (time.time() if now is None else now) - REVOKE_EXPIRES
    old = [task_id for task_id, when in list(revoked.items()) if when < cutoff]
    for task_id in old:
        revoked.pop(task_id, None)
    return len(old)


class RevokeStore:
    """The state file of one worker."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # guards the fields below
        self._write_lock = threading.Lock()  # one write at a time
        self._pending: Mapping[str, float] | None = None
        self._timer: threading.Timer | None = None
        self._last_write = float("-inf")
        self._closed = False
        directory = self.path.parent
        if not directory.is_dir():
            raise ConfigError(f"worker_state_db: directory {str(directory)!r} does not exist; create it first")
        _open_stores.add(self)

    def load(self) -> dict[str, float]:
        """The ids stored and not expired, oldest first; ``{}`` when the file does not exist or
        is damaged."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"worker_state_db: cannot read {str(self.path)!r}: {exc}") from None
        try:
            data = json.loads(text)
            revoked = data["revoked"]
            items = sorted(((str(k), float(v)) for k, v in revoked.items()), key=lambda item: item[1])
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("worker_state_db %s is damaged; starting with no revoked ids", self.path)
            return {}
        return _fresh(dict(items))

    def save(self, revoked: Mapping[str, float]) -> None:
        """Write ``revoked`` (its state when the write happens) soon, from a background timer:
        at most once per ``_WRITE_INTERVAL`` seconds. After :meth:`close` it writes at once."""
        with self._lock:
            self._pending = revoked
            if self._closed:
                pass
            elif self._timer is not None:
                return  # the write already scheduled will see this change
            else:
                delay = max(0.0, self._last_write + _WRITE_INTERVAL - time.monotonic())
                self._timer = threading.Timer(delay, self._on_timer)
                self._timer.name = "celeriac-statedb"
                self._timer.daemon = True
                self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        """Write the pending change now, if there is one (errors are logged, not raised)."""
        self._flush(from_timer=False)

    def close(self) -> None:
        """Write what is pending; later saves are written at once."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()
        _open_stores.discard(self)

    def _on_timer(self) -> None:
        self._flush(from_timer=True)

    def _flush(self, *, from_timer: bool) -> None:
        with self._write_lock:
            with self._lock:
                if from_timer:
                    self._timer = None
                revoked, self._pending = self._pending, None
                self._last_write = time.monotonic()
            if revoked is not None:
                self._write(_fresh(revoked))

    def _write(self, revoked: Mapping[str, float]) -> None:
        data = json.dumps({"revoked": dict(revoked)}, separators=(",", ":"))
        try:
            handle, temporary = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(data)
            os.replace(temporary, self.path)
        except OSError as exc:
            logger.error("could not write worker_state_db %s: %s", self.path, exc)


@atexit.register
def _flush_all() -> None:
    for store in list(_open_stores):
        store.close()
