"""Structured logs: JSON log lines on a switch, and the task id and name on every line a task writes.

::

    [celeriac.logging]
    format = "json"             # or "text" (the default); CLI: celeriac worker --log-format json
    task_context = true         # put the task-context filter and formatter on the handlers

At ``worker_init`` (and in every pool process at ``worker_process_init``) the plugin puts a
filter on the root logger's handlers that adds ``task_id`` and ``task_name`` to every record
written while a task runs -- the worker's own lines and those of user code through the
standard :mod:`logging` module alike -- and a formatter: with ``format = "text"`` a task's
lines read ``[time: INFO/thread] proj.add[1b9c...]: message``; with ``format = "json"`` every
line is one JSON object::

    {"time": "2025-01-01T12:00:00.000+00:00", "level": "INFO", "logger": "proj.tasks",
     "message": "charging card", "process": 4242, "thread": "celeriac-pool-0",
     "task_id": "1b9c...", "task_name": "proj.tasks.charge"}

with ``exc_info`` (the traceback) when there is one and any ``extra={...}`` fields. The
handlers are restored at ``worker_shutdown``. :class:`TaskContextFilter`,
:class:`JsonFormatter` and :class:`TaskTextFormatter` are usable in your own logging config
(``%(task_id)s`` and ``%(task_name)s`` are empty outside a task).

Outside a task the filter keeps ``task_id`` / ``task_name`` a record already has (from
``extra={"task_id": ...}``). The worker's own ``Task name[id] received`` / ``succeeded`` lines
are written by its consumer and result threads, not while the task runs: they carry the task
in the message text only, not as fields.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Sequence
from typing import Any

import celeriac
from celeriac.plugins.logging._formatting import (
    JsonFormatter,
    TaskContextFilter,
    TaskTextFormatter,
    current_task,
    install,
    uninstall,
)

__all__ = [
    "JsonFormatter",
    "TaskContextFilter",
    "TaskTextFormatter",
    "celeriac_settings",
    "celeriac_worker_options",
    "current_task",
    "task_postrun",
    "task_prerun",
    "worker_init",
    "worker_process_init",
    "worker_shutdown",
]

SETTINGS = (
    celeriac.Setting(
        "logging_format",
        "str",
        "text",
        "Worker log lines as `text` or `json` (`--log-format`).",
        section="logging",
        choices=("text", "json"),
    ),
    celeriac.Setting(
        "logging_task_context",
        "bool",
        True,
        "Add the running task's id and name to every log line it writes.",
        section="logging",
    ),
)

_lock = threading.Lock()
#: workers of this process that installed the formatting, and the processes it was installed in
_installed: dict[int, int] = {}
_tokens: dict[str, contextvars.Token[tuple[str, str] | None]] = {}
#: the process each worker of this process started in (to tell a forked pool child)
_worker_pids: dict[int, int] = {}


@celeriac.hookimpl
def celeriac_settings() -> Sequence[celeriac.Setting]:
    """The ``[celeriac.logging]`` settings."""
    return SETTINGS


@celeriac.hookimpl
def celeriac_worker_options() -> Sequence[Any]:
    """``celeriac worker --log-format json``."""
    import click

    return [
        click.Option(
            ["--log-format", "logging_format"],
            type=click.Choice(["text", "json"]),
            help="Log lines as text or JSON objects.",
        )
    ]


def _enabled(app: celeriac.Celeriac) -> bool:
    return bool(app.conf.logging_task_context) or app.conf.logging_format == "json"


def _install(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    import os

    key = id(worker)
    with _lock:
        if _installed.get(key) == os.getpid():
            return  # an in-process pool: worker_process_init runs in the worker process itself
        _installed[key] = os.getpid()
    install(app.conf.logging_format, app.conf.worker_log_level)


@celeriac.hookimpl(tryfirst=True)
def worker_init(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    """Install the filter and formatter on the worker process's handlers -- before any other
    plugin's ``worker_init`` logs (``metrics on http://...``), so every line is formatted."""
    import os

    _worker_pids[id(worker)] = os.getpid()
    if _enabled(app):
        _install(app, worker)


@celeriac.hookimpl(tryfirst=True)
def worker_process_init(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    """Install them in a pool child too (a forked child has them already; a spawned one not).

    A forked child's only thread is the copy of the thread that forked it (the pool's
    supervisor) and kept its name; it is the child's main thread, so it is named so."""
    import os

    parent = _worker_pids.get(id(worker))
    if parent is not None and parent != os.getpid():
        threading.current_thread().name = "MainThread"
    if _enabled(app):
        _install(app, worker)


@celeriac.hookimpl
def worker_shutdown(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    """Restore the handlers as they were."""
    with _lock:
        installed = _installed.pop(id(worker), None) is not None
        _worker_pids.pop(id(worker), None)
    if installed:
        uninstall()


@celeriac.hookimpl
def task_prerun(task: celeriac.Task[..., Any], task_id: str) -> None:
    """Remember the running task for :class:`TaskContextFilter` (always: your own logging config
    can use the filter even when the plugin does not format)."""
    _tokens[task_id] = current_task.set((task_id, task.name))


@celeriac.hookimpl
def task_postrun(task_id: str) -> None:
    token = _tokens.pop(task_id, None)
    if token is not None:
        current_task.reset(token)
