"""Configuration: declared settings, the TOML file, ``CELERIAC_*`` variables and overrides.

Precedence, lowest to highest: defaults, the config file, environment variables, keyword
arguments / CLI flags. Every key is declared by a :class:`Setting` (the kernel's below, plus
those plugins return from the ``celeriac_settings`` hook); anything else is an error naming
the file, the key and what was expected.

File discovery: ``--config FILE``, else ``$CELERIAC_CONFIG``, else ``./celeriac.toml``, else
``[tool.celeriac]`` in ``./pyproject.toml``, else defaults only.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

__all__ = [
    "KERNEL_SETTINGS",
    "Config",
    "ConfigSource",
    "Setting",
    "discover_config_file",
    "mask_url",
    "read_config_file",
]

_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of strings",
    "ints": "a list of integers",
    "dict": "a table",
}


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration key.

    ``name`` is the flat name used in code, keyword arguments and environment variables
    (``worker_concurrency`` → ``CELERIAC_WORKER_CONCURRENCY``). ``section`` places it in the
    file: ``Setting("worker_concurrency", "int", section="worker")`` is ``concurrency`` under
    ``[celeriac.worker]``. ``kind`` is one of ``str int float bool list dict``.
    """

    name: str
    kind: str
    default: Any = None
    doc: str = ""
    section: str | None = None
    optional: bool = True
    secret: bool = False
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"setting {self.name}: kind must be one of {', '.join(_KINDS)}, not {self.kind!r}")
        if self.section and not self.name.startswith(self.section + "_"):
            raise ValueError(
                f"setting {self.name}: a setting in section {self.section!r} must start with {self.section}_"
            )

    @property
    def key(self) -> str:
        """The key inside its section in the file."""
        return self.name[len(self.section) + 1 :] if self.section else self.name

    @property
    def location(self) -> str:
        """``[celeriac.worker] concurrency`` — how errors name it."""
        table = f"celeriac.{self.section}" if self.section else "celeriac"
        return f"[{table}] {self.key}"

    @property
    def env_var(self) -> str:
        return "CELERIAC_" + self.name.upper()

    def coerce(self, value: Any, where: str) -> Any:
        """Check ``value`` against the kind; return it normalised or raise :class:`ConfigError`."""
        if value is None and self.optional:
            return None
        ok = False
        if self.kind == "str":
            ok = isinstance(value, str)
        elif self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "list":
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            ok = isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
            value = list(value) if ok else value
        elif self.kind == "ints":
            if isinstance(value, str) and all(part.strip().isdigit() for part in value.split(",")):
                value = [int(part) for part in value.split(",")]
            ok = isinstance(value, list | tuple) and all(
                isinstance(item, int) and not isinstance(item, bool) for item in value
            )
            value = list(value) if ok else value
        elif self.kind == "dict":
            ok = isinstance(value, Mapping)
            value = dict(value) if ok else value
        if not ok:
            raise ConfigError(f"{where}: {self.location}: expected {_KINDS[self.kind]}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}: {self.location}: expected one of {', '.join(self.choices)}, got {value!r}")
        return value

    def parse_env(self, text: str) -> Any:
        """Turn an environment variable's text into a value of this kind."""
        where = f"environment variable {self.env_var}"
        lowered = text.strip().lower()
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {text!r}") from None
        if self.kind == "bool":
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{where}: expected true or false, got {text!r}")
        if self.kind in {"list", "ints", "dict"} and lowered.startswith(("[", "{")):
            try:
                return self.coerce(json.loads(text), where)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
        if self.kind == "dict":
            raise ConfigError(f"{where}: expected a JSON object, got {text!r}")
        return self.coerce(text, where)


def _s(name: str, kind: str, default: Any = None, doc: str = "", **extra: Any) -> Setting:
    section = name.split("_", 1)[0] if name.startswith(("worker_", "beat_")) else None
    return Setting(name, kind, default, doc, section=section, **extra)


#: Settings the kernel reads. Plugins add theirs through the ``celeriac_settings`` hook.
KERNEL_SETTINGS: tuple[Setting, ...] = (
    _s("app", "str", None, "Module and attribute of an app built in code (`proj.celery:app`)."),
    _s("imports", "list", [], "Modules that define tasks; imported by the worker and the CLI."),
    _s("plugins", "list", [], "Extra plugin modules to register (`proj.signals`)."),
    _s("disable_plugins", "list", [], "Installed plugins (entry-point names) not to load."),
    _s(
        "broker_url",
        "str",
        "sqlite:///celeriac.db",
        "Where task messages go (`sqlite:///celeriac.db`, `redis://...`).",
        secret=True,
    ),
    _s("broker_transport_options", "dict", {}, "Transport options, e.g. `visibility_timeout`."),
    _s("broker_publish_timeout", "float", 10.0, "Seconds a publish may take before it fails."),
    _s(
        "result_store",
        "str",
        "sqlite:///celeriac.db",
        "Where results go (`sqlite:///celeriac.db`, `redis://...`).",
        secret=True,
    ),
    _s("result_store_options", "dict", {}, "Result-store options."),
    _s("result_expires", "float", 86400.0, "Seconds results are kept (None: forever)."),
    _s("result_serializer", "str", "json", "Serializer of stored results."),
    _s("result_accept_content", "list", None, "Content types accepted when reading results (default: trusted)."),
    _s("serializer", "str", "json", "Serializer of task messages."),
    _s("accept_content", "list", None, "Content types a worker decodes (default: every trusted serializer)."),
    _s("compression", "str", None, "Compress task messages with this compressor (zlib, bz2, ...)."),
    _s("compression_threshold", "int", 1024, "Bodies smaller than this many bytes are not compressed."),
    _s("message_max_size", "int", 64 * 1024 * 1024, "Larger messages (after decompression) are dead-lettered."),
    _s("routes", "dict", {}, 'Task name (or glob) -> options such as `{ queue = "mail" }`.'),
    _s("task_default_queue", "str", "default", "Queue of tasks without a route or queue option."),
    _s("task_default_priority", "int", None, "Priority 0-9 (higher first) of tasks without one."),
    _s("task_acks_late", "bool", True, "Ack after the task finished and its result is stored."),
    _s("task_ignore_result", "bool", False, "Do not store results unless a task asks to."),
    _s("task_track_started", "bool", False, "Store the STARTED state when a task starts."),
    _s("task_time_limit", "float", None, "Hard time limit in seconds (pools that can enforce it)."),
    _s("task_soft_time_limit", "float", None, "Soft time limit in seconds: SoftTimeLimitExceeded in the task."),
    _s("task_always_eager", "bool", False, "Run tasks locally at apply_async (tests)."),
    _s("task_eager_propagates", "bool", True, "Eager tasks re-raise their exceptions."),
    _s("task_default_max_retries", "int", 3, "Retries before MaxRetriesExceededError (None: forever)."),
    _s("task_default_retry_delay", "float", 180.0, "Seconds before a retry when none is given."),
    _s("chord_timeout", "float", None, "Seconds an unfinished chord may take (None: result_expires)."),
    _s("worker_pool", "str", "threads", "Execution pool: solo, threads, ..."),
    _s("worker_concurrency", "int", None, "Tasks run at once (default: number of CPUs)."),
    _s("worker_queues", "list", None, "Queues to consume (default: task_default_queue)."),
    _s("worker_prefetch_multiplier", "int", 1, "Messages held per pool slot (1: only what can start now)."),
    _s("worker_name", "str", None, "Node name (default: celeriac@<hostname>)."),
    _s("worker_log_level", "str", "INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    _s("worker_shutdown_timeout", "float", 60.0, "Seconds a warm shutdown waits for running tasks."),
    _s("worker_pool_options", "dict", {}, "Options for the pool plugin."),
    _s("worker_lease_interval", "float", None, "Seconds between lease extensions (default: visibility/3)."),
    _s("worker_autoscale", "ints", None, "`[min, max]` pool size: grow under backlog, shrink when idle."),
    _s("worker_max_tasks_per_child", "int", None, "Replace a pool child after it ran this many tasks."),
    _s("worker_max_memory_per_child", "int", None, "Replace a pool child whose resident memory exceeds this (KiB)."),
    _s(
        "worker_max_deliveries",
        "int",
        10,
        "A message delivered this many times (e.g. it keeps killing workers) is dead-lettered; 0: no bound.",
    ),
    _s("worker_send_task_events", "bool", False, "Send task events (task-received, task-started, ...) for monitors."),
    _s("worker_heartbeat_interval", "float", 2.0, "Seconds between worker-heartbeat events."),
    _s("worker_enable_remote_control", "bool", True, "Answer inspect/control commands on the broadcast channel."),
    _s("worker_state_db", "str", None, "File that keeps revoked task ids across worker restarts."),
    _s("task_send_sent_event", "bool", False, "Clients send a task-sent event for every task they publish."),
    _s("control_channel", "str", "celeriac.control", "Broadcast channel of remote control (Celery: control_exchange)."),
    _s("event_channel", "str", "celeriac.events", "Broadcast channel of events (Celery: event_exchange)."),
    _s("timezone", "str", "UTC", "Time zone of crontab schedules (IANA name, e.g. Europe/Berlin)."),
    _s("beat_schedule", "dict", {}, "Periodic tasks: `[celeriac.beat.schedule.<name>]` tables."),
    _s("beat_max_loop_interval", "float", 5.0, "Most seconds beat sleeps between checks of its schedule."),
    _s("beat_lease_name", "str", "celeriac-beat", "Name of the leader lease (one per deployment)."),
    _s("beat_lease_timeout", "float", 15.0, "Seconds a dead leader's lease lasts before another beat takes over."),
    _s(
        "beat_catch_up",
        "str",
        "once",
        "Runs missed while no beat ran: `once` (send one now) or `skip`.",
        choices=("once", "skip"),
    ),
)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a config came from: a file path (and the table inside it) or nothing."""

    path: Path | None = None
    table: str = "celeriac"

    def __str__(self) -> str:
        return str(self.path) if self.path else "<defaults>"


def discover_config_file(
    explicit: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigSource:
    """Find the config file by the documented order; a missing explicit file is an error."""
    cwd = cwd or Path.cwd()
    environ = os.environ if environ is None else environ
    candidate = explicit or environ.get("CELERIAC_CONFIG") or None
    if candidate:
        path = Path(candidate)
        if not path.is_file():
            origin = "--config" if explicit else "CELERIAC_CONFIG"
            raise ConfigError(f"{origin}: config file {str(path)!r} does not exist; create it or fix the path")
        return ConfigSource(path, "tool.celeriac" if path.name == "pyproject.toml" else "celeriac")
    if (cwd / "celeriac.toml").is_file():
        return ConfigSource(cwd / "celeriac.toml")
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        try:
            with pyproject.open("rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError):
            return ConfigSource()
        if "celeriac" in data.get("tool", {}):
            return ConfigSource(pyproject, "tool.celeriac")
    return ConfigSource()


def read_config_file(source: ConfigSource) -> dict[str, Any]:
    """The raw table of ``source`` (``{}`` for none), or :class:`ConfigError` for bad TOML."""
    if source.path is None:
        return {}
    try:
        with source.path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    table: Any = data
    for part in source.table.split("."):
        table = table.get(part, {}) if isinstance(table, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{source.table}] must be a table")
    if source.table == "celeriac" and not table and data:
        raise ConfigError(f"{source}: no [celeriac] table; put the settings under [celeriac]")
    return table


class Config(Mapping[str, Any]):
    """The effective settings of an app, by flat name (``conf.worker_concurrency``).

    Read-only mapping plus attribute access. ``origin(name)`` tells where a value came from.
    """

    def __init__(self, settings: Iterable[Setting], source: ConfigSource | None = None) -> None:
        self._settings: dict[str, Setting] = {}
        for setting in settings:
            self._settings.setdefault(setting.name, setting)
        self._values: dict[str, Any] = {name: _copy(s.default) for name, s in self._settings.items()}
        self._origins: dict[str, str] = dict.fromkeys(self._settings, "default")
        self.source = source or ConfigSource()

    # -- building ---------------------------------------------------------------------------

    def load_table(self, table: Mapping[str, Any]) -> None:
        """Apply a file's ``[celeriac]`` table (with its sub-tables)."""
        where = str(self.source)
        sections = {s.section for s in self._settings.values() if s.section}
        by_location = {(s.section, s.key): s for s in self._settings.values()}
        for key, value in table.items():
            if key in sections and isinstance(value, Mapping):
                for sub_key, sub_value in value.items():
                    self._set_from(by_location, key, sub_key, sub_value, where)
            else:
                self._set_from(by_location, None, key, value, where)

    def _set_from(
        self,
        by_location: Mapping[tuple[str | None, str], Setting],
        section: str | None,
        key: str,
        value: Any,
        where: str,
    ) -> None:
        setting = by_location.get((section, key))
        table = f"celeriac.{section}" if section else "celeriac"
        if setting is None:
            known = [k for (sec, k) in by_location if sec == section]
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else "; `celeriac config --all` lists every key"
            raise ConfigError(f"{where}: [{table}] {key}: unknown key{suggestion}")
        self._values[setting.name] = setting.coerce(value, where)
        self._origins[setting.name] = where

    def load_environ(self, environ: Mapping[str, str] | None = None) -> None:
        """Apply ``CELERIAC_<NAME>`` variables."""
        environ = os.environ if environ is None else environ
        for setting in self._settings.values():
            text = environ.get(setting.env_var)
            if text is not None:
                self._values[setting.name] = setting.parse_env(text)
                self._origins[setting.name] = f"${setting.env_var}"

    def update(self, overrides: Mapping[str, Any], origin: str = "keyword argument") -> None:
        """Apply values by flat name (keyword arguments, CLI flags); ``None`` values are skipped."""
        for name, value in overrides.items():
            setting = self._settings.get(name)
            if setting is None:
                hint = difflib.get_close_matches(name, list(self._settings), n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"{origin}: {name}: unknown setting{suggestion}")
            if value is None:
                continue
            self._values[name] = setting.coerce(value, origin)
            self._origins[name] = origin

    # -- reading ----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting called {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def origin(self, name: str) -> str:
        """Where the value of ``name`` came from: ``default``, a file, ``$VAR``, ..."""
        return self._origins[name]

    def setting(self, name: str) -> Setting:
        return self._settings[name]

    def settings(self) -> list[Setting]:
        return list(self._settings.values())

    def masked(self) -> dict[str, Any]:
        """Values with secrets masked, for display: passwords inside URLs, and the whole value
        of other secret settings (keys), list items included."""
        return {name: _mask(value) if self._settings[name].secret else value for name, value in self._values.items()}


def _mask(value: Any) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return mask_url(value) if "://" in value else "****"
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return "****"


def mask_url(url: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:****@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}:****@{host}" if has_password else f"{scheme}://****@{host}"


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value
