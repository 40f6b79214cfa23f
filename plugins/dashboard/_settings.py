"""The ``[celeriac.dashboard]`` settings and the parsed :class:`DashboardConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeriac import Setting

__all__ = ["SETTINGS", "DashboardConfig"]


def _d(name: str, kind: str, default: Any, doc: str, **extra: Any) -> Setting:
    return Setting(f"dashboard_{name}", kind, default, doc, section="dashboard", **extra)


SETTINGS: tuple[Setting, ...] = (
    _d("host", "str", "127.0.0.1", "Address `celeriac dashboard` listens on (non-loopback needs authentication)."),
    _d("port", "int", 5555, "Port `celeriac dashboard` listens on."),
    _d("username", "str", None, "Basic-auth user name (with `password_hash`)."),
    _d(
        "password_hash",
        "str",
        None,
        "Basic-auth password hash from `celeriac dashboard --hash-password` (scrypt).",
        secret=True,
    ),
    _d(
        "token",
        "str",
        None,
        "Bearer token accepted in `Authorization: Bearer ...` (at least 16 characters).",
        secret=True,
    ),
    _d("read_only", "bool", False, "Show the cluster but refuse every action (revoke, pool, queues, limits, send)."),
    _d("history_db", "str", None, "SQLite file that keeps task history across restarts (default: memory only)."),
    _d("history_max_tasks", "int", 10000, "Most tasks kept in the history."),
    _d("history_max_age", "float", 7 * 86400.0, "Seconds a finished task is kept in the history."),
    _d("queues", "list", [], "Extra queues to watch on the Queues page (the app's own are always watched)."),
    _d("queue_interval", "float", 2.0, "Seconds between queue-length samples."),
)


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """The dashboard's settings, read from an app's config (and CLI overrides)."""

    host: str = "127.0.0.1"
    port: int = 5555
    username: str | None = None
    password_hash: str | None = None
    token: str | None = None
    read_only: bool = False
    history_db: str | None = None
    history_max_tasks: int = 10000
    history_max_age: float = 7 * 86400.0
    queues: tuple[str, ...] = ()
    queue_interval: float = 2.0

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], **overrides: Any) -> DashboardConfig:
        values = {s.name[len("dashboard_") :]: conf.get(s.name, s.default) for s in SETTINGS}
        values.update({key: value for key, value in overrides.items() if value is not None})
        values["queues"] = tuple(values.get("queues") or ())
        return cls(**values)

    @property
    def auth_configured(self) -> bool:
        return bool(self.token) or bool(self.username and self.password_hash)
