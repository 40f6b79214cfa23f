"""The dashboard's feed: an event receiver thread that applies events to a
:class:`celeriac.events.State`, the task history and the graph counters, a sampler thread for
queue lengths, and remote control through ``app.control``."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import celeriac
from celeriac.events import HEARTBEAT_SLACK

from ._history import History, MemoryHistory
from ._stats import Stats

if TYPE_CHECKING:
    from celeriac import Celeriac
    from celeriac.events import EventReceiver, State

__all__ = ["Monitor"]

logger = logging.getLogger("celeriac.dashboard")
_NAMES_KEPT = 10_000
Listener = Callable[[dict[str, Any]], None]


class Monitor:
    """Everything the web app reads: cluster state, history, counters, queue lengths.

    :meth:`apply` takes one event (the receiver thread calls it; tests may too);
    :meth:`start` / :meth:`stop` run the receiver and the queue sampler.
    """

    def __init__(
        self,
        app: Celeriac,
        history: History | None = None,
        *,
        state: State | None = None,
        queues: tuple[str, ...] = (),
        queue_interval: float = 2.0,
    ) -> None:
        self.app = app
        self.state: State = state if state is not None else app.events.State()
        self.history = history if history is not None else MemoryHistory()
        self.stats = Stats()
        self.queue_interval = queue_interval
        self._queues: set[str] = set(queues) | _app_queues(app)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()  # the state is written by the receiver thread, read by requests
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver: EventReceiver | None = None
        self._transport: celeriac.Transport | None = None
        self.started_at = time.time()
        self.receiving = False
        self._names: OrderedDict[str, str] = OrderedDict()  # task id -> name, for events that lack it
        self._first_seen: dict[str, float] = {}  # hostname -> when this dashboard first heard from it

    # -- events -----------------------------------------------------------------------------

    def apply(self, event: dict[str, Any]) -> None:
        """Apply one event to the state, the history and the counters, then tell listeners."""
        with self._state_lock:
            self.state.event(event)
        kind = str(event.get("type", ""))
        note: dict[str, Any] = {"type": kind, "hostname": event.get("hostname")}
        hostname = event.get("hostname")
        if kind.startswith("worker-") and isinstance(hostname, str) and hostname not in self._first_seen:
            self._first_seen[hostname] = _stamp(event)
        if kind.startswith("task-") and isinstance(event.get("uuid"), str):
            uuid = event["uuid"]
            task = self.state.tasks.get(uuid)
            if task is not None and task.name is None and uuid in self._names:
                task.name = self._names[uuid]  # e.g. revoked before any worker received it
            record = self._merge(task.as_dict()) if task is not None else None
            name = record["name"] if record else event.get("name")
            self.stats.task_event(event, name)
            if record is not None:
                self.history.put(record)
                note.update(uuid=uuid, state=record["state"], name=record["name"])
                if queue := record.get("queue"):
                    self._queues.add(str(queue))
                parent_id = record.get("parent_id")
                parent = self.state.tasks.get(parent_id) if isinstance(parent_id, str) else None
                if parent is not None:
                    self.history.put(self._merge(parent.as_dict()))
        self._notify(note)

    def _merge(self, record: dict[str, Any]) -> dict[str, Any]:
        """Fill what the in-memory state does not know (after a restart) from the history."""
        old = self.history.get(record["uuid"])
        if old:
            for key, value in old.items():
                if record.get(key) is None:
                    record[key] = value
            record["children"] = sorted(set(record.get("children") or []) | set(old.get("children") or []))
        return record

    def remember_name(self, task_id: str, name: str) -> None:
        """Name ``task_id`` for when its events do not (a task revoked before a worker received
        it only ever gets a ``task-revoked`` event); the dashboard calls this for what it sends
        and revokes. Fills an existing nameless history record too."""
        with self._lock:
            self._names[task_id] = name
            self._names.move_to_end(task_id)
            while len(self._names) > _NAMES_KEPT:
                self._names.popitem(last=False)
        with self._state_lock:
            task = self.state.tasks.get(task_id)
            if task is not None and task.name is None:
                task.name = name
        record = self.history.get(task_id)
        if record is not None and not record.get("name"):
            record["name"] = name
            self.history.put(record)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(note)`` for every event (from the receiver thread); returns an unsubscriber."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, note: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(note)
            except Exception:  # a broken page must not stop the feed
                logger.exception("dashboard listener failed")

    # -- workers and queues -----------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """Every known worker with its heartbeat state and task counters."""
        with self._state_lock:
            known = [worker.as_dict() for worker in self.state.workers.values()]
        for worker in known:
            worker.update(self.stats.worker_counts(worker["hostname"]))
            heartbeats = worker["heartbeats"]
            worker["last_heartbeat"] = heartbeats[-1] if heartbeats else None
            # online: its worker-online event, else when this dashboard first heard from it;
            # offline: its worker-offline event, else when its heartbeats stopped (None while alive)
            if worker["online"] is None:
                worker["online"] = self._first_seen.get(worker["hostname"])
            if worker["alive"]:
                worker["offline"] = None
            elif worker["offline"] is None and heartbeats:
                worker["offline"] = heartbeats[-1] + worker["freq"] * 2 + HEARTBEAT_SLACK
        return sorted(known, key=lambda worker: worker["hostname"])

    def queues(self) -> list[str]:
        return sorted(self._queues)

    def watch_queue(self, name: str) -> None:
        self._queues.add(name)

    def sample_queues(self) -> dict[str, int]:
        """Read every watched queue's length from the broker (and record the sample)."""
        if self._transport is None:
            self._transport = self.app.create_transport()
        lengths: dict[str, int] = {}
        for queue in self.queues():
            try:
                lengths[queue] = int(self._transport.queue_length(queue))
            except Exception as exc:
                logger.warning("dashboard: cannot read the length of queue %s: %s", queue, exc)
        self.stats.queue_sample(lengths)
        self._notify({"type": "queues", "lengths": lengths})
        return lengths

    # -- threads ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the receiver and the queue sampler threads (subscribed when this returns)."""
        self._stopping.clear()
        self._receiver = self.app.events.Receiver(handlers={"*": self.apply})
        self.receiving = True
        for target, name in ((self._receive, "receiver"), (self._sample, "queues")):
            thread = threading.Thread(target=target, name=f"celeriac-dashboard-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _receive(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if self._receiver is None:
                    self._receiver = self.app.events.Receiver(handlers={"*": self.apply})
                self.receiving = True
                self._receiver.capture()
                backoff = 0.5
            except Exception as exc:
                self.receiving = False
                logger.warning("dashboard: event receiver failed (%s); reconnecting in %.1fs", exc, backoff)
                if self._receiver is not None:
                    with contextlib.suppress(Exception):
                        self._receiver.close()
                self._receiver = None
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _sample(self) -> None:
        last_prune = time.monotonic()
        while not self._stopping.is_set():
            try:
                self.sample_queues()
            except Exception as exc:
                logger.warning("dashboard: queue sampling failed: %s", exc)
            if time.monotonic() - last_prune > 60:
                last_prune = time.monotonic()
                self.history.prune()
            self._stopping.wait(self.queue_interval)

    def stop(self) -> None:
        """Stop the threads and release the broker connections (the history stays open)."""
        self._stopping.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.stop()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        if receiver is not None:
            with contextlib.suppress(Exception):
                receiver.close()
        self._receiver = None
        self.receiving = False
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None


def _stamp(event: Mapping[str, Any]) -> float:
    for key in ("local_received", "timestamp"):
        value = event.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return time.time()


def _app_queues(app: Celeriac) -> set[str]:
    conf = app.conf
    queues = {str(conf.task_default_queue)}
    queues.update(conf.worker_queues or ())
    routes: Mapping[str, Any] = conf.routes or {}
    for options in routes.values():
        if isinstance(options, Mapping) and isinstance(options.get("queue"), str):
            queues.add(options["queue"])
    return queues
