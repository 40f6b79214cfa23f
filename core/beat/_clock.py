"""The clock beat reads and sleeps on; tests swap in :class:`celeriac.testing.VirtualClock`."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What beat needs from a clock: the time, and a sleep that can be cut short."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; may return early (after :meth:`wake`, or whenever it likes)."""
        ...

    def wake(self) -> None:
        """End every :meth:`wait` in progress now."""
        ...


class SystemClock:
    """Wall-clock time; ``wait`` sleeps on a condition so ``wake`` ends it at once."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, seconds: float) -> None:
        with self._condition:
            seen = self._generation
            self._condition.wait_for(lambda: self._generation != seen, timeout=max(seconds, 0.0))

    def wake(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
