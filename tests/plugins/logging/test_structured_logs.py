"""JSON log lines and the task id/name on every line a task writes (plain and JSON)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac
from celeriac.plugins.logging import JsonFormatter, TaskContextFilter
from celeriac.testing import start_worker

from tests._cli import Process, cli_env

REDIS_DB = 8
user_logger = logging.getLogger("user.code")


@pytest.fixture
def root_handler() -> Iterator[tuple[logging.Handler, io.StringIO]]:
    """A handler on the root logger (as a deployment's logging config has), removed after."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    original = logging.Formatter("%(levelname)s %(name)s %(message)s")
    handler.setFormatter(original)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = user_logger.level
    user_logger.setLevel(logging.INFO)
    try:
        yield handler, stream
    finally:
        root.removeHandler(handler)
        user_logger.setLevel(old_level)


def make_app(**settings: Any) -> Celeriac:
    name = uuid.uuid4().hex
    return Celeriac("logs", broker_url=f"memory://{name}", result_store=f"memory://{name}", environ={}, **settings)


def add_then_log_outside(app: Celeriac) -> str:
    """Run ``logs.add`` (it logs "adding") on a worker of ``app``, then log "outside"; close the
    app and return the task's id."""

    @app.task(name="logs.add")
    def add(x: int, y: int) -> int:
        user_logger.info("adding")
        return x + y

    try:
        with start_worker(app):
            result = add.delay(1, 2)
            assert result.get(timeout=10) == 3
            user_logger.info("outside")
    finally:
        app.close()
    return result.id


def test_json_lines_parse_and_carry_the_task(root_handler: tuple[logging.Handler, io.StringIO]) -> None:
    handler, stream = root_handler
    original = handler.formatter
    app = make_app(logging_format="json")

    @app.task(name="logs.charge")
    def charge(amount: int) -> int:
        user_logger.info("charging %d", amount, extra={"customer": "c-42"})
        try:
            raise KeyError("card")
        except KeyError:
            user_logger.exception("declined")
        return amount

    try:
        with start_worker(app):
            assert isinstance(handler.formatter, JsonFormatter)
            result = charge.delay(7)
            assert result.get(timeout=10) == 7
            user_logger.info("between tasks")
    finally:
        app.close()
    assert handler.formatter is original  # restored at worker_shutdown
    assert all(not isinstance(f, TaskContextFilter) for f in handler.filters)

    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    charging = next(r for r in records if r["message"] == "charging 7")
    assert charging["task_id"] == result.id
    assert charging["task_name"] == "logs.charge"
    assert charging["level"] == "INFO"
    assert charging["logger"] == "user.code"
    assert charging["customer"] == "c-42"
    declined = next(r for r in records if r["message"] == "declined")
    assert declined["task_id"] == result.id
    assert "KeyError: 'card'" in declined["exc_info"]
    between = next(r for r in records if r["message"] == "between tasks")
    assert "task_id" not in between


def test_plain_lines_carry_the_task(root_handler: tuple[logging.Handler, io.StringIO]) -> None:
    _, stream = root_handler
    task_id = add_then_log_outside(make_app())
    lines = stream.getvalue().splitlines()
    assert f"INFO user.code logs.add[{task_id}]: adding" in lines
    assert "INFO user.code outside" in lines


def test_task_context_can_be_switched_off(root_handler: tuple[logging.Handler, io.StringIO]) -> None:
    _, stream = root_handler
    add_then_log_outside(make_app(logging_task_context=False))
    assert "INFO user.code adding" in stream.getvalue().splitlines()


def test_the_filter_in_your_own_format(root_handler: tuple[logging.Handler, io.StringIO]) -> None:
    handler, stream = root_handler
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(logging.Formatter("%(task_name)s|%(task_id)s|%(message)s"))
    task_id = add_then_log_outside(make_app(logging_task_context=False))
    lines = stream.getvalue().splitlines()
    assert f"logs.add|{task_id}|adding" in lines
    assert "||outside" in lines


@pytest.mark.timeout(90)
def test_processes_pool_children_write_json_with_the_task(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    user_logger.setLevel(logging.INFO)
    app = make_app(logging_format="json")

    @app.task(name="logs.pid")
    def pid() -> int:
        user_logger.info("in a child")
        return os.getpid()

    try:
        with start_worker(app, pool="processes", concurrency=1):
            result = pid.delay()
            child = result.get(timeout=20)
    finally:
        root.removeHandler(handler)
        handler.close()
        user_logger.setLevel(logging.NOTSET)
        app.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    line = next(r for r in records if r["message"] == "in a child")
    assert child != os.getpid()
    assert line["process"] == child
    assert line["task_id"] == result.id


@pytest.fixture
def redis_url() -> Iterator[str]:
    from celeriac.plugins.redis import _testing

    url = _testing.server_url(REDIS_DB)
    _testing.require_server(url)
    prefix = f"test-logs-{uuid.uuid4().hex[:12]}:"
    yield f"{url}?global_keyprefix={prefix}"
    _testing.delete_keys(url, prefix)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_worker_subprocess_logs_json(tmp_path: Path, redis_url: str) -> None:
    queue = f"logs-e2e-{uuid.uuid4().hex[:8]}"
    (tmp_path / "celeriac.toml").write_text(
        f"""
[celeriac]
imports = ["obs_tasks"]
broker_url = "{redis_url}"
result_store = "{redis_url}"

[celeriac.worker]
pool = "processes"
concurrency = 1
queues = ["{queue}"]
"""
    )
    process = Process(["worker", "-l", "info", "--log-format", "json", "--metrics-port", "0"], tmp_path, cli_env())
    client = Celeriac("client", broker_url=redis_url, result_store=redis_url, environ={})
    try:
        process.wait_for_line(" ready: pool=")
        result = client.send_task("obs_tasks.add", [20, 22], queue=queue)
        assert result.get(timeout=30) == 42
    finally:
        client.close()
        code = process.stop(timeout=30)
    lines = process.lines
    assert code == 0, process.stderr
    banner = re.compile(r"^celeriac \S+: broker ")
    records = [json.loads(line) for line in lines if not banner.match(line)]  # every log line is JSON
    # ... including what other plugins log at worker_init: the logging plugin installs first
    assert any(r["message"].startswith("metrics on http://127.0.0.1:") for r in records)
    adding = next(r for r in records if r["message"] == "adding 20 and 22")
    assert adding["task_id"] == result.id
    assert adding["task_name"] == "obs_tasks.add"
    assert adding["process"] != process.pid  # written in the pool child, whose only thread is its main one
    assert adding["thread"] == "MainThread"
    assert any(r["message"].startswith(f"Task obs_tasks.add[{result.id}] succeeded") for r in records)


def test_a_task_id_from_extra_is_kept_outside_a_task(root_handler: tuple[logging.Handler, io.StringIO]) -> None:
    handler, stream = root_handler
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JsonFormatter())
    user_logger.info("settled", extra={"task_id": "abc", "task_name": "proj.add"})
    user_logger.info("plain")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["task_id"], first["task_name"]) == ("abc", "proj.add")
    assert "task_id" not in second
