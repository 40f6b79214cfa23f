"""Revoked task ids kept across worker restarts (``worker_state_db`` / ``--statedb``).

The file is JSON, ``{"revoked": {"<task id>": <unix time revoked>, ...}}``, rewritten
atomically (temporary file + rename) whenever the set changes; at most the newest
``limit`` ids are kept.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from ..exceptions import ConfigError

__all__ = ["RevokeStore"]

logger = logging.getLogger("celeriac.worker")


class RevokeStore:
    """The state file of one worker."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        directory = self.path.parent
        if not directory.is_dir():
            raise ConfigError(f"worker_state_db: directory {str(directory)!r} does not exist; create it first")

    def load(self) -> dict[str, float]:
        """The ids stored, oldest first; ``{}`` when the file does not exist or is damaged."""
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
        return dict(items)

    def save(self, revoked: Mapping[str, float]) -> None:
        """Replace the file's contents with ``revoked`` (errors are logged, not raised)."""
        data = json.dumps({"revoked": dict(revoked)}, separators=(",", ":"))
        with self._lock:
            try:
                handle, temporary = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
                with os.fdopen(handle, "w", encoding="utf-8") as file:
                    file.write(data)
                os.replace(temporary, self.path)
            except OSError as exc:
                logger.error("could not write worker_state_db %s: %s", self.path, exc)
