"""What every pool does around a process's life: ``process_init`` at the start and, once, the
shutdown callable it returned (the worker's fires ``worker_process_shutdown``) at the end."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import cast

__all__ = ["ProcessLifecycle"]

logger = logging.getLogger("celeriac.pool")


class ProcessLifecycle:
    """Call ``process_init`` now; :meth:`shutdown` later calls what it returned, at most once."""

    __slots__ = ("_finish", "_lock")

    def __init__(self, process_init: Callable[[], None]) -> None:
        # the worker's process_init returns the shutdown callable; a bare one returns None
        finish = cast(Callable[[], object], process_init)()
        self._finish: Callable[[int], object] | None = finish if callable(finish) else None
        self._lock = threading.Lock()

    def shutdown(self, exitcode: int = 0) -> None:
        """Fire the shutdown once; a failure is logged, never raised (the process is exiting)."""
        with self._lock:
            finish, self._finish = self._finish, None
        if finish is None:
            return
        try:
            finish(exitcode)
        except Exception:
            logger.exception("the pool's process shutdown (worker_process_shutdown) failed")
