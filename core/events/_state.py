"""The in-memory cluster state a monitor builds from events: :class:`State`."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import states

__all__ = ["HEARTBEAT_SLACK", "State", "TaskState", "WorkerState"]

#: A worker is alive while its last heartbeat is younger than ``freq * 2 + HEARTBEAT_SLACK``.
HEARTBEAT_SLACK = 1.0
_HEARTBEATS_KEPT = 4

#: Event type -> (task state, TaskState attribute that records when it happened).
_TASK_EVENTS: dict[str, tuple[str, str]] = {
    "task-sent": (states.PENDING, "sent"),
    "task-received": ("RECEIVED", "received"),
    "task-started": (states.STARTED, "started"),
    "task-succeeded": (states.SUCCESS, "succeeded"),
    "task-failed": (states.FAILURE, "failed"),
    "task-retried": (states.RETRY, "retried"),
    "task-revoked": (states.REVOKED, "revoked"),
    "task-rejected": ("REJECTED", "rejected"),
}
#: States a task does not leave when a late event of an earlier step arrives.
_FINAL = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED, "REJECTED"})
_TASK_FIELDS = (
    "name",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "runtime",
    "retries",
    "eta",
    "expires",
    "queue",
    "exchange",
    "routing_key",
    "parent_id",
    "root_id",
    "terminated",
    "signum",
    "expired",
    "requeue",
)


class TaskState:
    """What the events of one task said about it (Celery's ``Task`` of ``celery.events.state``)."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.name: str | None = None
        self.state: str = states.PENDING
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.succeeded: float | None = None
        self.failed: float | None = None
        self.retried: float | None = None
        self.revoked: float | None = None
        self.rejected: float | None = None
        self.timestamp: float | None = None
        self.args: str | None = None
        self.kwargs: str | None = None
        self.result: str | None = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.runtime: float | None = None
        self.worker: str | None = None
        self.retries: int | None = None
        self.eta: str | None = None
        self.expires: str | None = None
        self.queue: str | None = None
        self.exchange: str | None = None
        self.routing_key: str | None = None
        self.parent_id: str | None = None
        self.root_id: str | None = None
        self.terminated: bool | None = None
        self.signum: int | None = None
        self.expired: bool | None = None
        self.requeue: bool | None = None
        self.children: list[str] = []

    def __repr__(self) -> str:
        return f"<TaskState {self.name}[{self.uuid}] {self.state}>"

    @property
    def ready(self) -> bool:
        return self.state in _FINAL

    def apply(self, event: dict[str, Any]) -> None:
        """Merge one ``task-*`` event into this task."""
        kind = event["type"]
        state, attribute = _TASK_EVENTS[kind]
        timestamp = _float(event.get("timestamp"))
        setattr(self, attribute, timestamp)
        for name in _TASK_FIELDS:
            if name in event and event[name] is not None:
                setattr(self, name, event[name])
        if kind != "task-sent" and event.get("hostname"):
            self.worker = event["hostname"]
        # events of one task can arrive out of order (a retry runs on another worker): a final
        # state is kept, otherwise the newest event decides
        newer = self.timestamp is None or timestamp is None or timestamp >= self.timestamp
        if state in _FINAL or (self.state not in _FINAL and newer):
            self.state = state
        if newer:
            self.timestamp = timestamp

    def as_dict(self) -> dict[str, Any]:
        """Every attribute as plain data (for JSON)."""
        return {name: (list(value) if isinstance(value, list) else value) for name, value in vars(self).items()}


class WorkerState:
    """What a worker's heartbeats said about it (Celery's ``Worker`` of ``celery.events.state``)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid: int | None = None
        self.freq: float = 2.0
        self.heartbeats: collections.deque[float] = collections.deque(maxlen=_HEARTBEATS_KEPT)
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: list[float] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        self.online: float | None = None
        self.offline: float | None = None

    def __repr__(self) -> str:
        return f"<WorkerState {self.hostname} {'alive' if self.alive else 'offline'}>"

    @property
    def alive(self) -> bool:
        """True while the last heartbeat is younger than ``freq * 2`` seconds plus a slack."""
        if not self.heartbeats:
            return False
        return time.time() < self.heartbeats[-1] + self.freq * 2 + HEARTBEAT_SLACK

    @property
    def last_heartbeat(self) -> float | None:
        return self.heartbeats[-1] if self.heartbeats else None

    def apply(self, event: dict[str, Any]) -> None:
        """Merge one ``worker-*`` event into this worker."""
        kind = event["type"]
        for name in ("pid", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"):
            if event.get(name) is not None:
                setattr(self, name, event[name])
        freq = _float(event.get("freq"))
        if freq:
            self.freq = freq
        seen = _float(event.get("local_received")) or _float(event.get("timestamp")) or time.time()
        if kind == "worker-offline":
            self.offline = seen
            self.heartbeats.clear()
            return
        if kind == "worker-online":
            self.online = seen
            self.offline = None
        if not self.heartbeats or seen >= self.heartbeats[-1]:
            self.heartbeats.append(seen)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "pid": self.pid,
            "freq": self.freq,
            "heartbeats": list(self.heartbeats),
            "alive": self.alive,
            "active": self.active,
            "processed": self.processed,
            "loadavg": self.loadavg,
            "sw_ident": self.sw_ident,
            "sw_ver": self.sw_ver,
            "sw_sys": self.sw_sys,
            "online": self.online,
            "offline": self.offline,
        }


class State:
    """The cluster as events describe it: tasks by id and workers by hostname, bounded.

    Feed it events with :meth:`event` (thread-safe), e.g. as the ``"*"`` handler of an
    :class:`~celeriac.events.EventReceiver`. At most ``max_tasks_in_memory`` tasks and
    ``max_workers_in_memory`` workers are kept; the least recently updated go first.
    """

    def __init__(self, max_tasks_in_memory: int = 10_000, max_workers_in_memory: int = 5_000) -> None:
        self.max_tasks_in_memory = max_tasks_in_memory
        self.max_workers_in_memory = max_workers_in_memory
        self.tasks: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self.workers: collections.OrderedDict[str, WorkerState] = collections.OrderedDict()
        self.event_count = 0
        self.task_count = 0
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={len(self.tasks)} workers={len(self.workers)}>"

    def event(self, event: dict[str, Any]) -> None:
        """Apply one event; unknown types only count."""
        kind = event.get("type")
        with self._lock:
            self.event_count += 1
            if not isinstance(kind, str):
                return
            if kind.startswith("worker-"):
                self._worker_event(event)
            elif kind in _TASK_EVENTS and isinstance(event.get("uuid"), str):
                self._task_event(event)

    __call__ = event

    def _worker_event(self, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerState(hostname)
            while len(self.workers) > self.max_workers_in_memory:
                self.workers.popitem(last=False)
        else:
            self.workers.move_to_end(hostname)
        worker.apply(event)

    def _task_event(self, event: dict[str, Any]) -> None:
        uuid = event["uuid"]
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskState(uuid)
            self.task_count += 1
            while len(self.tasks) > self.max_tasks_in_memory:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(uuid)
        task.apply(event)
        parent = task.parent_id
        if parent and parent != uuid:
            parent_task = self.tasks.get(parent)
            if parent_task is not None and uuid not in parent_task.children:
                parent_task.children.append(uuid)
        hostname = event.get("hostname")
        if event["type"] != "task-sent" and isinstance(hostname, str) and hostname not in self.workers:
            self.workers[hostname] = WorkerState(hostname)  # known, not alive until it heartbeats
            while len(self.workers) > self.max_workers_in_memory:
                self.workers.popitem(last=False)

    # -- queries ----------------------------------------------------------------------------

    def tasks_by_time(self, limit: int | None = None) -> list[TaskState]:
        """Tasks, newest (last event) first."""
        with self._lock:
            ordered = sorted(self.tasks.values(), key=lambda task: task.timestamp or 0.0, reverse=True)
        return ordered if limit is None else ordered[:limit]

    def tasks_by_type(self, name: str, limit: int | None = None) -> list[TaskState]:
        """Tasks named ``name``, newest first."""
        found = [task for task in self.tasks_by_time() if task.name == name]
        return found if limit is None else found[:limit]

    def tasks_by_worker(self, hostname: str, limit: int | None = None) -> list[TaskState]:
        """Tasks last seen on worker ``hostname``, newest first."""
        found = [task for task in self.tasks_by_time() if task.worker == hostname]
        return found if limit is None else found[:limit]

    def alive_workers(self) -> list[WorkerState]:
        with self._lock:
            return [worker for worker in self.workers.values() if worker.alive]

    def itertasks(self) -> Iterator[tuple[str, TaskState]]:
        with self._lock:
            items = list(self.tasks.items())
        return iter(items)

    def clear(self) -> None:
        with self._lock:
            self.tasks.clear()
            self.workers.clear()
            self.event_count = self.task_count = 0


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
