"""Remote control on the memory transport: inspect, control, revoke, state db, plugin commands."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, hookimpl, states
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(30)


def test_inspect_returns_what_is_true(app: Celeriac) -> None:
    release = threading.Event()

    @app.task
    def block() -> str:
        release.wait(10)
        return "done"

    with start_worker(app, concurrency=1, name="one@test", prefetch_multiplier=2) as worker:
        running, waiting = block.delay(), block.delay()
        later = block.apply_async(countdown=600)  # waits in the broker: inspect scheduled lists it
        wait_for(lambda: worker.active_count == 1 and len(worker.job_infos("reserved")) == 1, 10)
        inspect = app.control.inspect(destination="one@test")
        assert inspect.ping() == {"one@test": {"ok": "pong"}}
        assert [job["id"] for job in inspect.active()["one@test"]] == [running.id]  # type: ignore[index]
        assert [job["id"] for job in inspect.reserved()["one@test"]] == [waiting.id]  # type: ignore[index]
        [entry] = inspect.scheduled()["one@test"]  # type: ignore[index]
        assert entry["request"]["id"] == later.id and entry["request"]["name"] == block.name
        assert 590 < datetime.fromisoformat(entry["eta"]).timestamp() - time.time() <= 600
        found = inspect.query_task(running.id, waiting.id)["one@test"]  # type: ignore[index]
        assert (found[running.id][0], found[waiting.id][0]) == ("active", "reserved")
        assert block.name in inspect.registered()["one@test"]  # type: ignore[index]
        assert [q["name"] for q in inspect.active_queues()["one@test"]] == ["default"]  # type: ignore[index]
        stats = inspect.stats()["one@test"]  # type: ignore[index]
        assert stats["pool"]["max-concurrency"] == 1 and stats["prefetch_count"] == 2
        assert {"pid", "uptime", "rusage", "broker", "total"} <= set(stats)
        assert inspect.conf()["one@test"]["broker_url"] == app.conf.broker_url  # type: ignore[index]
        # revoke the waiting task: it never runs
        assert app.control.revoke(waiting.id, reply=True, destination="one@test") == [
            {"one@test": {"ok": f"tasks {waiting.id} flagged as revoked"}}
        ]
        assert inspect.revoked() == {"one@test": [waiting.id]}
        release.set()
        assert running.get(timeout=10) == "done"
        assert waiting.get(timeout=10, propagate=False) is not None
        assert waiting.state == states.REVOKED
        assert worker.stats.total[block.name] == 1


def test_nobody_answers_gives_none_and_an_empty_list(app: Celeriac) -> None:
    assert app.control.inspect(timeout=0.1).ping() is None
    assert app.control.ping(timeout=0.1) == []


def test_control_commands_take_effect(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, concurrency=2, name="c@test") as worker:
        send = app.control
        assert send.pool_grow(2, reply=True, destination="c@test") == [{"c@test": {"ok": "pool grown by 2 to 4"}}]
        assert worker.pool is not None and worker.pool.size == 4
        assert send.pool_shrink(3, reply=True, destination="c@test") == [{"c@test": {"ok": "pool shrunk by 3 to 1"}}]
        assert worker.pool.size == 1
        assert "error" in send.pool_shrink(1, reply=True, destination="c@test")[0]["c@test"]
        assert "error" in send.autoscale(4, 1, reply=True, destination="c@test")[0]["c@test"]

        assert send.add_consumer("extra", reply=True, destination="c@test") == [
            {"c@test": {"ok": "add consumer extra"}}
        ]
        assert add.apply_async((1, 2), queue="extra").get(timeout=10) == 3
        assert "ok" in send.cancel_consumer("extra", reply=True, destination="c@test")[0]["c@test"]
        assert worker.queues == ["default"]
        assert "error" in send.cancel_consumer("default", reply=True, destination="c@test")[0]["c@test"]

        assert "ok" in send.rate_limit(add.name, "5/m", reply=True, destination="c@test")[0]["c@test"]
        assert add.rate_limit == "5/m"
        bad = send.rate_limit(add.name, "fast", reply=True, destination="c@test")[0]["c@test"]
        assert "expected a rate" in bad["error"]
        assert "ok" in send.rate_limit(add.name, None, reply=True, destination="c@test")[0]["c@test"]

        assert "ok" in send.time_limit(add.name, soft=5, hard=6, reply=True, destination="c@test")[0]["c@test"]
        assert worker.time_limits[add.name] == (5, 6) and add.time_limit == 6
        assert "error" in send.time_limit("nope", soft=1, reply=True, destination="c@test")[0]["c@test"]

        assert worker.events is not None and not worker.events.task_events
        assert send.enable_events(reply=True, destination="c@test") == [{"c@test": {"ok": "task events enabled"}}]
        assert worker.events.task_events
        send.disable_events(reply=True, destination="c@test")
        assert not worker.events.task_events

        unknown = send.broadcast("nope", reply=True, destination="c@test")[0]["c@test"]
        assert unknown["error"].startswith("unknown command 'nope'")
        assert (
            "bad arguments" in send.broadcast("ping", {"x": 1}, reply=True, destination="c@test")[0]["c@test"]["error"]
        )

        assert send.shutdown(reply=True, destination="c@test") == [{"c@test": {"ok": "shutting down"}}]
        assert worker.join(10)


def test_destination_filters_workers(app: Celeriac) -> None:
    with start_worker(app, name="a@test"), start_worker(app, name="b@test"):
        assert app.control.ping(destination=["b@test"]) == [{"b@test": {"ok": "pong"}}]
        everyone = app.control.inspect(timeout=0.5).ping()
        assert everyone == {"a@test": {"ok": "pong"}, "b@test": {"ok": "pong"}}


def test_a_worker_that_starts_later_learns_current_revokes(app: Celeriac) -> None:
    with start_worker(app, name="old@test"):
        app.control.revoke(["r1", "r2"], reply=True, destination="old@test")
        with start_worker(app, name="new@test") as newcomer:
            wait_for(lambda: {"r1", "r2"} <= set(newcomer.revoked), 10)


def test_revokes_survive_a_restart_with_a_state_db(app: Celeriac, tmp_path: Path) -> None:
    app.conf.update({"worker_state_db": str(tmp_path / "worker.state")})

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, name="s@test"):
        result = add.s(1, 1).freeze()
        assert app.AsyncResult(result.id).revoke(reply=True, destination="s@test")[0]["s@test"]["ok"]
    assert result.id in (tmp_path / "worker.state").read_text()
    add.apply_async((1, 1), task_id=result.id)
    with start_worker(app, name="s@test") as worker:
        assert result.id in worker.revoked
        assert app.AsyncResult(result.id).get(timeout=10, propagate=False) is not None
        assert app.AsyncResult(result.id).state == states.REVOKED


def test_terminate_without_a_pool_that_can_flags_it_revoked(app: Celeriac) -> None:
    release = threading.Event()

    @app.task
    def block() -> str:
        release.wait(10)
        return "done"

    with start_worker(app, name="t@test") as worker:
        running = block.delay()
        wait_for(lambda: worker.active_count == 1, 10)
        reply = app.control.revoke(running.id, terminate=True, reply=True, destination="t@test")[0]["t@test"]
        assert "none running here could be terminated" in reply["ok"]  # the threads pool cannot stop it
        bad = app.control.revoke(running.id, terminate=True, signal="SIGNOPE", reply=True, destination="t@test")
        assert "unknown signal" in bad[0]["t@test"]["error"]
        release.set()
        assert running.get(timeout=10) == "done"


class _Plugin:
    @hookimpl
    def celeriac_control_commands(self) -> dict[str, Any]:
        def hello(worker: Any, name: str = "you") -> dict[str, str]:
            return {"ok": f"hello {name} from {worker.hostname}"}

        return {"hello": hello, "ping": hello}  # built-in names cannot be replaced


def test_plugins_add_commands(app: Celeriac) -> None:
    app.register_plugin(_Plugin())
    with start_worker(app, name="p@test"):
        reply = app.control.broadcast("hello", {"name": "bob"}, reply=True, destination="p@test")
        assert reply == [{"p@test": {"ok": "hello bob from p@test"}}]
        assert app.control.inspect(destination="p@test").call("hello") == {"p@test": {"ok": "hello you from p@test"}}
        assert app.control.ping(destination="p@test") == [{"p@test": {"ok": "pong"}}]


def test_remote_control_can_be_switched_off(app: Celeriac) -> None:
    app.conf.update({"worker_enable_remote_control": False})
    with start_worker(app, name="off@test") as worker:
        assert worker.mailbox is None
        assert app.control.ping(destination="off@test", timeout=0.2) == []


# -- CLI, in process ------------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from celeriac.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Celeriac:
    """An app on a memory broker that the CLI (run in this process) reaches through the config."""
    import uuid

    for key in [k for k in __import__("os").environ if k.startswith("CELERIAC_")]:
        monkeypatch.delenv(key)
    name = uuid.uuid4().hex
    (tmp_path / "celeriac.toml").write_text(
        f'[celeriac]\nbroker_url = "memory://{name}"\nresult_store = "memory://{name}"\n'
        "[celeriac.worker]\nheartbeat_interval = 0.1\n"
    )
    monkeypatch.chdir(tmp_path)
    return Celeriac.from_config(tmp_path / "celeriac.toml", environ={})


def test_cli_status_inspect_control_and_events_dump(cli_app: Celeriac, capsys: pytest.CaptureFixture[str]) -> None:
    with start_worker(cli_app, name="cli@test", concurrency=2) as worker:
        code, out, _ = _run(["status", "-d", "cli@test"], capsys)
        assert (code, out) == (0, "cli@test: OK\n\n1 node online.\n")
        code, out, _ = _run(["inspect", "ping", "-d", "cli@test", "--json"], capsys)
        assert json.loads(out) == {"cli@test": {"ok": "pong"}}
        code, out, _ = _run(["control", "pool_grow", "3", "-d", "cli@test"], capsys)
        assert (code, out, worker.pool.size if worker.pool else 0) == (0, "-> cli@test: OK pool grown by 3 to 5\n", 5)
        code, out, _ = _run(["control", "cancel_consumer", "default", "-d", "cli@test"], capsys)
        assert code == 1 and out.startswith("-> cli@test: ERROR")
        code, out, err = _run(["control", "nope"], capsys)
        assert code == 1 and "control: unknown command 'nope'; choose from revoke" in err
        code, out, _ = _run(["events", "--dump", "--limit", "2", "--timeout", "10"], capsys)
        lines = out.splitlines()
        assert code == 0 and len(lines) == 2 and all(" worker-heartbeat cli@test active=" in x for x in lines)


def test_cli_events_live_view_without_rich(
    cli_app: Celeriac, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the live view is for terminals
    code, _, err = _run(["events", "--timeout", "0.1"], capsys)
    assert code == 1
    expected = "celeriac: the live events view needs the 'monitor' extra: pip install 'celeriac[monitor]'\n"
    assert err == expected


def test_cli_events_into_a_pipe_prints_one_line_per_event(
    cli_app: Celeriac, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["events", "--timeout", "0.2"], capsys)
    assert code == 0
    assert "stdout is not a terminal, so one line per event (as --dump)" in err


def test_cli_control_rejects_args_for_builtin_commands(cli_app: Celeriac, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["control", "enable_events", "--args", "{bad"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "celeriac: control enable_events: --args is for plugin commands only; usage: celeriac control enable_events\n"
    )
    code, _, err = _run(["control", "pool_grow", "--args", '{"n": 2}'], capsys)
    assert code == 1 and "usage: celeriac control pool_grow [N]" in err


def test_rate_limit_zero_disables_the_limit(app: Celeriac) -> None:
    @app.task(rate_limit="10/s")
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, name="rl@test"):
        for zero in ("0", 0, "0/m"):
            add.rate_limit = "10/s"
            reply = app.control.rate_limit(add.name, zero, reply=True, destination="rl@test")[0]["rl@test"]
            assert reply == {"ok": f"rate limit disabled for {add.name}"}
            assert add.rate_limit is None
        reply = app.control.rate_limit(add.name, "2/m", reply=True, destination="rl@test")[0]["rl@test"]
        assert reply == {"ok": f"new rate limit set successfully for {add.name}: 2/m"}
        assert add.rate_limit == "2/m"


def test_cli_rate_limit_zero_says_disabled(cli_app: Celeriac, capsys: pytest.CaptureFixture[str]) -> None:
    @cli_app.task(name="t", rate_limit="1/s")
    def t() -> None:
        return None

    with start_worker(cli_app, name="rl@test"):
        code, out, _ = _run(["control", "rate_limit", "t", "0", "-d", "rl@test"], capsys)
        assert (code, out) == (0, "-> rl@test: OK rate limit disabled for t\n")
        assert t.rate_limit is None


def test_events_live_view_renders_workers_and_tasks(app: Celeriac) -> None:
    from celeriac.cli._monitor import render_view
    from rich.console import Console

    app.conf.update({"worker_send_task_events": True, "worker_heartbeat_interval": 0.1})

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ValueError("boom")

    state = app.events.State()
    receiver = app.events.Receiver(handlers={"*": state.event})
    thread = threading.Thread(target=receiver.capture, daemon=True)
    thread.start()
    try:
        with start_worker(app, name="live@test"):
            good, bad = add.delay(20, 22), fail.delay()
            assert good.get(timeout=10) == 42
            bad.get(timeout=10, propagate=False)
            wait_for(lambda: all(r.id in state.tasks and state.tasks[r.id].ready for r in (good, bad)), 10)
            wait_for(lambda: (w := state.workers.get("live@test")) is not None and w.processed is not None, 10)
            console = Console(record=True, width=250, color_system=None, file=io.StringIO())
            console.print(render_view(state, task_rows=10))
    finally:
        receiver.close()
        thread.join(5)
    lines = console.export_text().splitlines()
    assert any("Workers (1 alive)" in line for line in lines)
    worker_rows = [line for line in lines if "live@test" in line and "online" in line]
    assert len(worker_rows) == 1 and "s ago" in worker_rows[0]
    good_rows = [line for line in lines if good.id in line]
    assert len(good_rows) == 1
    assert all(text in good_rows[0] for text in (add.name, "SUCCESS", "live@test", "[20, 22]", "42"))
    bad_rows = [line for line in lines if bad.id in line]
    assert len(bad_rows) == 1
    assert all(text in bad_rows[0] for text in (fail.name, "FAILURE", "ValueError('boom')"))
    assert any("Recent tasks (2 seen" in line for line in lines)


# -- worker_state_db: debounced writes, expiry ----------------------------------------------


def _stored(path: Path) -> dict[str, float]:
    try:
        return dict(json.loads(path.read_text())["revoked"])
    except FileNotFoundError:
        return {}


def test_state_db_writes_are_debounced_off_the_callers_thread(tmp_path: Path) -> None:
    from celeriac.worker._state import REVOKE_EXPIRES, RevokeStore

    writers: list[str] = []

    class Counting(RevokeStore):
        def _write(self, revoked: Any) -> None:
            writers.append(threading.current_thread().name)
            super()._write(revoked)

    path = tmp_path / "worker.state"
    store = Counting(path)
    revoked: dict[str, float] = {}
    started = time.monotonic()
    for number in range(300):
        revoked[f"id-{number}"] = time.time()
        store.save(revoked)
    wait_for(lambda: len(_stored(path)) == 300, 10)
    elapsed = time.monotonic() - started
    assert set(writers) == {"celeriac-statedb"}  # never in the thread that revoked
    assert 1 <= len(writers) <= elapsed / 1.0 + 2  # at most one write per second
    # a change right after a write waits for the timer, but close() writes it at once
    revoked["last"] = time.time()
    store.save(revoked)
    store.close()
    assert "last" in _stored(path)
    # once closed, saves are written at once; expired ids are never written
    store.save({"expired": time.time() - REVOKE_EXPIRES - 1, "after-close": time.time()})
    assert list(_stored(path)) == ["after-close"]


def test_revoked_ids_expire_after_three_hours(app: Celeriac, tmp_path: Path) -> None:
    from celeriac.worker._state import REVOKE_EXPIRES

    path = tmp_path / "worker.state"
    now = time.time()
    path.write_text(json.dumps({"revoked": {"old": now - REVOKE_EXPIRES - 60, "fresh": now - 60}}))
    app.conf.update({"worker_state_db": str(path)})
    with start_worker(app, name="x@test") as worker:
        assert list(worker.revoked) == ["fresh"]  # expired ids are dropped when the file is read
        worker.revoked["stale"] = now - REVOKE_EXPIRES - 1
        app.control.revoke(["new-1", "new-2"], reply=True, destination="x@test")
        assert list(worker.revoked) == ["fresh", "new-1", "new-2"]  # ... and from memory
        worker.revoked["stale"] = now - REVOKE_EXPIRES - 1
        assert app.control.inspect(destination="x@test").revoked() == {"x@test": ["fresh", "new-1", "new-2"]}
        assert "stale" not in worker.revoked
    assert set(_stored(path)) == {"fresh", "new-1", "new-2"}  # written on stop, without "stale"


def test_state_db_is_written_when_the_worker_stops(app: Celeriac, tmp_path: Path) -> None:
    path = tmp_path / "worker.state"
    app.conf.update({"worker_state_db": str(path)})
    with start_worker(app, name="y@test"):
        for number in range(5):  # quicker than the write interval: one write, or a few
            app.control.revoke(f"r-{number}", reply=True, destination="y@test")
    assert set(_stored(path)) == {f"r-{number}" for number in range(5)}
