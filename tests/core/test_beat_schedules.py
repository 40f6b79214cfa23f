"""Schedules: durations, intervals and crontabs, across daylight-saving changes."""

from __future__ import annotations

import itertools
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celeriac import Celeriac, hookimpl
from celeriac.beat import Crontab, Interval, Schedule, make_schedule, parse_duration
from celeriac.exceptions import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(schedule: Schedule, start: datetime, until: datetime) -> list[datetime]:
    """Every due time in ``(start, until]``."""
    found, due = [], schedule.next_after(start)
    while due <= until:
        found.append(due)
        due = schedule.next_after(due)
    return found


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("2.5", 2.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("1d", 86400.0), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "*/5 * * * *", "1h x"])
def test_text_that_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


def test_interval_counts_from_the_previous_due_time_not_from_the_send() -> None:
    every = Interval(60)
    last = utc("2026-01-01T00:00:00")
    assert every.next_after(last) == utc("2026-01-01T00:01:00")
    assert every.latest_due(last, utc("2026-01-01T00:00:59")) is None
    assert every.latest_due(last, utc("2026-01-01T00:05:30")) == utc("2026-01-01T00:05:00")
    assert every.latest_due(last, utc("2030-01-01T00:00:30")) == utc("2030-01-01T00:00:00")  # a jump, no loop


@pytest.mark.parametrize("bad", [0, -1, float("inf")])
def test_an_interval_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Interval(bad)


def test_an_hourly_interval_is_real_hours_across_spring_forward_and_fall_back() -> None:
    hourly = Interval(timedelta(hours=1))
    for day in ("2026-03-29", "2026-10-25"):  # Berlin's DST changes
        start = datetime.fromisoformat(f"{day}T00:00:00").replace(tzinfo=BERLIN).astimezone(UTC)
        due = runs(hourly, start, start + timedelta(hours=24))
        assert len(due) == 24
        assert {b - a for a, b in itertools.pairwise(due)} == {timedelta(hours=1)}


def test_crontab_runs_in_its_time_zone() -> None:
    daily = Crontab("0 9 * * *", "Europe/Berlin")
    assert daily.next_after(utc("2026-01-10T12:00:00")) == utc("2026-01-11T08:00:00")  # 09:00 CET
    assert daily.next_after(utc("2026-07-10T12:00:00")) == utc("2026-07-11T07:00:00")  # 09:00 CEST


def test_a_daily_crontab_in_the_skipped_hour_runs_once_when_the_clock_jumps() -> None:
    daily = Crontab("30 2 * * *", "Europe/Berlin")  # 02:30 does not exist on 2026-03-29
    due = runs(daily, utc("2026-03-27T12:00:00"), utc("2026-03-31T12:00:00"))
    local = [d.astimezone(BERLIN).strftime("%m-%d %H:%M") for d in due]
    assert local == ["03-28 02:30", "03-29 03:00", "03-30 02:30", "03-31 02:30"]


def test_a_daily_crontab_in_the_repeated_hour_runs_once_at_fall_back() -> None:
    daily = Crontab("30 2 * * *", "Europe/Berlin")  # 02:30 happens twice on 2026-10-25
    due = runs(daily, utc("2026-10-23T12:00:00"), utc("2026-10-26T12:00:00"))
    assert [d.astimezone(BERLIN).strftime("%m-%d %H:%M") for d in due] == [
        "10-24 02:30",
        "10-25 02:30",
        "10-26 02:30",
    ]
    assert due[1] == utc("2026-10-25T00:30:00")  # the first 02:30 (CEST)


def test_an_hourly_crontab_runs_every_real_hour_on_both_change_days() -> None:
    hourly = Crontab("0 * * * *", "America/New_York")
    spring = runs(hourly, utc("2026-03-08T04:30:00"), utc("2026-03-09T03:30:00"))  # local day of 23 hours
    autumn = runs(hourly, utc("2026-11-01T03:30:00"), utc("2026-11-02T04:30:00"))  # local day of 25 hours
    assert len(spring) == 23 and len(autumn) == 25
    for due in (spring, autumn):
        assert {b - a for a, b in itertools.pairwise(due)} == {timedelta(hours=1)}
        assert all(d.astimezone(NEW_YORK).minute == 0 for d in due)


def test_every_quarter_hour_through_the_repeated_hour_runs_in_both() -> None:
    quarter = Crontab("*/15 * * * *", "Europe/Berlin")
    due = runs(quarter, utc("2026-10-24T23:55:00"), utc("2026-10-25T02:00:00"))  # 01:55 CEST .. 03:00 CET
    assert len(due) == 9  # 02:00..02:45 CEST, 02:00..02:45 CET, 03:00 CET: two real hours and a bit
    assert {b - a for a, b in itertools.pairwise(due)} == {timedelta(minutes=15)}


def test_crontab_latest_due_after_a_long_downtime_and_around_dst() -> None:
    every_minute = Crontab("* * * * *", "UTC")
    assert every_minute.latest_due(utc("2020-01-01T00:00:00"), utc("2026-05-05T10:20:30")) == utc("2026-05-05T10:20:00")
    daily = Crontab("30 2 * * *", "Europe/Berlin")
    # just after the second (skipped) 02:30 of the fall-back day: the latest run is the first 02:30
    assert daily.latest_due(utc("2026-10-20T00:00:00"), utc("2026-10-25T01:45:00")) == utc("2026-10-25T00:30:00")
    assert daily.latest_due(utc("2026-10-25T00:30:00"), utc("2026-10-25T23:00:00")) is None


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "* * * * * *", "a b c d e"])
def test_bad_crontabs_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="crontab"):
        Crontab(bad)


def test_an_unknown_time_zone_says_what_is_expected() -> None:
    with pytest.raises(ValueError, match="IANA"):
        Crontab("* * * * *", "Mars/Olympus")


def test_crontab_without_croniter_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)
    with pytest.raises(ConfigError, match=r"crontab schedules need the 'beat' extra: pip install 'celeriac\[beat\]'"):
        Crontab("* * * * *")


def test_make_schedule_forms(app: Celeriac) -> None:
    assert make_schedule(30, app, "UTC", "x") == Interval(30)
    assert make_schedule("5m", app, "UTC", "x") == Interval(300)
    assert make_schedule(timedelta(hours=1), app, "UTC", "x") == Interval(3600)
    assert make_schedule("*/5 * * * *", app, "Europe/Berlin", "x") == Crontab("*/5 * * * *", "Europe/Berlin")
    with pytest.raises(ConfigError, match=r"x schedule: expected seconds .* got True"):
        make_schedule(True, app, "UTC", "x")


class EveryOtherDay:
    """A custom schedule object (not a Schedule subclass) with next_after only."""

    def next_after(self, last: datetime) -> datetime:
        return last + timedelta(days=2)


class CustomSchedules:
    @hookimpl
    def celeriac_beat_schedule(self, value: Any, app: Celeriac) -> Any | None:
        if value == "every other day":
            return EveryOtherDay()
        if value == "broken":
            return object()
        return None


def test_custom_schedules_come_from_the_beat_schedule_hook(app: Celeriac) -> None:
    app.register_plugin(CustomSchedules())
    schedule = make_schedule("every other day", app, "UTC", "x")
    assert schedule.next_after(utc("2026-01-01T00:00:00")) == utc("2026-01-03T00:00:00")
    assert schedule.latest_due(utc("2026-01-01T00:00:00"), utc("2026-01-06T00:00:00")) == utc("2026-01-05T00:00:00")
    with pytest.raises(ConfigError, match="no next_after"):
        make_schedule("broken", app, "UTC", "x")
    with pytest.raises(ConfigError, match="expected seconds"):
        make_schedule("fortnightly", app, "UTC", "x")
