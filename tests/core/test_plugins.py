"""Plugin loading, lookup errors, signal handlers, and a third-party plugin used without kernel changes."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, PluginError, hookimpl
from celeriac.testing import start_worker


def test_builtins_load_through_entry_points() -> None:
    app = Celeriac(environ={}, set_as_current=False)
    infos = {info.name: info for info in app.plugins.plugins()}
    assert {"inmemory", "pools", "resultstores", "serializers"} <= set(infos)
    assert infos["inmemory"].source == "built-in"
    assert "celeriac_transport" in infos["inmemory"].hooks
    assert infos["pools"].version


def test_disable_plugins_blocks_an_installed_plugin() -> None:
    app = Celeriac(environ={}, set_as_current=False, disable_plugins=["pools"])
    assert "pools" not in {info.name for info in app.plugins.plugins()}
    with pytest.raises(PluginError, match="no pool called 'threads'; installed: none"):
        app.Worker(pool="threads").start()


def test_disable_unknown_plugin_is_an_error() -> None:
    with pytest.raises(PluginError, match="disable_plugins: no plugin called 'nope'; installed: .*inmemory"):
        Celeriac(environ={}, set_as_current=False, disable_plugins=["nope"])


def test_unknown_scheme_lists_installed_transports() -> None:
    app = Celeriac(environ={}, set_as_current=False, broker_url="zmq://host")
    with pytest.raises(PluginError, match=r"no transport for zmq:// URLs; installed: .*memory://"):
        _ = app.transport
    app = Celeriac(environ={}, set_as_current=False, result_store="nosql://x")
    with pytest.raises(PluginError, match=r"no result store for nosql:// URLs; installed: .*memory://"):
        _ = app.result_store
    app = Celeriac(environ={}, set_as_current=False, broker_url="not a url")
    with pytest.raises(PluginError, match="is not a URL"):
        _ = app.transport


def test_unknown_signal_name_and_bad_handler_signature(app: Celeriac) -> None:
    with pytest.raises(PluginError, match="unknown signal 'task_sucess'"):
        app.on("task_sucess")(lambda: None)
    with pytest.raises(PluginError, match="takes bogus, which the signal does not send"):
        app.on("task_success")(lambda bogus: None)


def test_invalid_plugin_names_plugin_and_hook(app: Celeriac) -> None:
    class Bad:
        @hookimpl
        def task_success(self, not_an_argument: Any) -> None: ...

    with pytest.raises(PluginError, match="plugin 'bad' is invalid: .*not_an_argument"):
        app.register_plugin(Bad(), "bad")


def test_failing_handler_is_logged_and_others_run(app: Celeriac, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    class Broken:
        @hookimpl
        def worker_ready(self) -> None:
            raise RuntimeError("boom")

    app.register_plugin(Broken(), "broken-plugin")
    app.on("worker_ready")(lambda worker: seen.append(worker.hostname))
    with caplog.at_level(logging.ERROR, logger="celeriac.plugins"), start_worker(app, pool="solo"):
        pass
    assert len(seen) == 1
    assert "signal handler worker_ready of plugin 'broken-plugin' failed" in caplog.text


def test_configure_hook_and_plugins_from_code() -> None:
    configured: list[str] = []

    class Plugin:
        @hookimpl
        def celeriac_configure(self, app: Celeriac) -> None:
            configured.append(app.conf.broker_url)

    Celeriac(environ={}, set_as_current=False, plugins=[Plugin()], broker_url="memory://cfg-hook")
    assert configured == ["memory://cfg-hook"]


def test_cli_commands_hook(app: Celeriac) -> None:
    import click

    @click.command("hello")
    def hello() -> None:
        click.echo("hi")

    class Plugin:
        @hookimpl
        def celeriac_cli_commands(self) -> list[click.Command]:
            return [hello]

    app.register_plugin(Plugin())
    names = [c.name for c in app.plugins.cli_commands()]
    assert "hello" in names
    assert names.count("hello") == 1


def test_third_party_plugin_from_config_adds_transport_and_signal(tmp_path: Path, fixtures_on_path: Path) -> None:
    """The fixture plugin is a separate module registered only through the config's ``plugins`` key."""
    config = tmp_path / "celeriac.toml"
    url = f"loopback://{uuid.uuid4().hex}"
    config.write_text(
        f'[celeriac]\nplugins = ["celeriac_fixture_plugin"]\nbroker_url = "{url}"\n'
        f'result_store = "memory://{uuid.uuid4().hex}"\n'
    )
    app = Celeriac.from_config(config, environ={})
    import celeriac_fixture_plugin as plugin  # type: ignore[import-not-found]

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    with start_worker(app, pool="threads", concurrency=2):
        results = [mul.delay(i, 3) for i in range(20)]
        assert [r.get(timeout=10) for r in results] == [3 * i for i in range(20)]
    assert type(app.transport).__name__ == "LoopbackTransport"
    assert {r.id for r in results} <= set(plugin.SUCCEEDED)
    infos = {info.name: info for info in app.plugins.plugins()}
    assert infos["celeriac_fixture_plugin"].source == "config"
    assert "task_success" in infos["celeriac_fixture_plugin"].hooks


def test_config_plugins_import_from_the_working_directory_and_errors_name_their_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from celeriac.exceptions import PluginError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "cwdproj").mkdir()
    (tmp_path / "cwdproj" / "__init__.py").write_text("")
    (tmp_path / "cwdproj" / "signals.py").write_text("import celeriac\n")
    (tmp_path / "celeriac.toml").write_text('[celeriac]\nplugins = ["cwdproj.signals"]\nbroker_url = "memory://p"\n')
    app = Celeriac("tests", environ={})
    assert "cwdproj.signals" in [info.name for info in app.plugins.plugins()]
    with pytest.raises(PluginError, match=r"^\$CELERIAC_PLUGINS: plugins: cannot import 'nosuchmod'"):
        Celeriac("tests", environ={"CELERIAC_PLUGINS": "nosuchmod"})
    with pytest.raises(PluginError, match=r"^\$CELERIAC_DISABLE_PLUGINS: disable_plugins: no plugin called 'nope'"):
        Celeriac("tests", environ={"CELERIAC_DISABLE_PLUGINS": "nope"})


def test_celery_style_worker_signal_handlers_get_the_worker_as_sender(app: Celeriac) -> None:
    from celeriac.testing import start_worker

    seen: list[Any] = []
    app.on("worker_ready")(lambda sender: seen.append(("ready", sender)))
    app.on("worker_shutdown")(lambda sender=None, **kwargs: seen.append(("shutdown", sender)))
    with start_worker(app, pool="solo") as worker:
        pass
    assert seen == [("ready", worker), ("shutdown", worker)]
