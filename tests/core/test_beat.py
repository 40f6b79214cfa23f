"""Beat on the in-memory broker and store, driven by a virtual clock: no sleeping."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, ResultStore
from celeriac.beat import Beat, Crontab, Interval
from celeriac.exceptions import ConfigError
from celeriac.testing import VirtualClock, start_worker, wait_for

START = "2026-01-01T00:00:00+00:00"


def published(app: Celeriac, queue: str = "default") -> list[dict[str, Any]]:
    """Drain ``queue`` of the memory broker: the messages' headers."""
    messages = []
    transport = app.transport
    while True:
        deliveries = transport.fetch([queue], limit=100, timeout=0)
        if not deliveries:
            return messages
        for delivery in deliveries:
            messages.append(dict(delivery.envelope.headers))
            transport.ack(delivery)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


def make_app(name: str, **settings: Any) -> Celeriac:
    return Celeriac("tests", broker_url=f"memory://{name}", result_store=f"memory://{name}", environ={}, **settings)


@pytest.fixture
def apps() -> Iterator[Any]:
    """Apps on one shared memory broker/store (``apps(**settings)``), closed afterwards."""
    name, made = uuid.uuid4().hex, []

    def make(**settings: Any) -> Celeriac:
        app = make_app(name, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def test_runs_are_sent_when_due_and_not_before(apps: Any, clock: VirtualClock) -> None:
    app = apps(beat_schedule={"ping": {"task": "proj.ping", "schedule": "5m", "args": [1], "kwargs": {"x": 2}}})
    beat = Beat(app, clock=clock)
    assert beat.tick() == []  # first sight: runs start one period from now
    clock.advance(minutes=4, seconds=59)
    assert beat.tick() == []
    clock.advance(seconds=1)
    [run] = beat.tick()
    assert (run.entry, run.due.isoformat()) == ("ping", "2026-01-01T00:05:00+00:00")
    assert beat.tick() == []  # the same due time is never sent twice
    [headers] = published(app)
    assert headers["task"] == "proj.ping" and headers["id"] == run.result.id
    assert headers["argsrepr"] == "(1,)" and "'x': 2" in headers["kwargsrepr"]


def test_the_same_run_always_gets_the_same_task_id(apps: Any, clock: VirtualClock) -> None:
    first, second = apps(beat_schedule={"a": {"task": "t", "schedule": 60}}), None
    beat = Beat(first, clock=clock)
    beat.tick()
    clock.advance(60)
    [run] = beat.tick()
    second = make_app(uuid.uuid4().hex, beat_schedule={"a": {"task": "t", "schedule": 60}})
    other = Beat(second, clock=VirtualClock(START))
    other.tick()
    other.clock.advance(60)  # type: ignore[attr-defined]
    [again] = other.tick()
    assert run.result.id == again.result.id
    second.close()


def test_send_options_and_per_entry_time_zone(apps: Any, clock: VirtualClock) -> None:
    app = apps(
        timezone="America/New_York",
        beat_schedule={
            "report": {
                "task": "proj.report",
                "schedule": "0 9 * * *",
                "timezone": "Europe/Berlin",
                "queue": "reports",
                "priority": 7,
            },
            "local": {"task": "proj.local", "schedule": "0 9 * * *", "queue": "reports"},
        },
    )
    beat = Beat(app, clock=clock)
    assert beat.entries["report"].schedule == Crontab("0 9 * * *", "Europe/Berlin")
    assert beat.entries["local"].schedule == Crontab("0 9 * * *", "America/New_York")
    beat.tick()
    clock.set("2026-01-01T08:00:00+00:00")  # 09:00 in Berlin, 03:00 in New York
    [run] = beat.tick()
    assert run.entry == "report"
    [headers] = published(app, "reports")
    assert headers["task"] == "proj.report"
    clock.set("2026-01-01T14:00:00+00:00")  # 09:00 in New York
    assert [r.entry for r in beat.tick()] == ["local"]


def test_schedule_from_celeriac_toml(tmp_path: Path, clock: VirtualClock) -> None:
    name = uuid.uuid4().hex
    (tmp_path / "celeriac.toml").write_text(
        f"""
[celeriac]
broker_url = "memory://{name}"
result_store = "memory://{name}"
timezone = "Europe/Berlin"

[celeriac.beat]
catch_up = "skip"

[celeriac.beat.schedule.cleanup]
task = "proj.cleanup"
schedule = "*/5 * * * *"
args = [3]
expires = 60

[celeriac.beat.schedule.sync]
task = "proj.sync"
schedule = 90
enabled = false
"""
    )
    app = Celeriac.from_config(cwd=tmp_path, environ={})
    beat = Beat(app, clock=clock)
    assert beat.catch_up == "skip"
    cleanup, sync = beat.entries["cleanup"], beat.entries["sync"]
    assert cleanup.schedule == Crontab("*/5 * * * *", "Europe/Berlin")
    assert cleanup.args == (3,) and cleanup.options == {"expires": 60}
    assert sync.schedule == Interval(90) and sync.enabled is False
    beat.tick()
    clock.advance(minutes=5)
    assert [run.entry for run in beat.tick()] == ["cleanup"]  # a disabled entry is never sent
    app.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("schedule = 5", r"\[celeriac.beat.schedule.bad\] task: expected the name of a task"),
        ('task = "t"', r"\[celeriac.beat.schedule.bad\] schedule: missing; expected seconds"),
        ('task = "t"\nschedule = "often"', r"\[celeriac.beat.schedule.bad\] schedule: expected seconds .*'often'"),
        ('task = "t"\nschedule = "61 * * * *"', r"schedule: not a 5-field crontab"),
        ('task = "t"\nschedule = -3', r"schedule: an interval must be a positive number"),
        ('task = "t"\nschedule = 5\ntimezone = "Nowhere/Land"', r"\] timezone: unknown time zone 'Nowhere/Land'"),
        ('task = "t"\nschedule = 5\nargs = "x"', r"\] args: expected a list"),
        ('task = "t"\nschedule = 5\nkwargs = [1]', r"\] kwargs: expected a table"),
        ('task = "t"\nschedule = 5\npriority = 12', r"\] priority: expected an integer 0-9"),
        ('task = "t"\nschedule = 5\nenabled = "yes"', r"\] enabled: expected true or false"),
        ('task = "t"\nschedule = 5\ncountdwn = 1', r"\] countdwn: unknown key; expected one of task, schedule"),
    ],
)
def test_bad_entries_name_the_table_and_key(tmp_path: Path, table: str, message: str) -> None:
    name = uuid.uuid4().hex
    (tmp_path / "celeriac.toml").write_text(
        f'[celeriac]\nbroker_url = "memory://{name}"\nresult_store = "memory://{name}"\n'
        f"[celeriac.beat.schedule.bad]\n{table}\n"
    )
    app = Celeriac.from_config(cwd=tmp_path, environ={})
    with pytest.raises(ConfigError, match=message) as caught:
        Beat(app)
    assert str(caught.value).startswith(str(tmp_path / "celeriac.toml"))
    app.close()


def test_add_periodic_task_takes_tasks_signatures_and_names(app: Celeriac, clock: VirtualClock) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert app.add_periodic_task(30, add, args=(1, 2)) == f"{add.name}(1, 2)"
    assert app.add_periodic_task("0 * * * *", add.s(2, 2), name="hourly", queue="math") == "hourly"
    app.add_periodic_task(timedelta(minutes=1), "proj.other", name="by-name", kwargs={"k": 1})
    beat = Beat(app, clock=clock)
    by_task = beat.entries[f"{add.name}(1, 2)"]
    assert by_task.schedule == Interval(30) and by_task.args == (1, 2)
    assert beat.entries["hourly"].args == (2, 2) and beat.entries["hourly"].options == {"queue": "math"}
    assert beat.entries["by-name"].kwargs == {"k": 1}
    with pytest.raises(ConfigError, match=r"\[celeriac.beat.schedule.nope\] schedule: expected seconds"):
        app.add_periodic_task("whenever", add, name="nope")
    with pytest.raises(ConfigError, match="expected a task, a signature or a task name"):
        app.add_periodic_task(5, 42)


def test_add_periodic_task_keeps_entries_of_one_task_apart_and_refuses_name_clashes(
    app: Celeriac, clock: VirtualClock
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    first = app.add_periodic_task(30, add.s(1, 2))
    second = app.add_periodic_task(60, add.s(3, 4))
    third = app.add_periodic_task(90, add, kwargs={"x": 1, "y": 2})
    assert [first, second, third] == [f"{add.name}(1, 2)", f"{add.name}(3, 4)", f"{add.name}(x=1, y=2)"]
    assert app.add_periodic_task(30, add.s(1, 2)) == first  # the same entry again: no change, no error
    entries = Beat(app, clock=clock).entries
    assert (entries[first].schedule, entries[first].args) == (Interval(30), (1, 2))
    assert (entries[second].schedule, entries[second].args) == (Interval(60), (3, 4))
    assert entries[third].kwargs == {"x": 1, "y": 2}
    assert app.add_periodic_task(30, add.s(1, 2), name="sums") == "sums"
    with pytest.raises(ConfigError, match=r"an entry named 'sums' was already added .* its own name="):
        app.add_periodic_task(60, add.s(3, 4), name="sums")
    with pytest.raises(ConfigError, match=r"an entry named '.*add\(1, 2\)' was already added"):
        app.add_periodic_task(45, add.s(1, 2))  # same signature, another schedule: name them
    assert app.periodic_tasks["sums"].args == (1, 2) and app.periodic_tasks[first].schedule == Interval(30)


def test_restart_after_downtime_sends_one_run_with_catch_up_once(apps: Any, clock: VirtualClock) -> None:
    schedule = {"tick": {"task": "t", "schedule": "1m"}}
    beat = Beat(apps(beat_schedule=schedule), clock=clock)
    beat.tick()
    clock.advance(minutes=1)
    assert len(beat.tick()) == 1
    beat.stop()
    clock.advance(hours=2, seconds=30)  # down for two hours
    restarted = Beat(apps(beat_schedule=schedule, beat_catch_up="once"), clock=clock)
    [run] = restarted.tick()
    assert run.due.isoformat() == "2026-01-01T02:01:00+00:00"  # one run for all 120 missed
    assert restarted.tick() == []
    clock.advance(seconds=30)
    assert [r.due.isoformat() for r in restarted.tick()] == ["2026-01-01T02:02:00+00:00"]  # back on schedule


def test_restart_after_downtime_sends_nothing_missed_with_catch_up_skip(apps: Any, clock: VirtualClock) -> None:
    schedule = {"tick": {"task": "t", "schedule": "*/10 * * * *"}}
    beat = Beat(apps(beat_schedule=schedule), clock=clock)
    beat.tick()
    beat.stop()
    clock.advance(hours=1, minutes=5)
    restarted = Beat(apps(beat_schedule=schedule, beat_catch_up="skip"), clock=clock)
    assert restarted.tick() == []
    clock.advance(minutes=5)
    assert [r.due.isoformat() for r in restarted.tick()] == ["2026-01-01T01:10:00+00:00"]


def test_a_short_restart_sends_the_run_that_fell_into_it(apps: Any, clock: VirtualClock) -> None:
    """Within the grace (lease timeout + loop interval) a late run is on time, not missed."""
    schedule = {"tick": {"task": "t", "schedule": "1m"}}
    beat = Beat(apps(beat_schedule=schedule, beat_catch_up="skip"), clock=clock)
    beat.tick()
    beat.stop()
    clock.advance(seconds=70)  # due at 60 s, restarted 10 s late
    restarted = Beat(apps(beat_schedule=schedule, beat_catch_up="skip"), clock=clock)
    assert [r.due.isoformat() for r in restarted.tick()] == ["2026-01-01T00:01:00+00:00"]


def test_two_beats_one_leader_and_each_run_once(apps: Any, clock: VirtualClock) -> None:
    schedule = {"a": {"task": "t", "schedule": 10}, "b": {"task": "u", "schedule": "* * * * *"}}
    first, second = Beat(apps(beat_schedule=schedule), clock=clock), Beat(apps(beat_schedule=schedule), clock=clock)
    runs = []
    for _ in range(30):
        clock.advance(7)
        runs += first.tick() + second.tick()
    assert first.is_leader != second.is_leader
    keys = [(run.entry, run.due) for run in runs]
    assert len(keys) == len(set(keys))
    assert len([k for k in keys if k[0] == "a"]) == 20  # first seen at 7 s: due at 17, 27, ... 207 s
    assert len([k for k in keys if k[0] == "b"]) == 3


def test_a_stopped_leader_hands_over_at_once_and_nothing_is_sent_twice(apps: Any, clock: VirtualClock) -> None:
    schedule = {"a": {"task": "t", "schedule": 10}}
    first, second = Beat(apps(beat_schedule=schedule), clock=clock), Beat(apps(beat_schedule=schedule), clock=clock)
    first.tick(), second.tick()
    clock.advance(10)
    sent = first.tick() + second.tick()
    first.stop()  # releases the lease
    sent += second.tick()
    assert second.is_leader
    clock.advance(10)
    sent += first.tick() + second.tick()
    assert [run.due.isoformat() for run in sent] == ["2026-01-01T00:00:10+00:00", "2026-01-01T00:00:20+00:00"]


def test_a_dead_leader_is_replaced_once_its_lease_runs_out(apps: Any, clock: VirtualClock) -> None:
    schedule = {"a": {"task": "t", "schedule": 10}}
    settings = {"beat_schedule": schedule, "beat_lease_timeout": 0.3}
    first, second = Beat(apps(**settings), clock=clock), Beat(apps(**settings), clock=clock)
    first.tick(), second.tick()
    assert first.is_leader and not second.is_leader
    first.stop(release=False)  # dies holding the lease
    clock.advance(25)
    assert second.tick() == []  # the lease still runs
    wait_for(lambda: second.tick() or second.is_leader, timeout=10, message="no take-over after the lease ran out")
    assert second.is_leader


def test_a_leader_that_lost_its_lease_sends_nothing(apps: Any, clock: VirtualClock) -> None:
    schedule = {"a": {"task": "t", "schedule": 10}}
    first, second = Beat(apps(beat_schedule=schedule), clock=clock), Beat(apps(beat_schedule=schedule), clock=clock)
    first.tick()
    store = first.app.result_store
    assert store.release_lease(first.lease, first.owner)  # e.g. a pause past the lease time ...
    assert store.acquire_lease(first.lease, second.owner, 60)  # ... and another beat took over
    clock.advance(10)
    assert first.tick() == []  # still believes it leads, but the fenced write refuses
    assert not first.is_leader
    assert len(second.tick()) == 1


class NoLeases(ResultStore):
    """A third-party store written before leases existed."""

    schemes = ("noleases",)

    def set(self, record: Any, *, expires: float | None = None) -> None: ...
    def get(self, task_id: str) -> Any:
        return None

    def forget(self, task_id: str) -> None: ...
    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        return 0


def test_a_store_without_leases_is_a_clear_error(app: Celeriac) -> None:
    app._result_store = NoLeases("noleases://x")
    beat = Beat(app)
    with pytest.raises(ConfigError, match=r"NoLeases cannot hold them; set result_store to redis://... or sqlite"):
        beat.check()


@pytest.mark.timeout(30)
def test_a_running_beat_thread_follows_the_virtual_clock(apps: Any, clock: VirtualClock) -> None:
    app = apps(beat_schedule={"a": {"task": "t", "schedule": 60}})
    beat = Beat(app, clock=clock)
    beat.start()
    try:
        wait_for(lambda: beat.is_leader, timeout=10)
        for _ in range(3):
            clock.advance(60)
        wait_for(lambda: beat.sent_count >= 1, timeout=10)
        clock.advance(60)
        wait_for(lambda: beat.sent_count >= 2, timeout=10)
    finally:
        beat.stop()
    assert app.result_store.lease_owner(beat.lease) is None  # released at stop


@pytest.mark.timeout(30)
def test_beat_embedded_in_a_worker_sends_tasks_the_worker_runs(app: Celeriac) -> None:
    from celeriac.cli._beat import embed_beat

    done: list[int] = []

    @app.task(name="tests.record")
    def record(value: int) -> None:
        done.append(value)

    app.add_periodic_task(0.05, record, args=(7,))
    worker = app.Worker(pool="threads", concurrency=1)
    scheduler = embed_beat(app, worker)
    with start_worker(app) as _other:
        pass  # a second worker of the same app is not touched by the embedded beat
    assert scheduler._thread is None  # checked (it holds the lease), not started yet
    worker.start()
    try:
        wait_for(lambda: len(done) >= 2, timeout=15, message="the embedded beat sent nothing the worker ran")
    finally:
        worker.stop()
    assert scheduler._stopping.is_set() and not scheduler.is_leader
    assert set(done) == {7}
