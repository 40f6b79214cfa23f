"""End to end: two ``celeriac worker`` processes on Redis and on RabbitMQ, watched and steered
with ``celeriac status / inspect / control / events`` and with ``app.control`` / ``app.events``.

Each broker gets one cluster for the module (workers ``w1`` -c 1 --prefetch-multiplier 2 and
``w2`` -c 2, both with -E), with its own queue names, control and event channels (and Redis
key prefix), so nothing here sees other tests' workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, states
from celeriac.control import reply_channel
from celeriac.events import State
from celeriac.testing import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

FIXTURES = Path(__file__).parent.parent / "fixtures"
CELERIAC = [str(Path(sys.executable).with_name("celeriac"))]
REDIS_DB = 10


class Cluster:
    """Two worker processes plus a client app and helpers to run CLI commands."""

    def __init__(self, broker: str, directory: Path) -> None:
        self.broker = broker
        self.directory = directory
        self.tag = f"mon-{uuid.uuid4().hex[:10]}"
        self.queue = f"{self.tag}-q"
        self.w1, self.w2 = f"w1@{self.tag}", f"w2@{self.tag}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        self.env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), self.env.get("PYTHONPATH", "")])
        self.env["PYTHONUNBUFFERED"] = "1"
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.config = directory / "celeriac.toml"
        self.app: Celeriac | None = None

    def write_config(self, broker_url: str, transport_options: str) -> None:
        self.config.write_text(
            f"""
[celeriac]
imports = ["monitor_tasks"]
broker_url = "{broker_url}"
broker_transport_options = {transport_options}
result_store = "redis://127.0.0.1:6379/{REDIS_DB}"
result_expires = 600
task_default_queue = "{self.queue}"
control_channel = "{self.tag}.control"
event_channel = "{self.tag}.events"

[celeriac.worker]
heartbeat_interval = 0.5
shutdown_timeout = 10
"""
        )
        self.app = Celeriac.from_config(self.config, environ={})

    def start_worker(self, name: str, *options: str) -> None:
        command = [*CELERIAC, "--config", str(self.config), "worker", "-n", name, "-l", "warning", "-E", *options]
        self.workers[name] = subprocess.Popen(
            command, cwd=self.directory, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_ready(self, *names: str) -> None:
        assert self.app is not None

        def answered() -> bool:
            for name, process in self.workers.items():
                if process.poll() is not None:
                    raise AssertionError(
                        f"{name} exited early: {process.stderr.read().decode() if process.stderr else ''}"
                    )
            return len(self.app.control.ping(destination=list(names), timeout=0.5)) == len(names)  # type: ignore[union-attr]

        wait_for(answered, 40, interval=0.2, message=f"workers {names} did not answer ping")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CELERIAC, "--config", str(self.config), *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert done.returncode == 0, f"celeriac {' '.join(args)} -> {done.returncode}: {done.stderr}"
        return done

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def stop(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        if self.app is not None:
            self.app.close()


def _delete_exchanges(url: str, *names: str) -> None:
    """Delete a cluster's broadcast (fanout) exchanges, which outlive their subscribers."""
    from kombu.connection import Connection

    with Connection(url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for name in names:
            channel.exchange_delete(name)


@pytest.fixture(scope="module", params=["redis", "amqp"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from celeriac.plugins.redis import _testing as redis_testing

    redis_testing.require_server(redis_testing.server_url(REDIS_DB))
    node = Cluster(request.param, tmp_path_factory.mktemp(f"monitoring-{request.param}"))
    with contextlib.ExitStack() as cleanup:
        if request.param == "redis":
            url = redis_testing.server_url(REDIS_DB)
            node.write_config(url, f'{{ global_keyprefix = "{node.tag}:" }}')
            cleanup.callback(redis_testing.delete_keys, url, f"{node.tag}:")
        else:
            from celeriac.plugins.amqp import _testing as amqp_testing

            amqp_testing.require_server()
            url = amqp_testing.server_url("/")
            cleanup.enter_context(amqp_testing.broker_lock())
            node.write_config(url, "{}")
            queues = [node.queue, f"{node.queue}-w1", f"{node.queue}-new", f"{node.queue}-w3"]
            cleanup.callback(amqp_testing.delete_queues, url, *queues)
            exchanges = [f"{node.tag}.control", reply_channel(f"{node.tag}.control"), f"{node.tag}.events"]
            cleanup.callback(_delete_exchanges, url, *exchanges)
        cleanup.callback(node.stop)
        node.start_worker(node.w1, "-Q", f"{node.queue},{node.queue}-w1", "-c", "1", "--prefetch-multiplier", "2")
        node.start_worker(node.w2, "-Q", node.queue, "-c", "2")
        node.wait_ready(node.w1, node.w2)
        yield node


@pytest.fixture
def app(cluster: Cluster) -> Celeriac:
    assert cluster.app is not None
    return cluster.app


def test_status_and_inspect_report_what_is_true(cluster: Cluster, app: Celeriac, tmp_path: Path) -> None:
    w1, w2 = cluster.w1, cluster.w2
    status = cluster.cli("status", "-d", f"{w1},{w2}")
    assert f"{w1}: OK" in status.stdout and f"{w2}: OK" in status.stdout and "2 nodes online." in status.stdout
    release = tmp_path / "release"
    running = app.send_task("monitor.block", [str(release)], queue=f"{cluster.queue}-w1")
    waiting = app.send_task("monitor.block", [str(release)], queue=f"{cluster.queue}-w1")
    inspect = app.control.inspect(destination=[w1])

    def held() -> bool:
        active, reserved = inspect.active(), inspect.reserved()
        return bool(active and reserved and len(active[w1]) == 1 and len(reserved[w1]) == 1)

    wait_for(held, 20, interval=0.1)
    active = cluster.cli_json("inspect", "active", "-d", w1)
    assert [job["id"] for job in active[w1]] == [running.id]
    assert active[w1][0]["name"] == "monitor.block"
    found = cluster.cli_json("inspect", "query_task", running.id, waiting.id, "-d", f"{w1},{w2}")
    assert found[w1][running.id][0] == "active" and found[w1][waiting.id][0] == "reserved"
    assert found[w2] == {}
    assert cluster.cli_json("inspect", "scheduled", "-d", w1) == {w1: []}
    # revoke the reserved one on both workers: it is never run
    revoked = cluster.cli("control", "revoke", waiting.id, "-d", f"{w1},{w2}")
    assert f"-> {w1}: OK" in revoked.stdout and f"-> {w2}: OK" in revoked.stdout
    listed = cluster.cli_json("inspect", "revoked", "-d", f"{w1},{w2}")
    assert waiting.id in listed[w1] and waiting.id in listed[w2]
    release.touch()
    assert running.get(timeout=20) == "released"
    assert waiting.get(timeout=20, propagate=False) is not None
    assert waiting.state == states.REVOKED
    stats = cluster.cli_json("inspect", "stats", "-d", f"{w1},{w2}")
    assert stats[w1]["total"] == {"monitor.block": 1}
    assert stats[w1]["pool"]["max-concurrency"] == 1 and stats[w2]["pool"]["max-concurrency"] == 2
    assert stats[w1]["prefetch_count"] == 2 and stats[w1]["pid"] == cluster.workers[w1].pid
    assert stats[w1]["rusage"]["utime"] > 0
    assert "monitor.add" in cluster.cli_json("inspect", "registered", "-d", w2)[w2]
    queues = cluster.cli_json("inspect", "active_queues", "-d", w1)[w1]
    assert sorted(q["name"] for q in queues) == [cluster.queue, f"{cluster.queue}-w1"]
    conf = cluster.cli_json("inspect", "conf", "-d", w1)[w1]
    assert conf["control_channel"] == f"{cluster.tag}.control"
    if cluster.broker == "amqp":
        assert "****" in conf["broker_url"] and "guest:guest" not in json.dumps(conf)
    human = cluster.cli("inspect", "registered", "-d", w1).stdout
    assert f"-> {w1}: OK" in human and "    * monitor.add" in human
    unknown = cluster.cli("inspect", "nope", check=False)
    assert unknown.returncode != 0 and "unknown command 'nope'" in unknown.stderr


def test_control_commands_take_effect(cluster: Cluster, app: Celeriac) -> None:
    w1, w2 = cluster.w1, cluster.w2
    # pool size
    assert f"-> {w2}: OK pool grown by 1 to 3" in cluster.cli("control", "pool_grow", "1", "-d", w2).stdout
    assert app.control.inspect(destination=[w2]).stats()[w2]["pool"]["max-concurrency"] == 3  # type: ignore[index]
    assert "to 2" in cluster.cli("control", "pool_shrink", "-d", w2).stdout
    assert app.control.inspect(destination=[w2]).stats()[w2]["pool"]["max-concurrency"] == 2  # type: ignore[index]
    # a new queue is consumed by w2 only
    new = f"{cluster.queue}-new"
    assert "OK add consumer" in cluster.cli("control", "add_consumer", new, "-d", w2).stdout
    result = app.send_task("monitor.add", [20, 22], queue=new)
    assert result.get(timeout=20) == 42
    record = app.result_store.get(result.id)
    assert record is not None and app.decode_result(record)["worker"] == w2
    assert cluster.cli("control", "cancel_consumer", new, "-d", w2).returncode == 0
    assert new not in [q["name"] for q in app.control.inspect(destination=[w2]).active_queues()[w2]]  # type: ignore[index]
    # rate limit: one tick per minute per worker, so of four ticks two run now and two wait
    assert cluster.cli("control", "rate_limit", "monitor.tick", "1/m", "-d", f"{w1},{w2}").returncode == 0
    ticks = [app.send_task("monitor.tick", [n]) for n in range(4)]

    def two_ran_two_deferred() -> bool:
        stats = app.control.inspect(destination=[w1, w2]).stats() or {}
        ran = sum(s["total"].get("monitor.tick", 0) for s in stats.values())
        deferred = sum(s["rate_limited"] for s in stats.values())
        return ran == 2 and deferred >= 2

    wait_for(two_ran_two_deferred, 20, interval=0.2)
    assert sorted(t.state for t in ticks) == [states.PENDING, states.PENDING, states.SUCCESS, states.SUCCESS]
    bad = cluster.cli("control", "rate_limit", "monitor.tick", "fast", "-d", w1, check=False)
    assert bad.returncode == 1 and "ERROR" in bad.stdout
    # time limit: a soft limit of half a second stops a task that would run for 30 seconds
    assert cluster.cli("control", "time_limit", "monitor.block", "0.5", "-d", f"{w1},{w2}").returncode == 0
    stuck = app.send_task("monitor.block", [str(cluster.directory / "never")])
    with pytest.raises(Exception, match="SoftTimeLimitExceeded|time limit"):
        stuck.get(timeout=20)
    app.control.time_limit("monitor.block", None, None, destination=[w1, w2], reply=True)
    # autoscale needs a worker started with --autoscale
    reply = app.control.autoscale(4, 1, destination=[w1], reply=True)
    assert "error" in reply[0][w1]


def test_events_arrive_in_order_and_state_agrees_with_the_result_store(cluster: Cluster, app: Celeriac) -> None:
    w1, w2 = cluster.w1, cluster.w2
    state = State()
    seen: list[dict[str, Any]] = []

    def record(event: dict[str, Any]) -> None:
        seen.append(event)
        state.event(event)

    receiver = app.events.Receiver(handlers={"*": record})
    thread = threading.Thread(target=receiver.capture, daemon=True)
    thread.start()
    dump = subprocess.Popen(
        [*CELERIAC, "--config", str(cluster.config), "events", "--dump", "--json", "--timeout", "60"],
        cwd=cluster.directory,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None and "listening" in dump.stderr.readline()
        # with task events off, a task leaves no trace
        assert "disabled" in cluster.cli("control", "disable_events", "-d", f"{w1},{w2}").stdout
        quiet = app.send_task("monitor.add", [1, 1])
        assert quiet.get(timeout=20) == 2
        assert "enabled" in cluster.cli("control", "enable_events", "-d", f"{w1},{w2}").stdout
        results = [app.send_task("monitor.add", [n, n]) for n in range(6)] + [app.send_task("monitor.fail")]
        for result in results:
            result.get(timeout=20, propagate=False)
        wait_for(lambda: all(r.id in state.tasks and state.tasks[r.id].ready for r in results), 20)
        for result in results:
            task = state.tasks[result.id]
            assert task.state == result.state, (task, result.state)
            record_meta = app.decode_result(app.result_store.get(result.id))  # type: ignore[arg-type]
            assert task.worker == record_meta["worker"]
            kinds = [e["type"] for e in sorted(seen, key=lambda e: e["clock"]) if e.get("uuid") == result.id]
            final = "task-failed" if result.state == states.FAILURE else "task-succeeded"
            assert kinds == ["task-received", "task-started", final]
        assert state.tasks[results[-1].id].exception == "ValueError('expected failure')"
        # a heartbeat sent after the quiet task finished proves no event of it is still on its way
        done_at = max(e["timestamp"] for e in seen if e.get("uuid") in {r.id for r in results})
        for name in (w1, w2):
            wait_for(
                lambda name=name: any(
                    e["type"] == "worker-heartbeat" and e["hostname"] == name and e["timestamp"] > done_at
                    for e in list(seen)
                ),
                10,
            )
        assert quiet.id not in state.tasks
        assert {w.hostname for w in state.alive_workers()} == {w1, w2}
        # the --dump process printed the same task events
        lines: list[dict[str, Any]] = []
        assert dump.stdout is not None
        wanted = results[0].id
        while not any(e.get("uuid") == wanted and e["type"] == "task-succeeded" for e in lines):
            line = dump.stdout.readline()
            assert line, "events --dump ended early"
            lines.append(json.loads(line))
        assert [e["type"] for e in lines if e.get("uuid") == wanted] == [
            "task-received",
            "task-started",
            "task-succeeded",
        ]
    finally:
        dump.kill()
        dump.communicate()
        receiver.close()
        thread.join(5)


def test_terminate_stops_a_running_task(cluster: Cluster, app: Celeriac) -> None:
    name = f"w3@{cluster.tag}"
    cluster.start_worker(name, "-Q", f"{cluster.queue}-w3", "-P", "processes", "-c", "1")
    cluster.wait_ready(name)
    running = app.send_task("monitor.block", [str(cluster.directory / "never")], queue=f"{cluster.queue}-w3")
    inspect = app.control.inspect(destination=[name])
    wait_for(lambda: (inspect.active() or {}).get(name), 20, interval=0.1)
    reply = cluster.cli("control", "revoke", running.id, "--terminate", "--signal", "SIGKILL", "-d", name)
    assert "terminating" in reply.stdout
    assert running.get(timeout=20, propagate=False) is not None
    assert running.state == states.REVOKED
    assert app.AsyncResult(running.id).state == states.REVOKED
    assert cluster.cli("control", "shutdown", "-d", name).returncode == 0
    assert cluster.workers[name].wait(timeout=30) == 0


def test_shutdown_stops_a_worker(cluster: Cluster, app: Celeriac) -> None:
    w1, w2 = cluster.w1, cluster.w2
    assert f"-> {w2}: OK shutting down" in cluster.cli("control", "shutdown", "-d", w2).stdout
    assert cluster.workers[w2].wait(timeout=30) == 0
    assert app.control.inspect(destination=[w1, w2], timeout=0.5).ping() == {w1: {"ok": "pong"}}
