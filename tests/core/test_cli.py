"""The CLI in-process: commands, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celeriac.cli import main
from celeriac.testing import start_worker, wait_for


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CELERIAC_CONFIG", raising=False)
    for key in [k for k in __import__("os").environ if k.startswith("CELERIAC_")]:
        monkeypatch.delenv(key)
    return tmp_path


def test_bad_config_exits_2_with_one_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "celeriac.toml").write_text("[celeriac.worker]\nconcurrency = 'x'\n")
    code, out, err = run(["config"], capsys)
    assert (code, out) == (2, "")
    assert err.strip() == (
        f"celeriac: {in_tmp / 'celeriac.toml'}: [celeriac.worker] concurrency: expected an integer, got 'x'"
    )
    assert "Traceback" not in err


def test_missing_config_file(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--config", "nope.toml", "plugins"], capsys)
    assert code == 2
    assert "config file 'nope.toml' does not exist" in err


def test_config_shows_values_origins_and_masks_secrets(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "celeriac.toml").write_text('[celeriac]\nbroker_url = "memory://u:hunter2@x"\n')
    code, out, _ = run(["config"], capsys)
    assert code == 0
    assert "hunter2" not in out
    assert f'[celeriac] broker_url = "memory://u:****@x"  # {in_tmp / "celeriac.toml"}' in out
    assert '[celeriac.worker] pool = "threads"  # default' in out
    code, out, _ = run(["config", "--json"], capsys)
    assert json.loads(out)["broker_url"] == "memory://u:****@x"


def test_plugins_lists_name_version_source_hooks(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["plugins", "--json"], capsys)
    assert code == 0
    listed = {p["name"]: p for p in json.loads(out)}
    assert listed["inmemory"]["source"] == "built-in"
    assert "celeriac_transport" in listed["inmemory"]["hooks"]
    code, out, _ = run(["plugins"], capsys)
    assert "hooks: celeriac_pool, celeriac_pool_names" in out


def test_call_refuses_a_process_local_broker_without_a_worker(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "celeriac.toml").write_text('[celeriac]\nbroker_url = "memory://"\n')
    code, _, err = run(["call", "x.y"], capsys)
    assert code == 1
    assert "only reaches workers inside this process" in err


def test_call_bad_json(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["call", "x.y", "--args", "[1,"], capsys)
    assert code == 1
    assert err.startswith("celeriac: --args: not valid JSON")


def test_call_wait_result_and_purge_with_an_app_from_code(
    fixtures_on_path: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cli_app  # type: ignore[import-not-found]

    with start_worker(cli_app.app, pool="threads", concurrency=2):
        code, out, err = run(
            ["-A", "cli_app:app", "call", "cli.add", "--args", "[2, 3]", "--wait", "--timeout", "10"], capsys
        )
        assert (code, out.strip()) == (0, "5")
        task_id = err.strip()
        code, out, _ = run(["-A", "cli_app:app", "result", task_id], capsys)
        shown: dict[str, Any] = json.loads(out)
        assert shown["state"] == "SUCCESS"
        assert shown["result"] == 5
        code, out, err = run(["-A", "cli_app:app", "call", "cli.fail", "--wait", "--timeout", "10"], capsys)
        assert code == 1
        assert "failed: KeyError: 'missing thing'" in err
        code, out, _ = run(["-A", "cli_app:app", "call", "cli.add", "--args", "[1, 1]"], capsys)
        assert code == 0
        assert len(out.strip()) == 36
    cli_app.app.send_task("cli.add", [1, 2], queue="to-purge")
    code, out, _ = run(["-A", "cli_app:app", "purge", "-Q", "to-purge", "-f"], capsys)
    assert out.strip() == "purged 1 message from to-purge"


def test_bad_app_spec(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["-A", "no_such_module_q:app", "plugins"], capsys)
    assert code == 2
    assert "-A/--app: cannot import 'no_such_module_q'" in err


@pytest.mark.timeout(90)
def test_demo_runs_a_worker_process_through_sqlite(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["demo", "-n", "5"], capsys)
    assert code == 0
    assert "broker and results: sqlite:///" in out
    assert "results [0, 2, 4, 6, 8]" in out
    assert "ZeroDivisionError" in out
    assert "-> 42 (SUCCESS)" in out
    assert "slow_square x4 on 2 worker threads -> [0, 1, 4, 9]" in out
    assert "worker process stopped (exit code 0)" in out


def test_call_and_result_between_processes_with_the_default_config(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No config at all: `celeriac call` reaches a `celeriac worker` process through ./celeriac.db."""
    import subprocess
    import sys

    (in_tmp / "defaulttasks.py").write_text(
        "from celeriac import shared_task\n\n@shared_task(name='defaults.mul')\ndef mul(x, y):\n    return x * y\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CELERIAC_")}
    env["CELERIAC_IMPORTS"] = "defaulttasks"
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("celeriac")), "worker", "-c", "1"],
        cwd=in_tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        code, out, err = run(["call", "defaults.mul", "--args", "[6, 7]", "--wait", "--timeout", "30"], capsys)
        assert (code, out.strip()) == (0, "42"), err
        assert (in_tmp / "celeriac.db").exists()
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr


def test_plugin_cli_command_from_config(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "cmdplugin.py").write_text(
        "import click, celeriac\n"
        "@click.command('hello')\n"
        "def hello():\n    click.echo('hello from a plugin')\n"
        "@celeriac.hookimpl\n"
        "def celeriac_cli_commands():\n    return [hello]\n"
    )
    (in_tmp / "celeriac.toml").write_text('[celeriac]\nplugins = ["cmdplugin"]\n')
    import sys

    sys.path.insert(0, str(in_tmp))
    try:
        code, out, _ = run(["hello"], capsys)
    finally:
        sys.path.remove(str(in_tmp))
        sys.modules.pop("cmdplugin", None)
    assert (code, out.strip()) == (0, "hello from a plugin")


def test_an_unreachable_broker_is_one_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "celeriac.toml").write_text(
        '[celeriac]\nbroker_url = "redis://127.0.0.1:1/0"\nresult_store = "memory://"\nbroker_publish_timeout = 0.5\n'
    )
    code, out, err = run(["call", "x.y"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("celeriac: ")
    assert len(err.strip().splitlines()) == 1
    assert "127.0.0.1:1" in err


def test_plugins_add_worker_options_that_override_their_setting(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], fixtures_on_path: Path
) -> None:
    """The ``celeriac_worker_options`` hook: the option shows in --help and its value reaches app.conf."""
    import worker_option_plugin

    (in_tmp / "celeriac.toml").write_text(
        '[celeriac]\nbroker_url = "memory://opts"\nresult_store = "memory://opts"\nplugins = ["worker_option_plugin"]\n'
    )
    code, out, _ = run(["worker", "--help"], capsys)
    assert code == 0
    assert "--greeting-word" in out
    worker_option_plugin.SEEN.clear()
    code, _, err = run(["worker", "-P", "solo", "--greeting-word", "salut"], capsys)
    assert code == 0, err
    assert worker_option_plugin.SEEN == ["salut"]


def test_config_flag_reaches_an_app_built_in_code(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (in_tmp / "codeapp.py").write_text('from celeriac import Celeriac\napp = Celeriac("codeapp")\n')
    (in_tmp / "elsewhere.toml").write_text('[celeriac]\nbroker_url = "memory://from-flag"\n')
    monkeypatch.syspath_prepend(str(in_tmp))
    monkeypatch.setenv("CELERIAC_CONFIG", "")  # restored (removed) after the test
    code, out, err = run(["--config", "elsewhere.toml", "-A", "codeapp:app", "config", "--json"], capsys)
    assert code == 0, err
    assert "memory://from-flag" in out


def test_worker_logfile_pidfile_and_time_limit_flags(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], fixtures_on_path: Path
) -> None:
    import os

    import worker_option_plugin

    (in_tmp / "celeriac.toml").write_text(
        '[celeriac]\nbroker_url = "memory://flags"\nresult_store = "memory://flags"\n'
        'plugins = ["worker_option_plugin"]\n'
    )
    worker_option_plugin.LIMITS.clear()
    argv = ["worker", "-P", "solo", "--logfile", "w.log", "--pidfile", "w.pid", "--time-limit", "5"]
    code, _, err = run([*argv, "--soft-time-limit", "3"], capsys)
    assert code == 0, err
    assert worker_option_plugin.LIMITS == [(5.0, 3.0)]
    assert "worker ready, greeting hello" in (in_tmp / "w.log").read_text()  # the log went to the file
    assert not (in_tmp / "w.pid").exists()  # removed at exit
    (in_tmp / "w.pid").write_text(f"{os.getppid()}\n")  # a live process holds it
    code, _, err = run(argv, capsys)
    assert code == 1
    assert err.strip() == f"celeriac: --pidfile w.pid: process {os.getppid()} is running; stop it or use another file"


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_dead_letter_lists_requeues_and_purges(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], backend: str, request: pytest.FixtureRequest
) -> None:
    import uuid

    from celeriac import Celeriac

    if backend == "redis":
        from tests.core.conftest import WORKFLOW_BACKENDS

        settings = WORKFLOW_BACKENDS["redis"](uuid.uuid4().hex, request)
        url = settings["broker_url"]
        options = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items() if key != "broker_url")
    else:
        url, options = f"memory://dl-{uuid.uuid4().hex}", ""
    queue = f"dl-{uuid.uuid4().hex[:8]}"
    (in_tmp / "celeriac.toml").write_text(f'[celeriac]\nbroker_url = "{url}"\n{options}')
    app = Celeriac("tests", environ={})
    try:
        for number in range(3):
            app.send_task("no.such.task", [number], queue=queue)
        dead = app.transport.dead_letter_queue(queue)
        with start_worker(app, queues=[queue]):
            wait_for(lambda: app.transport.queue_length(dead) == 3)
        code, out, _ = run(["dead-letter", queue, "--json"], capsys)
        assert code == 0
        listed = [json.loads(line) for line in out.splitlines()]
        assert sorted(entry["args"] for entry in listed) == ["(0,)", "(1,)", "(2,)"]
        assert all("no.such.task" in entry["reason"] and entry["queue"] == queue for entry in listed)
        assert app.transport.queue_length(dead) == 3  # listing keeps them
        code, _, err = run(["dead-letter", queue, "--requeue", "--limit", "2"], capsys)
        assert (code, err.strip()) == (0, f"requeued 2 messages to {queue}")
        assert app.transport.queue_length(queue) == 2
        assert app.transport.queue_length(dead) == 1
        requeued = app.transport.fetch([queue], limit=5, timeout=1)
        assert all(not any(k.startswith("x-death") for k in d.envelope.headers) for d in requeued)
        app.transport.ack_many(requeued)
        code, out, _ = run(["dead-letter", queue, "--purge"], capsys)
        assert (code, out.strip()) == (0, f"purged 1 message from {dead}")
    finally:
        app.close()
