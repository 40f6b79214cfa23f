"""The worker: one consumer feeding an execution pool (see :class:`Worker`)."""

from __future__ import annotations

from ._worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
