"""The worker's events: task events (when enabled) and worker heartbeats (always).

Task events are appended to the dispatcher's buffer by the thread where the step happens
(consumer: received, started, revoked; settler: succeeded, failed, retried, rejected) and
broadcast in batches by the dispatcher's thread. A heartbeat thread sends ``worker-online``,
``worker-heartbeat`` every ``worker_heartbeat_interval`` seconds and ``worker-offline``.
"""

from __future__ import annotations

import itertools
import os
import platform
import threading
from typing import TYPE_CHECKING, Any

from ..events import EventDispatcher

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["WorkerEvents"]

_REPR_LIMIT = 1024


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to ``_REPR_LIMIT`` characters. A long list, tuple or dict (each
    item adds at least 3 characters) is cut to its first ``_REPR_LIMIT`` items before the
    repr, which gives the same text without building the repr of a huge result."""
    kind = type(value)
    if kind is list or kind is tuple:
        if len(value) > _REPR_LIMIT:
            value = value[:_REPR_LIMIT]
    elif kind is dict and len(value) > _REPR_LIMIT:
        value = dict(itertools.islice(value.items(), _REPR_LIMIT))
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("celeriac")
    except PackageNotFoundError:
        return "0"


class WorkerEvents:
    """Events of one worker; ``task_events`` is the run-time switch for task events."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        conf = worker.app.conf
        assert worker.transport is not None
        self.dispatcher = EventDispatcher(worker.app, worker.hostname, True, transport=worker.transport)
        self.task_events: bool = bool(conf.worker_send_task_events)
        self.interval: float = float(conf.worker_heartbeat_interval or 2.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._identity = {"sw_ident": "celeriac", "sw_ver": _version(), "sw_sys": platform.system()}

    def send(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        self.dispatcher.send(type, **fields)

    def _worker_fields(self) -> dict[str, Any]:
        worker = self.worker
        try:
            loadavg = [round(value, 2) for value in os.getloadavg()]
        except OSError:
            loadavg = []
        return {
            "freq": self.interval,
            "active": worker.active_count,
            "processed": sum(worker.stats.total.values()),
            "loadavg": loadavg,
            **self._identity,
        }

    def start(self) -> None:
        self.send("worker-online", **self._worker_fields())
        self.dispatcher.flush()
        self._thread = threading.Thread(target=self._beat, name="celeriac-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.send("worker-heartbeat", **self._worker_fields())

    def stop(self) -> None:
        """Send ``worker-offline`` and everything still buffered."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.send("worker-offline", **self._worker_fields())
        self.dispatcher.close()
