"""Schedules: when a periodic task is due.

A schedule answers one question: given the due time of the last run, when is the next one?
Every time is an aware :class:`~datetime.datetime`; what beat stores and compares is UTC.

* :class:`Interval` — every N seconds of real time, counted from the previous due time (so a
  late send does not shift later runs); daylight-saving changes do not affect it.
* :class:`Crontab` — a 5-field crontab expression in a time zone (croniter does the parsing;
  the ``beat`` extra). At a spring-forward gap a run in the skipped hour happens when the clock
  jumps; at a fall-back a fixed-hour run (``30 2 * * *``) happens once, while a run whose hour
  field is a wildcard (``0 * * * *``, ``*/15 * * * *``) happens in both repeated hours — what
  cron does.
* Anything else comes from the ``celeriac_beat_schedule`` hook: subclass :class:`Schedule`.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..exceptions import ConfigError

__all__ = ["Crontab", "Interval", "Schedule", "parse_duration", "zone"]

#: How many due times :meth:`Schedule.latest_due` steps through before it gives up.
MAX_STEPS = 100_000

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class Schedule(ABC):
    """The interface of every schedule (custom ones from plugins subclass it)."""

    @abstractmethod
    def next_after(self, last: datetime) -> datetime:
        """The first due time strictly after ``last`` (aware)."""

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        """The latest due time in ``(last, now]``, or ``None`` when none is.

        The default steps with :meth:`next_after`; schedules override it to jump.
        """
        latest = None
        due = self.next_after(last)
        for _ in range(MAX_STEPS):
            if due > now:
                return latest
            latest, due = due, self.next_after(due)
        raise RuntimeError(f"{self!r}: more than {MAX_STEPS} due times between {last} and {now}")


class Interval(Schedule):
    """Every ``seconds`` seconds of real time."""

    def __init__(self, seconds: float | timedelta) -> None:
        self.seconds = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not self.seconds > 0 or math.isinf(self.seconds):
            raise ValueError(f"an interval must be a positive number of seconds, got {seconds!r}")

    def __repr__(self) -> str:
        return f"Interval({self.seconds:g}s)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(("Interval", self.seconds))

    def next_after(self, last: datetime) -> datetime:
        return last + timedelta(seconds=self.seconds)

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        steps = math.floor((now - last).total_seconds() / self.seconds)
        return last + timedelta(seconds=self.seconds * steps) if steps >= 1 else None


class Crontab(Schedule):
    """A 5-field crontab expression (``minute hour day-of-month month day-of-week``) in ``timezone``."""

    def __init__(self, expression: str, timezone: str | tzinfo = "UTC") -> None:
        croniter = _croniter()
        self.expression = " ".join(expression.split())
        fields = self.expression.split(" ")
        if len(fields) != 5 or not croniter.is_valid(self.expression):
            raise ValueError(f"not a 5-field crontab expression (minute hour day month weekday): {expression!r}")
        self.timezone = zone(timezone) if isinstance(timezone, str) else timezone
        #: Runs in both repeated hours at a fall-back only when the hour field is a wildcard.
        self._every_hour = fields[1].startswith("*")

    def __repr__(self) -> str:
        return f"Crontab({self.expression!r}, {self.timezone})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Crontab) and (other.expression, str(other.timezone)) == (
            self.expression,
            str(self.timezone),
        )

    def __hash__(self) -> int:
        return hash(("Crontab", self.expression, str(self.timezone)))

    def next_after(self, last: datetime) -> datetime:
        iterator = _croniter()(self.expression, last.astimezone(self.timezone))
        while True:
            due: datetime = iterator.get_next(datetime)
            if due.astimezone(UTC) <= last.astimezone(UTC):  # defensive: never step backwards
                continue
            if not self._every_hour and _second_occurrence(due):
                continue
            return due.astimezone(UTC)

    def latest_due(self, last: datetime, now: datetime) -> datetime | None:
        if now <= last:
            return None
        # Jump to two due times before ``now`` and step forward from there, so a long
        # downtime costs a few steps, not one per missed run.
        iterator = _croniter()(self.expression, now.astimezone(self.timezone))
        iterator.get_prev(datetime)
        back: datetime = iterator.get_prev(datetime)
        start = max(last, back.astimezone(UTC) - timedelta(seconds=1))
        latest = super().latest_due(start, now)
        if latest is None and start > last:
            latest = super().latest_due(last, now)
        return latest


def _second_occurrence(moment: datetime) -> bool:
    """Whether ``moment``'s wall time happened before on that day (the repeated hour of a fall-back)."""
    earlier = moment.replace(fold=0)
    return earlier.utcoffset() != moment.utcoffset() and moment.replace(fold=1).utcoffset() == moment.utcoffset()


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ConfigError("crontab schedules need the 'beat' extra: pip install 'celeriac[beat]'") from None
    return croniter


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or :class:`ValueError` saying what is expected."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; expected an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def parse_duration(text: str) -> float | None:
    """``"90"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"``, ``"250ms"`` -> seconds; ``None`` if not a duration."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION.finditer(stripped):
        if stripped[position : match.start()].strip():
            return None
        total += float(match.group(1)) * _UNIT[match.group(2).lower()]
        position = match.end()
    if position == 0 or stripped[position:].strip():
        return None
    return total
