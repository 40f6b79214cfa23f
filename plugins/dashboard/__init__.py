"""The web dashboard: live monitoring and remote control of a celeriac cluster in the browser
(what Flower does for Celery), built in. Needs the ``dashboard`` extra::

    pip install 'celeriac[dashboard]'
    celeriac dashboard [--host 127.0.0.1] [--port 5555] [--read-only] [--history-db FILE]

Pages: Workers, Worker detail (pool grow/shrink/autoscale, queues, rate and time limits,
masked config, stats, shutdown), Tasks (server-side filtered, sorted and paginated), Task detail
(revoke/terminate), Queues and Graphs, updated live over server-sent events. A JSON API under
``/api`` (OpenAPI at ``/api/openapi.json``), ``/metrics`` (Prometheus) and ``/healthz``.

Settings (``[celeriac.dashboard]``, or ``CELERIAC_DASHBOARD_*``): ``host``, ``port``,
``username`` + ``password_hash`` (``celeriac dashboard --hash-password``) or ``token``,
``read_only``, ``history_db`` (SQLite; memory otherwise), ``history_max_tasks``,
``history_max_age``, ``queues``, ``queue_interval``. A non-loopback ``host`` without
authentication is refused. Workers must send task events (``celeriac worker -E`` or
``[celeriac.worker] send_task_events = true``) for tasks to appear.

In code::

    from celeriac.plugins.dashboard import create_app

    web = create_app(app)  # an ASGI app; serve it with uvicorn
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import celeriac

from ._settings import SETTINGS, DashboardConfig

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["DashboardConfig", "celeriac_cli_commands", "celeriac_settings", "create_app", "hash_password"]


@celeriac.hookimpl
def celeriac_settings() -> Sequence[celeriac.Setting]:
    """The ``[celeriac.dashboard]`` settings."""
    return SETTINGS


@celeriac.hookimpl
def celeriac_cli_commands() -> Sequence[Any]:
    """``celeriac dashboard`` (a :class:`click.Command`; click is imported only here)."""
    from ._cli import dashboard_command

    return [dashboard_command]


def create_app(app: celeriac.Celeriac, config: DashboardConfig | None = None, **options: Any) -> Starlette:
    """The dashboard for ``app`` as an ASGI application (see :func:`._web.create_app`)."""
    from ._cli import _require_extra

    _require_extra()
    from ._web import create_app as build

    return build(app, config, **options)


def hash_password(password: str) -> str:
    """A scrypt hash for ``[celeriac.dashboard] password_hash``."""
    from ._security import hash_password as make_hash

    return make_hash(password)
