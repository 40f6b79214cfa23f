"""Periodic tasks (beat): interval and crontab schedules, safe to run on several machines.

* :class:`Beat` — the scheduler (``celeriac beat``, or ``celeriac worker --beat``); any number
  may run, one leader sends (a lease in the result store), each due run is sent once.
* :class:`Interval`, :class:`Crontab` — the built-in schedules; :class:`Schedule` is the base
  of custom ones that plugins return from the ``celeriac_beat_schedule`` hook.
* :class:`Entry`, :func:`make_entry` — one periodic task, checked from a config table.
* :class:`Clock` / :class:`SystemClock` — what beat reads time from
  (:class:`celeriac.testing.VirtualClock` in tests).

Entries come from ``[celeriac.beat.schedule.<name>]`` tables and ``app.add_periodic_task``.
An entry's ``schedule`` is a number of seconds, a duration (``"30s"``, ``"5m"``, ``"1h30m"``),
a 5-field crontab (``"*/5 * * * *"``, in the entry's ``timezone`` or the app's), a
:class:`Schedule` or anything a plugin's ``celeriac_beat_schedule`` turns into one.
"""

from __future__ import annotations

from ._beat import Beat, SentRun
from ._clock import Clock, SystemClock
from ._entries import SEND_OPTIONS, Entry, load_entries, make_entry, make_schedule
from ._schedules import Crontab, Interval, Schedule, parse_duration

__all__ = [
    "SEND_OPTIONS",
    "Beat",
    "Clock",
    "Crontab",
    "Entry",
    "Interval",
    "Schedule",
    "SentRun",
    "SystemClock",
    "load_entries",
    "make_entry",
    "make_schedule",
    "parse_duration",
]
