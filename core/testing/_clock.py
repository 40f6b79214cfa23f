"""A virtual clock: time that moves only when a test says so."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["VirtualClock"]

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


class VirtualClock:
    """A clock for :class:`celeriac.beat.Beat` (or your own code) that you move by hand.

    ``now()`` stays put until :meth:`advance` or :meth:`set` moves it, so a schedule,
    catch-up after downtime or a hand-over between beats is tested without sleeping::

        clock = VirtualClock("2026-03-29T00:00:00+01:00")
        beat = Beat(app, clock=clock)
        clock.advance(minutes=5)
        sent = beat.tick()

    ``wait`` (what a running beat sleeps on) returns as soon as the clock moves or
    :meth:`wake` is called, and otherwise after at most ``real_wait`` real seconds, so a beat
    thread keeps renewing its lease while the test holds the time still.
    """

    def __init__(self, start: datetime | str | None = None, *, real_wait: float = 1.0) -> None:
        self._now = _aware(start) if start is not None else DEFAULT_START
        self.real_wait = real_wait
        self._condition = threading.Condition()
        self._generation = 0

    def __repr__(self) -> str:
        return f"VirtualClock({self._now.isoformat()})"

    def now(self) -> datetime:
        """The virtual time, aware, in UTC."""
        with self._condition:
            return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` plus any :class:`~datetime.timedelta` keywords
        (``minutes=5``, ``hours=1``, ``days=2``); returns the new time."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError(f"a clock only moves forward; use set() to jump, not advance({step})")
        with self._condition:
            self._now += step
            self._generation += 1
            self._condition.notify_all()
            return self._now

    def set(self, moment: datetime | str) -> datetime:
        """Jump to ``moment`` (an aware datetime or ISO text; naive means UTC)."""
        with self._condition:
            self._now = _aware(moment)
            self._generation += 1
            self._condition.notify_all()
            return self._now

    def wait(self, seconds: float) -> None:
        """Return when the clock moves, on :meth:`wake`, or after ``min(seconds, real_wait)`` real seconds."""
        with self._condition:
            seen = self._generation
            self._condition.wait_for(lambda: self._generation != seen, timeout=max(min(seconds, self.real_wait), 0.0))

    def wake(self) -> None:
        """End every :meth:`wait` in progress."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()


def _aware(moment: datetime | str) -> datetime:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
