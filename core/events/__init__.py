"""Events: what workers (and, optionally, clients) report about tasks and themselves.

Events use Celery's names and fields. Workers send them on the broker's broadcast channel
``event_channel`` (default ``celeriac.events``), in batches (one broadcast per ~100 ms):

* ``task-sent`` (client, with ``task_send_sent_event``), ``task-received``, ``task-started``,
  ``task-succeeded``, ``task-failed``, ``task-retried``, ``task-revoked``, ``task-rejected``
  (workers, with ``worker_send_task_events`` / ``celeriac worker -E`` / ``enable_events``);
* ``worker-online``, ``worker-heartbeat`` (every ``worker_heartbeat_interval`` seconds) and
  ``worker-offline`` (always).

Every event is a dict with ``type``, ``hostname``, ``timestamp``, ``utcoffset``, ``pid``,
``clock`` and, once received, ``local_received``. :class:`EventReceiver` receives them and
:class:`State` turns them into a bounded model of the cluster::

    state = app.events.State()
    with app.events.Receiver(handlers={"*": state.event}) as receiver:
        receiver.capture(timeout=5.0)
    for task in state.tasks_by_time(limit=10):
        print(task.uuid, task.name, task.state, task.worker)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._dispatcher import CONTENT_TYPE, EventDispatcher, decode_events, encode_events, event
from ._receiver import EventReceiver
from ._state import HEARTBEAT_SLACK, State, TaskState, WorkerState

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = [
    "CONTENT_TYPE",
    "HEARTBEAT_SLACK",
    "EventDispatcher",
    "EventReceiver",
    "Events",
    "State",
    "TaskState",
    "WorkerState",
    "decode_events",
    "encode_events",
    "event",
]


class Events:
    """``app.events``: shortcuts bound to one app."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._client: EventDispatcher | None = None

    def Dispatcher(  # noqa: N802 - Celery's name
        self, hostname: str | None = None, enabled: bool = True, **options: Any
    ) -> EventDispatcher:
        return EventDispatcher(self.app, hostname, enabled, **options)

    def Receiver(  # noqa: N802 - Celery's name
        self, handlers: Mapping[str, Callable[[dict[str, Any]], None]] | None = None, **options: Any
    ) -> EventReceiver:
        return EventReceiver(self.app, handlers, **options)

    def State(self, **options: Any) -> State:  # noqa: N802 - Celery's name
        return State(**options)

    @property
    def client_dispatcher(self) -> EventDispatcher:
        """The dispatcher that sends this process's ``task-sent`` events (created on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import os
                    import socket

                    self._client = EventDispatcher(self.app, f"client-{os.getpid()}@{socket.gethostname()}")
        return self._client

    def close(self) -> None:
        """Flush and stop the client dispatcher (if one was started)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
