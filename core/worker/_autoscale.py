"""Autoscaling: grow the pool under a backlog, shrink it when idle (``worker_autoscale``).

The worker starts one :class:`Autoscaler` thread when ``autoscale = [min, max]`` is set. Every
:attr:`Autoscaler.interval` seconds it looks at the backlog -- messages reserved by this worker
and not started, plus messages ready on the queues it consumes -- and at how many pool slots are
busy:

* all slots busy and a backlog waiting: grow by the backlog, up to ``max``;
* spare slots and no backlog for :attr:`Autoscaler.keepalive` seconds: shrink to what is busy,
  down to ``min`` (busy slots finish their task first).

The pool starts at ``min`` (0 counts as 1: a pool keeps one slot). Remote control changes the
bounds with :meth:`Autoscaler.update`; :meth:`Autoscaler.info` is what ``stats`` shows. Pools
that cannot grow (``solo``) are left alone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError
from ..pool import Pool

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Autoscaler"]

logger = logging.getLogger("celeriac.worker")


class Autoscaler:
    """Keeps ``worker.pool`` between ``low`` and ``high`` slots; see the module docstring."""

    #: Seconds between two looks at the backlog.
    interval: float = 1.0
    #: Seconds the pool must have had spare slots and no backlog before it shrinks.
    keepalive: float = 30.0

    def __init__(self, worker: Worker, low: int, high: int) -> None:
        self.worker = worker
        self.low, self.high = _check_bounds(low, high)
        self._lock = threading.RLock()
        self._busy_at = time.monotonic()  # last time the pool was full or messages waited
        self._last_scale: tuple[str, int, float] | None = None

    # -- remote control ---------------------------------------------------------------------

    def update(self, max: int | None = None, min: int | None = None) -> dict[str, Any]:  # noqa: A002
        """Change the bounds (``autoscale`` remote-control command) and move the pool inside
        them at once; returns :meth:`info`."""
        with self._lock:
            self.low, self.high = _check_bounds(self.low if min is None else min, self.high if max is None else max)
            size = self._size()
            if size > self.high:
                self._shrink(size - self.high, "the maximum was lowered")
            elif size < self.low:
                self._grow(self.low - size, "the minimum was raised")
        return self.info()

    def info(self) -> dict[str, Any]:
        """``max``, ``min``, ``current`` pool size and ``qty`` (Celery's names) plus the last change."""
        size = self._size()
        info: dict[str, Any] = {"max": self.high, "min": self.low, "current": size, "qty": size}
        if self._last_scale is not None:
            direction, n, at = self._last_scale
            info["last"] = {"direction": direction, "n": n, "at": at}
        return info

    # -- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        """Scale until the worker stops (the worker runs this in a thread)."""
        worker = self.worker
        pool = worker.pool
        if pool is not None and (type(pool).grow is Pool.grow or type(pool).shrink is Pool.shrink):
            logger.warning("autoscale is off: the %s pool cannot grow or shrink", pool.name)
            return
        try:
            with self._lock:
                size = self._size()
                if size > self.high:
                    self._shrink(size - self.high, "autoscale starts at most at max")
                elif size > self.low:
                    self._shrink(size - self.low, "autoscale starts at min")
                elif size < self.low:
                    self._grow(self.low - size, "autoscale starts at min")
        except NotImplementedError as exc:
            logger.warning("autoscale is off: %s", exc)
            return
        while not worker._stopping.wait(self.interval):
            try:
                self.scale()
            except NotImplementedError as exc:
                logger.warning("autoscale is off: %s", exc)
                return
            except Exception:
                logger.exception("autoscale: internal error; trying again in %.1fs", self.interval)

    def scale(self) -> None:
        """One look at the backlog: grow, shrink or leave the pool alone."""
        worker = self.worker
        with worker._cond:
            reserved, active = len(worker._reserved), len(worker._active)
        backlog = reserved + self._queued()
        now = time.monotonic()
        with self._lock:
            size = self._size()
            if backlog and active >= size:
                self._busy_at = now
                if size < self.high:
                    self._grow(min(backlog, self.high - size), f"{backlog} message(s) waiting")
            elif backlog or active >= size:
                self._busy_at = now
            elif size > self.low and now - self._busy_at >= self.keepalive:
                target = max(self.low, active, 1)
                if target < size:
                    self._shrink(size - target, f"idle for {now - self._busy_at:.1f}s")
                self._busy_at = now

    def _queued(self) -> int:
        """Messages ready on the consumed queues (0 when the broker cannot tell)."""
        transport = self.worker.transport
        if transport is None:
            return 0
        total = 0
        for queue in self.worker.queues:
            try:
                total += transport.queue_length(queue)
            except Exception as exc:
                logger.debug("autoscale: cannot read the length of %s: %s", queue, exc)
        return total

    def _size(self) -> int:
        pool = self.worker.pool
        return pool.size if pool is not None else self.worker.concurrency

    def _grow(self, n: int, why: str) -> None:
        pool = self.worker.pool
        if pool is None or n < 1:
            return
        self._last_scale = ("up", n, time.time())  # before: whoever sees the new size sees why
        pool.grow(n)
        logger.info("autoscale: pool grown by %d to %d (%s)", n, pool.size, why)
        with self.worker._cond:
            self.worker._cond.notify_all()  # the consumer may fetch more now

    def _shrink(self, n: int, why: str) -> None:
        pool = self.worker.pool
        if pool is None or n < 1:
            return
        self._last_scale = ("down", n, time.time())
        pool.shrink(n)
        logger.info("autoscale: pool shrunk by %d to %d (%s)", n, pool.size, why)


def _check_bounds(low: int, high: int) -> tuple[int, int]:
    """``(min, max)`` checked; a min of 0 (``--autoscale 10``) means 1: a pool keeps one slot."""
    if any(isinstance(n, bool) or not isinstance(n, int) for n in (low, high)) or high < 1 or high < max(low, 0):
        raise ConfigError(
            f"worker.autoscale: expected [min, max] with 0 <= min <= max and max >= 1, got min={low!r} max={high!r}"
        )
    return max(int(low), 1), int(high)
