"""Config: discovery, precedence, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from celeriac import Celeriac, ConfigError, Setting
from celeriac.config import KERNEL_SETTINGS, Config, ConfigSource, discover_config_file, mask_url
from hypothesis import given
from hypothesis import strategies as st


def write(tmp_path: Path, text: str, name: str = "celeriac.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_values_and_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[celeriac]
broker_url = "memory://cfg"
serializer = "json"
imports = []

[celeriac.worker]
pool = "solo"
concurrency = 3
queues = ["default", "mail"]

[celeriac.routes]
"proj.tasks.send_mail" = { queue = "mail" }
""",
    )
    app = Celeriac.from_config(path, environ={})
    assert app.conf.broker_url == "memory://cfg"
    assert app.conf.worker_pool == "solo"
    assert app.conf.worker_concurrency == 3
    assert app.conf.worker_queues == ["default", "mail"]
    assert app.route("proj.tasks.send_mail") == {"queue": "mail"}
    assert app.conf.origin("worker_pool") == str(path)
    assert app.conf.origin("result_store") == "default"


def test_precedence_file_then_env_then_keywords(tmp_path: Path) -> None:
    path = write(tmp_path, '[celeriac]\nbroker_url = "memory://file"\n[celeriac.worker]\nconcurrency = 2\n')
    env = {"CELERIAC_BROKER_URL": "memory://env", "CELERIAC_WORKER_CONCURRENCY": "5"}
    app = Celeriac(config_source=ConfigSource(path), environ=env)
    assert app.conf.broker_url == "memory://env"
    assert app.conf.worker_concurrency == 5
    app = Celeriac(config_source=ConfigSource(path), environ=env, broker_url="memory://kw")
    assert app.conf.broker_url == "memory://kw"
    assert app.conf.origin("broker_url") == "keyword argument"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[celeriac]\nbrokr_url = "x"\n', "[celeriac] brokr_url: unknown key; did you mean 'broker_url'?"),
        ('[celeriac.worker]\nconcurrency = "four"\n', "[celeriac.worker] concurrency: expected an integer, got 'four'"),
        ('[celeriac]\nimports = "a"\n[celeriac.worker]\nqueues = [1]\n', "[celeriac.worker] queues: expected a list"),
        ("[celeriac]\ntask_acks_late = 1\n", "[celeriac] task_acks_late: expected true or false"),
        ('[celeriac.worker]\nlog_level = "LOUD"\n', "expected one of DEBUG"),
        ("[celeriac\n", "not valid TOML"),
        ("[other]\nx = 1\n", "no [celeriac] table"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Celeriac.from_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_bad_environment_variable() -> None:
    with pytest.raises(ConfigError, match="CELERIAC_WORKER_CONCURRENCY: expected an integer"):
        Celeriac(environ={"CELERIAC_WORKER_CONCURRENCY": "many"})


def test_unknown_keyword_setting() -> None:
    with pytest.raises(ConfigError, match="broker_ur: unknown setting; did you mean 'broker_url'"):
        Celeriac(environ={}, broker_ur="memory://")


def test_unknown_plugin_in_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[celeriac]\nplugins = ["no_such_module_xyz"]\n')
    with pytest.raises(Exception, match="plugins: cannot import 'no_such_module_xyz'") as info:
        Celeriac.from_config(path, environ={})
    assert getattr(info.value, "exit_code", None) == 2


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_CONFIG", raising=False)
    assert discover_config_file(cwd=tmp_path).path is None
    write(tmp_path, '[tool.celeriac]\nbroker_url = "memory://py"\n', "pyproject.toml")
    source = discover_config_file(cwd=tmp_path)
    assert source.path == tmp_path / "pyproject.toml"
    assert source.table == "tool.celeriac"
    assert Celeriac(config_source=source, environ={}).conf.broker_url == "memory://py"
    write(tmp_path, '[celeriac]\nbroker_url = "memory://toml"\n')
    assert discover_config_file(cwd=tmp_path).path == tmp_path / "celeriac.toml"
    other = write(tmp_path, '[celeriac]\nbroker_url = "memory://env"\n', "other.toml")
    monkeypatch.setenv("CELERIAC_CONFIG", str(other))
    assert discover_config_file(cwd=tmp_path).path == other
    explicit = write(tmp_path, "[celeriac]\n", "explicit.toml")
    assert discover_config_file(explicit, cwd=tmp_path).path == explicit
    with pytest.raises(ConfigError, match="--config: config file .*missing.toml.* does not exist"):
        discover_config_file(tmp_path / "missing.toml")


def test_pyproject_without_celeriac_table_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_CONFIG", raising=False)
    write(tmp_path, '[project]\nname = "x"\n', "pyproject.toml")
    assert discover_config_file(cwd=tmp_path).path is None


def test_masking() -> None:
    assert mask_url("redis://user:secret@host:6379/0") == "redis://user:****@host:6379/0"
    assert mask_url("amqp://secret@host//") == "amqp://****@host//"
    assert mask_url("memory://") == "memory://"
    app = Celeriac(environ={}, broker_url="redis://:pw@localhost/0")
    assert "pw" not in app.conf.masked()["broker_url"]


def test_plugin_settings_are_accepted(tmp_path: Path) -> None:
    import sys
    import types

    module = types.ModuleType("celeriac_test_settings_plugin")
    from celeriac import hookimpl

    @hookimpl
    def celeriac_settings() -> list[Setting]:
        return [Setting("beat_max_interval", "float", 300.0, "test", section="beat")]

    module.celeriac_settings = celeriac_settings  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        path = write(
            tmp_path, '[celeriac]\nplugins = ["celeriac_test_settings_plugin"]\n[celeriac.beat]\nmax_interval = 5\n'
        )
        app = Celeriac.from_config(path, environ={})
        assert app.conf.beat_max_interval == 5.0
    finally:
        del sys.modules[module.__name__]


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_env_int_round_trip(value: int) -> None:
    setting = Setting("worker_concurrency", "int", section="worker")
    assert setting.parse_env(str(value)) == value


@given(
    st.lists(st.text(alphabet=st.characters(categories=["L", "N"], include_characters="._-"), min_size=1), max_size=5)
)
def test_env_list_round_trip(items: list[str]) -> None:
    setting = Setting("imports", "list")
    assert setting.parse_env(",".join(items)) == items


@given(st.sampled_from(KERNEL_SETTINGS))
def test_every_kernel_setting_accepts_its_default(setting: Setting) -> None:
    config = Config([setting])
    config.update({setting.name: setting.default})
    assert config[setting.name] == setting.default


def test_an_app_built_in_code_reads_the_discovered_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Celeriac("proj")`` reads ./celeriac.toml as a worker started there would; keywords win;
    ``ConfigSource()`` opts out; ``environ`` decides which $CELERIAC_CONFIG counts."""
    from celeriac import Celeriac
    from celeriac.config import ConfigSource

    monkeypatch.chdir(tmp_path)
    (tmp_path / "celeriac.toml").write_text(
        '[celeriac]\nbroker_url = "memory://from-file"\n[celeriac.worker]\nqueues = ["a", "b"]\n'
    )
    other = tmp_path / "other.toml"
    other.write_text('[celeriac]\nbroker_url = "memory://other"\n')
    app = Celeriac("proj", environ={})
    assert (app.conf.broker_url, app.conf.worker_queues) == ("memory://from-file", ["a", "b"])
    assert Celeriac("proj", environ={}, broker_url="memory://kw").conf.broker_url == "memory://kw"
    assert Celeriac("proj", environ={}, config_source=ConfigSource()).conf.broker_url == "sqlite:///celeriac.db"
    assert Celeriac("proj", environ={"CELERIAC_CONFIG": str(other)}).conf.broker_url == "memory://other"
