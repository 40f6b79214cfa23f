"""The worker's remote-control mailbox and its built-in commands.

A ``celeriac-mailbox`` thread subscribes to ``control_channel`` when the worker starts, runs
each request addressed to this worker (``destination`` empty or naming it) and, when the
request has a ``reply_to``, broadcasts ``{"ticket", "hostname", "reply"}`` there. Commands
are ``command(worker, **arguments) -> reply``; plugins add more through the
``celeriac_control_commands`` hook (built-in names cannot be replaced).

Revokes for a worker that joins later: right after start, the worker asks its peers for
their ``revoked`` lists (one request, replies merged for ``_MINGLE_TIMEOUT`` seconds, in a
background thread), and every reserved task is checked again just before it starts.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._envelope import Envelope
from ..control import reply_channel
from ..control._wire import REPLY_TYPE, REQUEST_TYPE, decode, encode
from ._ratelimit import parse_rate
from ._state import expire

if TYPE_CHECKING:
    from ..transport import Subscription
    from ._worker import Worker

__all__ = ["BUILTIN_COMMANDS", "Mailbox"]

logger = logging.getLogger("celeriac.worker")
_MINGLE_TIMEOUT = 1.0
#: Seconds between two sweeps of expired revoked ids (see ``_state.REVOKE_EXPIRES``).
_EXPIRE_INTERVAL = 60.0
Command = Callable[..., Any]


def _ok(text: str) -> dict[str, Any]:
    return {"ok": text}


def _error(text: str) -> dict[str, Any]:
    return {"error": text}


# -- inspect ---------------------------------------------------------------------------------


def ping(worker: Worker) -> dict[str, Any]:
    return _ok("pong")


def stats(worker: Worker) -> dict[str, Any]:
    return worker.stats_reply()


def active(worker: Worker) -> list[dict[str, Any]]:
    return worker.job_infos("active")


def reserved(worker: Worker) -> list[dict[str, Any]]:
    return worker.job_infos("reserved")


def scheduled(worker: Worker, limit: int = 100) -> list[dict[str, Any]]:
    """Celery's ``scheduled`` entries for the delayed messages of the queues this worker
    consumes. They wait in the broker, not in a worker, so workers sharing a queue list the
    same ones; a broker that cannot list them (AMQP) gives ``[]``."""
    transport = worker.app.transport  # the client side: safe from this thread
    entries: list[dict[str, Any]] = []
    for queue in list(worker.queues):
        for eta, envelope in transport.scheduled(queue, limit) or []:
            headers = envelope.headers
            entries.append(
                {
                    "eta": datetime.fromtimestamp(eta, UTC).isoformat(),
                    "priority": envelope.priority,
                    "request": {
                        "id": headers.get("id"),
                        "name": headers.get("task"),
                        "type": headers.get("task"),
                        "args": headers.get("argsrepr"),
                        "kwargs": headers.get("kwargsrepr"),
                        "retries": headers.get("retries", 0),
                        "hostname": worker.hostname,
                        "delivery_info": {"routing_key": queue, "priority": envelope.priority},
                    },
                }
            )
    entries.sort(key=lambda entry: entry["eta"])
    return entries[:limit]


def revoked(worker: Worker) -> list[str]:
    expire(worker.revoked)
    return list(worker.revoked)


def registered(worker: Worker, taskinfoitems: list[str] | None = None) -> list[str]:
    names = sorted(worker.app.tasks)
    if not taskinfoitems:
        return names
    lines = []
    for name in names:
        task = worker.app.tasks[name]
        fields = [f"{item}={getattr(task, item, None)!r}" for item in taskinfoitems if hasattr(task, item)]
        lines.append(f"{name} [{' '.join(fields)}]" if fields else name)
    return lines


def active_queues(worker: Worker) -> list[dict[str, Any]]:
    return [
        {"name": name, "exchange": {"name": "", "type": "direct"}, "routing_key": name, "durable": True}
        for name in worker.queues
    ]


def query_task(worker: Worker, ids: list[str] | str | None = None) -> dict[str, Any]:
    wanted = {ids} if isinstance(ids, str) else set(ids or ())
    found: dict[str, Any] = {}
    for where in ("active", "reserved"):
        for info in worker.job_infos(where):
            if info["id"] in wanted:
                found[info["id"]] = [where, info]
    for task_id in wanted - set(found):
        if task_id in worker.revoked:
            found[task_id] = ["revoked", {"id": task_id}]
    return found


def conf(worker: Worker, with_defaults: bool = False) -> dict[str, Any]:
    values = worker.app.conf.masked()
    if with_defaults:
        return values
    return {
        setting.name: values[setting.name]
        for setting in worker.app.conf.settings()
        if values[setting.name] != setting.default
    }


# -- control ---------------------------------------------------------------------------------


def revoke(
    worker: Worker, task_id: str | list[str], terminate: bool = False, signal: str | int = "SIGTERM"
) -> dict[str, Any]:
    ids = [task_id] if isinstance(task_id, str) else [str(item) for item in task_id]
    signum = _signal_number(signal)
    if signum is None:
        return _error(f"unknown signal {signal!r}; use a name such as SIGTERM or SIGKILL, or a number")
    expire(worker.revoked)
    worker.revoke(*ids)
    if not terminate:
        return _ok(f"tasks {', '.join(ids)} flagged as revoked")
    stopped = [task_id for task_id in ids if worker.terminate(task_id, signum)]
    if stopped:
        return _ok(f"terminating {', '.join(stopped)} ({signal}); the rest are flagged as revoked")
    return _ok(f"tasks {', '.join(ids)} flagged as revoked (none running here could be terminated)")


def _signal_number(value: str | int) -> int | None:
    if isinstance(value, int):
        return value
    name = str(value).upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    number = getattr(signal.Signals, name, None)
    return int(number) if number is not None else None


def shutdown(worker: Worker) -> dict[str, Any]:
    logger.warning("%s: shutdown requested by remote control", worker.hostname)
    threading.Thread(target=worker.stop, kwargs={"warm": True, "sig": "remote control"}, daemon=True).start()
    return _ok("shutting down")


def pool_grow(worker: Worker, n: int = 1) -> dict[str, Any]:
    pool = worker.pool
    if pool is None:
        return _error("the pool is not running")
    try:
        pool.grow(int(n))
    except NotImplementedError as exc:
        return _error(str(exc))
    worker.wake_consumer()
    return _ok(f"pool grown by {n} to {pool.size}")


def pool_shrink(worker: Worker, n: int = 1) -> dict[str, Any]:
    pool = worker.pool
    if pool is None:
        return _error("the pool is not running")
    n = int(n)
    if pool.size - n < 1:
        return _error(f"cannot shrink the pool of {pool.size} by {n}: at least one slot must remain")
    try:
        pool.shrink(n)
    except NotImplementedError as exc:
        return _error(str(exc))
    worker.wake_consumer()
    return _ok(f"pool shrunk by {n} to {pool.size}")


def autoscale(worker: Worker, max: int, min: int) -> dict[str, Any]:  # noqa: A002 - Celery's names
    autoscaler = worker.autoscaler
    if autoscaler is None:
        return _error("this worker does not autoscale; start it with --autoscale MAX,MIN")
    high, low = int(max), int(min)
    if low < 0 or high < 1 or low > high:
        return _error(f"autoscale: expected max >= min >= 0 and max >= 1, got max={high} min={low}")
    autoscaler.update(high, low)
    return _ok(f"autoscale now max={high} min={low}")


def add_consumer(worker: Worker, queue: str) -> dict[str, Any]:
    if not isinstance(queue, str) or not queue:
        return _error("add_consumer: give a queue name")
    if queue in worker.queues:
        return _ok(f"already consuming from {queue!r}")
    worker.add_queue(queue)
    return _ok(f"add consumer {queue}")


def cancel_consumer(worker: Worker, queue: str) -> dict[str, Any]:
    if queue not in worker.queues:
        return _error(f"not consuming from {queue!r}")
    if len(worker.queues) == 1:
        return _error(f"{queue!r} is the only queue this worker consumes; add another first")
    worker.remove_queue(queue)
    return _ok(f"no longer consuming from {queue}")


def rate_limit(worker: Worker, task_name: str, rate_limit: str | float | None = None) -> dict[str, Any]:
    task = worker.app.tasks.get(task_name)
    if task is None:
        return _error(f"unknown task {task_name!r}")
    try:
        rate = parse_rate(rate_limit, task_name)
    except ValueError as exc:
        return _error(str(exc))
    if rate is None:  # None, 0, "0", "0/m": no limit
        task.rate_limit = None
        return _ok(f"rate limit disabled for {task_name}")
    task.rate_limit = rate_limit
    return _ok(f"new rate limit set successfully for {task_name}: {rate_limit}")


def time_limit(worker: Worker, task_name: str, soft: float | None = None, hard: float | None = None) -> dict[str, Any]:
    task = worker.app.tasks.get(task_name)
    if task is None:
        return _error(f"unknown task {task_name!r}")
    for label, value in (("soft", soft), ("hard", hard)):
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            return _error(f"time_limit: {label} must be a positive number of seconds, got {value!r}")
    task.soft_time_limit = soft
    task.time_limit = hard
    worker.time_limits[task_name] = (soft, hard)
    return _ok(f"time limits set successfully for {task_name}: soft={soft} hard={hard}")


def enable_events(worker: Worker) -> dict[str, Any]:
    if worker.events is None:
        return _error("the worker is not running")
    if worker.events.task_events:
        return _ok("task events already enabled")
    worker.events.task_events = True
    return _ok("task events enabled")


def disable_events(worker: Worker) -> dict[str, Any]:
    if worker.events is None:
        return _error("the worker is not running")
    worker.events.task_events = False
    return _ok("task events disabled")


BUILTIN_COMMANDS: dict[str, Command] = {
    "ping": ping,
    "stats": stats,
    "active": active,
    "reserved": reserved,
    "scheduled": scheduled,
    "revoked": revoked,
    "registered": registered,
    "active_queues": active_queues,
    "query_task": query_task,
    "conf": conf,
    "revoke": revoke,
    "shutdown": shutdown,
    "pool_grow": pool_grow,
    "pool_shrink": pool_shrink,
    "autoscale": autoscale,
    "add_consumer": add_consumer,
    "cancel_consumer": cancel_consumer,
    "rate_limit": rate_limit,
    "time_limit": time_limit,
    "enable_events": enable_events,
    "disable_events": disable_events,
}


class Mailbox:
    """The worker's end of remote control; see the module docstring."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.channel: str = worker.app.conf.control_channel
        self.commands: dict[str, Command] = {**worker.app.plugins.control_commands(), **BUILTIN_COMMANDS}
        self._subscription: Subscription | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self) -> None:
        """Subscribe (the worker answers from now on) and start the mailbox thread."""
        transport = self.worker.transport
        assert transport is not None
        self._subscription = transport.subscribe(self.channel)
        self._thread = threading.Thread(target=self._loop, name="celeriac-mailbox", daemon=True)
        self._thread.start()
        threading.Thread(target=self._mingle, name="celeriac-mingle", daemon=True).start()

    def stop(self) -> None:
        self._closing.set()
        if self._subscription is not None:
            self._subscription.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        next_sweep = time.monotonic() + _EXPIRE_INTERVAL
        while not self._closing.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + _EXPIRE_INTERVAL
                if expire(self.worker.revoked):
                    self.worker.persist_revoked()
            try:
                envelope = subscription.get(0.5)
            except Exception as exc:
                if self._closing.is_set():
                    return
                logger.warning("remote control: cannot receive (%s); retrying", exc)
                time.sleep(0.5)
                continue
            if envelope is not None:
                self.handle(envelope)

    def handle(self, envelope: Envelope) -> None:
        """Run one request if it is for this worker, and reply when asked to."""
        request = decode(envelope, REQUEST_TYPE)
        if request is None:
            return
        worker = self.worker
        destination = request.get("destination")
        if destination and worker.hostname not in destination:
            return
        method = request.get("method")
        arguments = request.get("arguments") or {}
        command = self.commands.get(method) if isinstance(method, str) else None
        if command is None:
            reply: Any = _error(f"unknown command {method!r}; known: {', '.join(sorted(self.commands))}")
        elif not isinstance(arguments, dict):
            reply = _error(f"{method}: arguments must be a mapping")
        else:
            try:
                reply = command(worker, **arguments)
            except TypeError as exc:
                reply = _error(f"{method}: bad arguments: {exc}")
            except Exception as exc:
                logger.exception("remote control command %s failed", method)
                reply = _error(f"{method} failed: {type(exc).__name__}: {exc}")
        reply_to = request.get("reply_to")
        if isinstance(reply_to, str) and reply_to:
            payload = {"ticket": request["ticket"], "hostname": worker.hostname, "reply": reply}
            transport = worker.transport
            try:
                assert transport is not None
                transport.broadcast(reply_to, encode(REPLY_TYPE, payload))
            except Exception as exc:
                logger.warning("remote control: cannot reply to %s: %s", method, exc)

    def _mingle(self) -> None:
        """Learn the revokes of the workers already running (replies merged for a second)."""
        worker = self.worker
        transport = worker.transport
        assert transport is not None
        ticket = uuid.uuid4().hex
        request: dict[str, Any] = {
            "method": "revoked",
            "arguments": {},
            "destination": None,
            "reply_to": reply_channel(self.channel),
            "ticket": ticket,
        }
        learned = 0
        try:
            with transport.subscribe(reply_channel(self.channel)) as subscription:
                transport.broadcast(self.channel, encode(REQUEST_TYPE, request))
                deadline = time.monotonic() + _MINGLE_TIMEOUT
                while not self._closing.is_set() and (remaining := deadline - time.monotonic()) > 0:
                    envelope = subscription.get(min(remaining, 0.1))
                    payload = None if envelope is None else decode(envelope, REPLY_TYPE)
                    if payload is None or payload["ticket"] != ticket or payload.get("hostname") == worker.hostname:
                        continue
                    ids = payload.get("reply")
                    if isinstance(ids, list):
                        new = [str(task_id) for task_id in ids if task_id not in worker.revoked]
                        if new:
                            worker.revoke(*new, persist=False)
                            learned += len(new)
        except Exception as exc:
            if not self._closing.is_set():
                logger.warning("could not ask other workers for revoked tasks: %s", exc)
            return
        if learned:
            worker.persist_revoked()
            logger.info("%s learned %d revoked task id(s) from other workers", worker.hostname, learned)
