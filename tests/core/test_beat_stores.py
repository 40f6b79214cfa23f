"""Beat against real stores: Redis (database 9) and SQLite files.

Several beats, each with its own app (own connections, as separate processes would have),
share a virtual clock; the lease and the last-run times live in the real store, the runs go
to the real broker, and every test checks the broker holds each due run exactly once.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac
from celeriac.beat import Beat
from celeriac.testing import VirtualClock, wait_for

REDIS_DB = 9
START = "2026-03-29T00:00:00+00:00"

MakeApp = Callable[..., Celeriac]


def redis_urls(request: pytest.FixtureRequest) -> str:
    from celeriac.plugins.redis import _testing

    url, prefix = _testing.server_url(REDIS_DB), f"beat-{uuid.uuid4().hex[:12]}:"
    _testing.require_server(url)
    request.addfinalizer(functools.partial(_testing.delete_keys, url, prefix))
    return f"{url}?global_keyprefix={prefix}"


def sqlite_urls(request: pytest.FixtureRequest) -> str:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return f"sqlite:///{tmp_path / 'beat.db'}"


@pytest.fixture(params=[pytest.param(redis_urls, id="redis"), pytest.param(sqlite_urls, id="sqlite")])
def make_app(request: pytest.FixtureRequest) -> Iterator[MakeApp]:
    """``make_app(**settings)``: a new app (new connections) on this test's broker and store."""
    url = request.param(request)
    queue = f"beat-{uuid.uuid4().hex[:8]}"
    made: list[Celeriac] = []

    def make(**settings: Any) -> Celeriac:
        app = Celeriac("tests", broker_url=url, result_store=url, environ={}, task_default_queue=queue, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def sent_runs(app: Celeriac) -> list[str]:
    """Task ids of every message waiting in the app's default queue (drained)."""
    transport, queue, ids = app.transport, app.conf.task_default_queue, []
    while True:
        deliveries = transport.fetch([queue], limit=100, timeout=0.05)
        if not deliveries:
            return ids
        for delivery in deliveries:
            ids.append(delivery.envelope.headers["id"])
            transport.ack(delivery)


class Recorder:
    """Wraps ``Beat.tick`` to collect every run a beat sent (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, str, str]] = []  # (owner, entry, due)

    def attach(self, beat: Beat) -> Beat:
        tick = beat.tick

        def recording() -> list[Any]:
            sent = tick()
            with self.lock:
                self.runs += [(beat.owner, run.entry, run.due.isoformat()) for run in sent]
            return sent

        beat.tick = recording  # type: ignore[method-assign]
        return beat

    def due(self, entry: str) -> list[str]:
        with self.lock:
            return sorted(due for _, name, due in self.runs if name == entry)


@pytest.mark.timeout(60)
def test_two_running_beats_send_each_due_run_once(make_app: MakeApp) -> None:
    schedule = {"every10": {"task": "proj.a", "schedule": 10}, "cron": {"task": "proj.b", "schedule": "* * * * *"}}
    clock, recorder = VirtualClock(START, real_wait=0.05), Recorder()
    beats = [recorder.attach(Beat(make_app(beat_schedule=schedule), clock=clock)) for _ in range(2)]
    for beat in beats:
        beat.start()
    try:
        wait_for(lambda: any(beat.is_leader for beat in beats), timeout=10)
        wait_for(lambda: all(beat._last for beat in beats if beat.is_leader), timeout=10)  # anchors stored
        for step in range(1, 13):
            clock.advance(10)
            wait_for(lambda step=step: len(recorder.due("every10")) >= step, timeout=10, message=f"step {step}")
    finally:
        for beat in beats:
            beat.stop()
    assert sum(beat.is_leader for beat in beats) == 0  # both released at stop
    every10, cron = recorder.due("every10"), recorder.due("cron")
    assert len(every10) == len(set(every10)) == 12
    assert len(cron) == len(set(cron)) == 2
    ids = sent_runs(beats[0].app)
    assert len(ids) == len(set(ids)) == 14


class Attempts:
    """Wraps ``Beat.tick`` to record, in monotonic time, when each pass started and ended and
    whether the beat led afterwards."""

    def __init__(self, beat: Beat) -> None:
        self.lock = threading.Lock()
        self.passes: list[tuple[float, float, bool]] = []
        tick = beat.tick

        def timed() -> list[Any]:
            started = time.monotonic()
            try:
                return tick()
            finally:
                with self.lock:
                    self.passes.append((started, time.monotonic(), beat.is_leader))

        beat.tick = timed  # type: ignore[method-assign]

    def since(self, moment: float) -> list[tuple[float, float, bool]]:
        with self.lock:
            return [p for p in self.passes if p[1] >= moment]


@pytest.mark.timeout(60)
def test_a_killed_leader_is_replaced_within_the_lease_time_and_nothing_is_sent_twice(make_app: MakeApp) -> None:
    schedule = {"every10": {"task": "proj.a", "schedule": 10}}
    settings = {"beat_schedule": schedule, "beat_lease_timeout": 1.0, "beat_max_loop_interval": 0.2}
    clock, recorder = VirtualClock(START, real_wait=0.05), Recorder()
    beats = [recorder.attach(Beat(make_app(**settings), clock=clock)) for _ in range(2)]
    attempts = {beat.owner: Attempts(beat) for beat in beats}
    for beat in beats:
        beat.start()
    try:
        wait_for(lambda: any(beat.is_leader and beat._last for beat in beats), timeout=10)
        for step in range(1, 4):
            clock.advance(10)
            wait_for(lambda step=step: len(recorder.due("every10")) >= step, timeout=10)
        [leader] = [beat for beat in beats if beat.is_leader]
        [follower] = [beat for beat in beats if beat is not leader]
        leader.stop(release=False)  # dies holding the lease
        stopped = time.monotonic()  # its last renewal is done: the lease runs out by stopped + 1 s
        last_renewal = leader._renewed_at  # monotonic start of that renewal: not out before this + 1 s
        clock.advance(10)  # a run falls due while nobody leads
        wait_for(lambda: follower.is_leader, timeout=30, message="the follower never took over")
        wait_for(lambda: len(recorder.due("every10")) >= 4, timeout=10, message="the run due in the gap was lost")
        for step in range(5, 7):
            clock.advance(10)
            wait_for(lambda step=step: len(recorder.due("every10")) >= step, timeout=10)
    finally:
        for beat in beats:
            beat.stop()
    due = recorder.due("every10")
    assert len(due) == len(set(due)) == 6
    ids = sent_runs(beats[0].app)
    assert len(ids) == len(set(ids)) == 6
    # Take-over within the lease time, measured on the clock beat uses (monotonic), not on how
    # fast a loaded machine schedules threads: the follower ...
    passes = attempts[follower.owner].since(stopped)
    took_over = next(i for i, (_, _, led) in enumerate(passes) if led)
    expiry = stopped + leader.lease_timeout
    # ... did not take over while the lease still held,
    assert passes[took_over][1] >= last_renewal + leader.lease_timeout
    # ... took over at its first pass that began after the lease ran out,
    assert all(started < expiry for started, _, _ in passes[:took_over]), (passes, expiry)
    # ... and asks to be woken at least every renew interval (0.25 s) while following, so that
    # pass starts at most lease_timeout + renew_interval after the leader died (plus load delay).
    assert follower.renew_interval == leader.lease_timeout / 4
    assert not follower.is_leader  # stopped: asks as a follower would
    assert follower.seconds_until_due() <= follower.renew_interval


def test_a_new_leader_deletes_the_last_run_times_of_removed_entries(make_app: MakeApp) -> None:
    clock = VirtualClock(START)
    both = {"kept": {"task": "proj.a", "schedule": 10}, "dropped": {"task": "proj.b", "schedule": 10}}
    first = Beat(make_app(beat_schedule=both), clock=clock)
    first.tick()
    store = first.app.result_store
    assert store.get_meta(first._meta_key("dropped")) == START and store.get_meta(first._meta_key("kept")) == START
    first.stop()
    clock.advance(10)
    later = Beat(make_app(beat_schedule={"kept": both["kept"]}), clock=clock)
    assert [run.entry for run in later.tick()] == ["kept"]  # kept its last-run time: due now, not re-anchored
    assert store.get_meta(first._meta_key("dropped")) is None
    assert store.get_meta(first._meta_key("kept")) == "2026-03-29T00:00:10+00:00"
    assert json.loads(store.get_meta(later._index_key()) or "") == ["kept"]
    assert store.delete_meta(first._meta_key("kept")) is True
    assert store.delete_meta(first._meta_key("kept")) is False
    later.stop()
    sent_runs(later.app)


@pytest.mark.parametrize(("policy", "expected"), [("once", 1), ("skip", 0)])
def test_restart_after_downtime_follows_the_catch_up_policy(make_app: MakeApp, policy: str, expected: int) -> None:
    schedule = {"hourly": {"task": "proj.a", "schedule": "0 * * * *", "timezone": "Europe/Berlin"}}
    clock = VirtualClock("2026-03-28T22:30:00+00:00")  # 23:30 in Berlin, before the spring-forward night
    first = Beat(make_app(beat_schedule=schedule), clock=clock)
    first.tick()
    clock.advance(minutes=30)
    assert [run.due.isoformat() for run in first.tick()] == ["2026-03-28T23:00:00+00:00"]
    first.stop()
    clock.advance(hours=5, minutes=10)  # down through the skipped hour
    restarted = Beat(make_app(beat_schedule=schedule, beat_catch_up=policy), clock=clock)
    assert len(restarted.tick()) == expected
    assert restarted.tick() == []
    clock.advance(minutes=50)
    assert [run.due.isoformat() for run in restarted.tick()] == ["2026-03-29T05:00:00+00:00"]  # 07:00 CEST
    ids = sent_runs(restarted.app)
    assert len(ids) == len(set(ids)) == 2 + expected
