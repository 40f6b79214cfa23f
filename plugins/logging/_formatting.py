"""The task-context filter, the JSON and text formatters, and installing them on handlers."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "TaskContextFilter", "TaskTextFormatter", "current_task", "install", "uninstall"]

#: ``(task id, task name)`` of the task running in this thread / asyncio task, set by the
#: plugin's ``task_prerun`` and reset by its ``task_postrun``.
current_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "celeriac_logging_task", default=None
)

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "task_id", "task_name"}


class TaskContextFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` to every record (empty strings outside a task, unless
    the record has them from ``extra=``), so formats can use ``%(task_id)s``. Never drops a
    record."""

    def filter(self, record: logging.LogRecord) -> bool:
        running = current_task.get()
        if running is not None:
            record.task_id, record.task_name = running
        else:
            record.task_id = getattr(record, "task_id", "")
            record.task_name = getattr(record, "task_name", "")
        return True


class TaskTextFormatter(logging.Formatter):
    """Formats with ``inner``; a line written while a task runs gets ``name[id]: `` before the
    message (as Celery's task log format)."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", "")
        if not task_id:
            return self.inner.format(record)
        copy = logging.makeLogRecord(record.__dict__)
        copy.msg = f"{getattr(record, 'task_name', '')}[{task_id}]: {record.getMessage()}"
        copy.args = None
        return self.inner.format(copy)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    ``process``, ``thread``, ``task_id`` and ``task_name`` (in a task), ``exc_info`` (the
    formatted traceback), ``stack_info``, and any ``extra=`` fields (as text when not JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        task_id = getattr(record, "task_id", "")
        if task_id:
            data["task_id"] = task_id
            data["task_name"] = getattr(record, "task_name", "")
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        return json.dumps(data, default=str, ensure_ascii=False)


_lock = threading.Lock()
_installs = 0
#: handler -> the formatter it had before (restored by :func:`uninstall`).
_saved: dict[logging.Handler, logging.Formatter | None] = {}
_filter = TaskContextFilter()
_added: list[logging.Handler] = []


def install(log_format: str, level: str | None = None) -> None:
    """Put the filter and the formatter on every root handler (idempotent; counted, so each
    call is undone by one :func:`uninstall`). A process without handlers (a spawned pool
    child) gets one on stderr."""
    global _installs
    with _lock:
        _installs += 1
        root = logging.getLogger()
        if not root.handlers:
            stderr = logging.StreamHandler(sys.stderr)
            root.addHandler(stderr)
            _added.append(stderr)
            if level:
                root.setLevel(level)
        for handler in root.handlers:
            if handler in _saved:
                continue
            _saved[handler] = handler.formatter
            handler.addFilter(_filter)
            if log_format == "json":
                handler.setFormatter(JsonFormatter())
            else:
                handler.setFormatter(TaskTextFormatter(handler.formatter))


def uninstall() -> None:
    """Undo the last :func:`install`; the last one restores every handler as it was."""
    global _installs
    with _lock:
        _installs = max(0, _installs - 1)
        if _installs:
            return
        for handler, formatter in _saved.items():
            handler.removeFilter(_filter)
            handler.setFormatter(formatter)
        _saved.clear()
        root = logging.getLogger()
        for handler in _added:
            root.removeHandler(handler)
        _added.clear()
