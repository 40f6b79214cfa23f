"""Periodic-task entries: ``[celeriac.beat.schedule.<name>]`` tables and ``app.add_periodic_task``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError
from ._schedules import Crontab, Interval, Schedule, parse_duration, zone

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["SEND_OPTIONS", "Entry", "load_entries", "make_entry", "make_schedule"]

#: Options of ``send_task`` an entry may set.
SEND_OPTIONS: dict[str, str] = {
    "queue": "a queue name",
    "priority": "an integer 0-9",
    "expires": "seconds (a number) after which an unstarted run is dropped",
    "headers": "a table of message headers",
    "serializer": "a serializer name",
    "compression": "a compressor name",
    "time_limit": "seconds (a number)",
    "soft_time_limit": "seconds (a number)",
    "ignore_result": "true or false",
}
_KEYS = ("task", "schedule", "args", "kwargs", "timezone", "enabled", *SEND_OPTIONS)
_SCHEDULE_EXPECTED = 'seconds (e.g. 30), a duration ("30s", "5m", "1h30m") or a 5-field crontab ("*/5 * * * *")'


@dataclass(frozen=True)
class Entry:
    """One periodic task: what to send, when, and with which options."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True


class _Adapted(Schedule):
    """A plugin's schedule object that has ``next_after`` but does not subclass :class:`Schedule`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return repr(self.inner)

    def next_after(self, last: datetime) -> datetime:
        due: datetime = self.inner.next_after(last)
        return due


def make_schedule(value: Any, app: Celeriac, timezone: str, where: str) -> Schedule:
    """The schedule ``value`` describes (see the module docstring of :mod:`celeriac.beat`)."""
    if isinstance(value, Schedule):
        return value
    try:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int | float | timedelta):
            return Interval(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
            if seconds is not None:
                return Interval(seconds)
            if len(value.split()) == 5:
                return Crontab(value, timezone)
    except ValueError as exc:
        raise ConfigError(f"{where} schedule: {exc}") from None
    custom = app.plugins.beat_schedule(value, app)
    if custom is not None:
        if isinstance(custom, Schedule):
            return custom
        if callable(getattr(custom, "next_after", None)):
            return _Adapted(custom)
        raise ConfigError(f"{where} schedule: a plugin returned {custom!r}, which has no next_after(last) method")
    raise ConfigError(f"{where} schedule: expected {_SCHEDULE_EXPECTED}, got {value!r}")


def make_entry(name: str, table: Mapping[str, Any], app: Celeriac, origin: str) -> Entry:
    """Check one entry table and build its :class:`Entry`; :class:`ConfigError` names the bad key."""
    where = f"{origin}: [celeriac.beat.schedule.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table with task and schedule, got {table!r}")
    unknown = [key for key in table if key not in _KEYS]
    if unknown:
        raise ConfigError(f"{where} {unknown[0]}: unknown key; expected one of {', '.join(_KEYS)}")
    task = table.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigError(f"{where} task: expected the name of a task (a string), got {task!r}")
    if "schedule" not in table:
        raise ConfigError(f"{where} schedule: missing; expected {_SCHEDULE_EXPECTED}")
    timezone = table.get("timezone", app.conf.timezone)
    if not isinstance(timezone, str):
        raise ConfigError(f"{where} timezone: expected an IANA time zone name such as 'Europe/Berlin'")
    try:
        zone(timezone)
    except ValueError as exc:
        key = "timezone" if "timezone" in table else "(the app's timezone setting)"
        raise ConfigError(f"{where} {key}: {exc}") from None
    schedule = make_schedule(table["schedule"], app, timezone, where)
    args = table.get("args", ())
    if not isinstance(args, list | tuple):
        raise ConfigError(f"{where} args: expected a list of positional arguments, got {args!r}")
    kwargs = table.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise ConfigError(f"{where} kwargs: expected a table of keyword arguments, got {kwargs!r}")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where} enabled: expected true or false, got {enabled!r}")
    options = {key: table[key] for key in SEND_OPTIONS if key in table and table[key] is not None}
    for key, value in options.items():
        if not _option_ok(key, value):
            raise ConfigError(f"{where} {key}: expected {SEND_OPTIONS[key]}, got {value!r}")
    return Entry(name, task, schedule, tuple(args), dict(kwargs), options, enabled)


def _option_ok(key: str, value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in ("queue", "serializer", "compression"):
        return isinstance(value, str) and bool(value)
    if key == "priority":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9
    if key in ("expires", "time_limit", "soft_time_limit"):
        return number and value > 0
    if key == "headers":
        return isinstance(value, Mapping)
    return isinstance(value, bool)


def load_entries(app: Celeriac) -> dict[str, Entry]:
    """Every entry of ``app``: the config's ``beat_schedule``, then ``app.add_periodic_task`` ones."""
    entries: dict[str, Entry] = {}
    origin = app.conf.origin("beat_schedule")
    for name, table in app.conf.beat_schedule.items():
        entries[name] = make_entry(str(name), table, app, origin)
    for name, entry in app.periodic_tasks.items():
        entries[name] = entry
    return entries
