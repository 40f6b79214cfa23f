"""Per-task rate limits of one worker (``@app.task(rate_limit="10/s")``).

A limit is a number of task *starts* per second, minute or hour (``"10/s"``, ``"100/m"``,
``"5/h"``; a bare number means per second). Starts are spaced evenly, ``1/rate`` apart, with no
burst (Celery's token bucket of capacity 1), counted per task name on this worker.

**A message that must wait goes back to the broker, not into the worker's memory.** When a
message arrives before its task's next free start time, the worker reserves that start time
for it, publishes it again with the broker's delayed delivery (ETA = the reserved time, and a
header ``x-celeriac-rate-slot: <worker token>:<time>`` naming the reservation), and acks the
original. When it comes back to the same worker at its time it runs without taking another
start; any other worker (or this one after a restart: the token is per worker run) treats it
as a new arrival. So a flood of rate-limited messages never fills the prefetch window nor a
pool slot, other tasks keep running at full speed, and each waiting message is re-published
once. The cost is one publish and one ack per delayed message; a message can be delivered
twice if the worker dies between the two (at-least-once, as everywhere).

The alternative -- holding waiting messages in a per-task queue inside the worker -- would
either count them against the prefetch limit (then enough of them stall every other task) or
not (then a flood is held unbounded in memory and lost to other workers); both fail the
"no starvation, no hoarding" rule.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any

__all__ = ["RATE_SLOT_HEADER", "RateLimiter", "RateLimits", "parse_rate"]

#: Header marking a message re-published to wait for a start time reserved on one worker.
RATE_SLOT_HEADER = "x-celeriac-rate-slot"
#: A reserved message that comes back this early (seconds) runs anyway.
_EARLY = 0.02
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(value: str | float | None, task: str = "task") -> float | None:
    """Starts per second of a limit (``"10/s"``, ``"100/m"``, ``"5/h"``, ``10``); ``None`` or
    0 means no limit. Raises ``ValueError`` naming ``task`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"rate_limit of {task}: expected a rate like '10/s', '100/m' or '5/h', got {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        match = _RATE.match(str(value))
        if match is None:
            raise ValueError(f"rate_limit of {task}: expected a rate like '10/s', '100/m' or '5/h', got {value!r}")
        rate = float(match.group(1)) / _UNITS[match.group(2) or "s"]
    if rate < 0:
        raise ValueError(f"rate_limit of {task}: a rate cannot be negative, got {value!r}")
    return rate or None


class RateLimiter:
    """Evenly spaced starts for one task name: ``reserve(now)`` returns the start time of the
    next caller and moves the next free time on by ``1 / rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self.next_free = 0.0

    def reserve(self, now: float) -> float:
        start = max(now, self.next_free)
        self.next_free = start + self.interval
        return start


class RateLimits:
    """The limiters of one worker run, by task name."""

    def __init__(self) -> None:
        #: Identifies reservations made by this worker run.
        self.token = uuid.uuid4().hex[:16]
        self._limiters: dict[str, tuple[Any, RateLimiter]] = {}
        self._lock = threading.Lock()
        self.deferred = 0

    def admit(
        self, task: str, limit: str | float | None, slot: Any, now: float | None = None
    ) -> tuple[float, str] | None:
        """``None`` if a message for ``task`` may start now; otherwise ``(when, header)``: publish
        it again to arrive at ``when`` (a wall-clock timestamp) with ``header`` as its
        :data:`RATE_SLOT_HEADER`. ``slot`` is the header the message arrived with, if any."""
        now = time.time() if now is None else now
        with self._lock:
            limiter = self._limiter(task, limit)
            if limiter is None:
                return None
            reserved = self._reservation(slot)
            if reserved is not None:  # it waited in the broker for a start reserved here
                if reserved <= now + _EARLY:
                    return None
                self.deferred += 1
                return reserved, str(slot)
            start = limiter.reserve(now)
            if start <= now:
                return None
            self.deferred += 1
            return start, f"{self.token}:{start!r}"

    def _limiter(self, task: str, limit: str | float | None) -> RateLimiter | None:
        known = self._limiters.get(task)
        if known is not None and known[0] == limit:
            return known[1]
        rate = parse_rate(limit, task)
        if rate is None:
            self._limiters.pop(task, None)
            return None
        limiter = RateLimiter(rate)
        if known is not None:  # the limit changed: keep the schedule already promised
            limiter.next_free = known[1].next_free
        self._limiters[task] = (limit, limiter)
        return limiter

    def _reservation(self, slot: Any) -> float | None:
        if not isinstance(slot, str):
            return None
        token, _, when = slot.partition(":")
        if token != self.token:
            return None
        try:
            return float(when)
        except ValueError:
            return None
