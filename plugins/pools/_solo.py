"""The ``solo`` pool: every item runs inline, in the thread that submits it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from celeriac import Pool, TimeLimits
from celeriac.plugins.pools._lifecycle import ProcessLifecycle

__all__ = ["SoloPool"]

logger = logging.getLogger("celeriac.pool")


class SoloPool(Pool):
    """Run each item inline: ``submit`` calls the runner and then ``on_done``/``on_error``
    before it returns.

    The size is always 1, whatever ``concurrency`` is asked for (a worker's default
    concurrency is accepted and ignored). Time limits are **not enforced**: nothing can
    interrupt the thread that is running the item; use the ``threads`` pool for a soft limit
    and the ``processes`` pool for a hard one.
    """

    name: ClassVar[str] = "solo"
    runs_inline: ClassVar[bool] = True

    def __init__(self, concurrency: int = 1, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(concurrency, options)
        self.concurrency = 1
        self._runner: Callable[[Any], Any] | None = None
        self._lifecycle: ProcessLifecycle | None = None
        self._stopped = False
        self._running_in: int | None = None  # ident of the thread running an item, if any
        self._idle = threading.Condition()

    def start(self, runner: Callable[[Any], Any], process_init: Callable[[], None]) -> None:
        """Remember ``runner`` and call ``process_init`` once, in this thread."""
        if self._runner is not None:
            raise RuntimeError("the solo pool is already started")
        self._lifecycle = ProcessLifecycle(process_init)
        self._runner = runner

    def submit(
        self,
        item: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        *,
        time_limits: TimeLimits | None = None,
    ) -> None:
        """Run ``item`` now and call one of the callbacks; ``time_limits`` are ignored."""
        with self._idle:
            if self._runner is None:
                raise RuntimeError("the solo pool is not started; call start() first")
            if self._stopped:
                raise RuntimeError("the solo pool is stopped; it accepts no more items")
            if self._running_in is not None:
                raise RuntimeError("the solo pool is full: an item is already running")
            runner = self._runner
            self._running_in = threading.get_ident()
        try:
            try:
                result = runner(item)
            except BaseException as exc:
                outcome: tuple[Callable[[Any], None], Any] = (on_error, exc)
            else:
                outcome = (on_done, result)
        finally:
            with self._idle:
                self._running_in = None
                self._idle.notify_all()
        callback, value = outcome
        try:
            callback(value)
        except Exception:
            which = "on_done" if callback is on_done else "on_error"
            logger.exception("solo pool: the %s callback of an item raised; the pool carries on", which)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting items; wait up to ``timeout`` for an item running in another thread.

        Called from inside the running item (e.g. a signal handler), it cannot wait and
        returns False.
        """
        with self._idle:
            self._stopped = True
            if self._running_in == threading.get_ident():
                return False
            finished = self._idle.wait_for(lambda: self._running_in is None, timeout)
        if self._lifecycle is not None:
            self._lifecycle.shutdown()  # worker_process_shutdown, once, in this process
        return finished
