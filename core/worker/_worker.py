"""The worker: fetch messages, decide what to do with each, run them in the pool, settle them.

Flow of one message::

    transport.fetch ─► decode ─► (malformed / not accepted) ─► dead-letter + task_rejected
                         │      (unknown task)              ─► dead-letter + task_unknown + FAILURE stored
                         │      (revoked / expired)         ─► REVOKED stored + ack + task_revoked
                         │      (ETA in the future)         ─► re-published delayed + ack
                         │      (rate limit: must wait)     ─► re-published delayed to its slot + ack
                         ▼
                      reserved ─► pool (never more than pool.size at once) ─► store result ─► ack

At most ``pool.size * prefetch_multiplier`` messages are held (reserved + running). A lease
keeper extends the broker lease of held messages when the transport needs it, so long tasks
are not redelivered while they run. Warm shutdown stops fetching, hands reserved messages
back, and waits for running tasks; cold shutdown hands everything back at once.

Workflows (:mod:`celeriac._workflow`): callbacks and the next chain step are sent by the pool
right after a task succeeds; once a result is stored (and before the ack) the settler counts
chord parts, and a task that failed, was revoked, rejected, ignored or dead-lettered fails the
rest of its chain and its chord. Rate limits: :mod:`celeriac.worker._ratelimit`.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback as traceback_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import _workflow, states
from .._envelope import Delivery, Envelope
from .._exceptions_data import exception_to_data
from .._execution import IGNORED, REJECTED, Outcome, execute
from ..exceptions import ConfigError, ContentDisallowed, DecodeError, NotRegistered, Terminated, WorkerLostError
from ..pool import Pool, TimeLimits
from ..resultstore import ResultRecord
from ..task import Request, Task
from ._control import Mailbox
from ._events import WorkerEvents, short_repr
from ._ratelimit import RATE_SLOT_HEADER, RateLimits
from ._state import RevokeStore

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..transport import Transport

__all__ = ["Worker", "WorkerStats"]

logger = logging.getLogger("celeriac.worker")
_FETCH_TIMEOUT = 1.0
_MAX_REVOKED = 50_000
_MAX_SETTLE_BATCH = 256


@dataclass(slots=True)
class _Job:
    task: Task[..., Any]
    request: Request
    delivery: Delivery
    acks_late: bool
    time_limits: TimeLimits | None
    started: float = 0.0
    #: The signal a ``revoke(terminate=True)`` sent to it, if one did.
    terminated: int | None = None


@dataclass
class WorkerStats:
    """Counters a worker keeps (for ``stats`` and heartbeats later)."""

    total: collections.Counter[str] = field(default_factory=collections.Counter)
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    revoked: int = 0
    started_at: float = field(default_factory=time.time)


class Worker:
    """Consumes ``queues`` of ``app``'s broker and runs the tasks in a pool.

    Use :meth:`run` from a CLI (blocks, handles SIGTERM/SIGINT), or :meth:`start` / :meth:`stop`
    from code (``celeriac.testing.start_worker`` does that).
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        name: str | None = None,
        prefetch_multiplier: int | None = None,
        shutdown_timeout: float | None = None,
        pool_options: dict[str, Any] | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.pool_name: str = pool or conf.worker_pool
        self._concurrency_given = bool(concurrency or conf.worker_concurrency)
        self.concurrency: int = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.queues: list[str] = list(queues or conf.worker_queues or [conf.task_default_queue])
        hostname = socket.gethostname()
        self.hostname: str = (name or conf.worker_name or "celeriac@%h").replace("%h", hostname)
        self.prefetch_multiplier: int = max(1, prefetch_multiplier or conf.worker_prefetch_multiplier)
        self.shutdown_timeout: float = conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        self.pool_options = dict(conf.worker_pool_options if pool_options is None else pool_options)
        for key in ("max_tasks_per_child", "max_memory_per_child"):
            if conf[f"worker_{key}"] is not None:
                self.pool_options.setdefault(key, conf[f"worker_{key}"])
        self.max_deliveries: int = conf.worker_max_deliveries or 0
        autoscale = conf.worker_autoscale
        if autoscale is not None and (len(autoscale) != 2 or min(autoscale) < 0 or max(autoscale) < 1):
            raise ConfigError(
                f"{conf.origin('worker_autoscale')}: [celeriac.worker] autoscale: expected [min, max] "
                f"with 0 <= min and max >= 1, got {autoscale!r}"
            )
        self.autoscaler: Any = None
        self.stats = WorkerStats()
        self.revoked: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._state_db = RevokeStore(conf.worker_state_db) if conf.worker_state_db else None
        if self._state_db is not None:
            self.revoked.update(self._state_db.load())
        #: Time limits set by remote control (``time_limit``): task name -> (soft, hard).
        self.time_limits: dict[str, tuple[float | None, float | None]] = {}
        self.events: WorkerEvents | None = None
        self.mailbox: Mailbox | None = None
        self.rate_limits = RateLimits()
        self.exitcode = 0
        self.pool: Pool | None = None
        self.transport: Transport | None = None
        self._cond = threading.Condition()
        self._reserved: collections.deque[_Job] = collections.deque()
        self._active: dict[int, _Job] = {}  # running in the pool
        self._settling: dict[int, _Job] = {}  # finished; result being stored, message being acked
        self._held = 0
        self._dispatching = threading.local()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_requested = False
        self._threads: list[threading.Thread] = []
        self._settle_queue: queue.SimpleQueue[tuple[_Job, Outcome | BaseException] | None] = queue.SimpleQueue()
        self._settler: threading.Thread | None = None
        self._prefetch_sent = 0
        self._signals_received = 0
        self._started = False
        self._pending_signal: int | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.hostname} pool={self.pool_name}x{self.concurrency} queues={','.join(self.queues)}>"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, start the pool and the consumer; returns once the worker is consuming.

        If starting fails after ``worker_init`` fired, what was started is stopped again and
        ``worker_shutdown`` fires, so plugins release what they set up (ports, files)."""
        try:
            self._start()
        except BaseException:
            try:
                self.stop(warm=False)
            except Exception:
                logger.exception("%s: could not clean up after a failed start", self.hostname)
            raise

    def _start(self) -> None:
        app = self.app
        app.plugins.worker_init(app, self)
        app.import_modules()
        registry = app.serializers
        accept = app.accept_content
        app.codec  # noqa: B018 - compressors and filters are resolved (and validated) at start
        for content_type in sorted(accept - registry.default_accept()):
            logger.warning("accept_content allows %s, which can run code on this worker when decoded", content_type)
        app.result_store  # noqa: B018 - fail at start, not at the first result
        self.transport = app.create_transport()
        for name in self.queues:
            self.transport.declare_queue(name)
        autoscale = app.conf.worker_autoscale  # with autoscale the pool starts at its min
        size = max(1, min(autoscale)) if autoscale else self.concurrency
        self.pool = self._create_pool(size)
        default = type(self.pool).default_concurrency
        if not self._concurrency_given and not autoscale and default and default != size:
            self.concurrency = default  # the pool's own default (asyncio: items in flight)
            self.pool = self._create_pool(default)
        from .._execution import init_pool_process

        self.pool.start(self._run, functools.partial(init_pool_process, app, self, os.getpid()))
        self._prefetch_sent = self.prefetch_limit
        self.transport.set_prefetch(self._prefetch_sent)
        self.events = WorkerEvents(self)
        self.events.start()
        self._settler = threading.Thread(target=self._settle_loop, name="celeriac-settler", daemon=True)
        self._settler.start()
        self._spawn(self._consume_loop, "consumer")
        if self.transport.needs_lease_extension:
            self._spawn(self._lease_loop, "lease-keeper")
        if app.conf.worker_autoscale:
            from ._autoscale import Autoscaler

            low, high = sorted(app.conf.worker_autoscale)
            self.autoscaler = Autoscaler(self, low, high)
            self._spawn(self.autoscaler.run, "autoscaler")
        if app.conf.worker_enable_remote_control:
            self.mailbox = Mailbox(self)
            self.mailbox.start()
        logger.info(
            "%s ready: pool=%s concurrency=%d queues=%s",
            self.hostname,
            self.pool_name,
            self.pool.size,
            ",".join(self.queues),
        )
        app._workers.add(self)
        app.plugins.worker_ready(app, self)

    def _create_pool(self, size: int) -> Pool:
        """The pool plugin's pool; its complaint about an option is a config error naming the key."""
        conf = self.app.conf
        try:
            return self.app.plugins.pool(self.pool_name, size, self.pool_options, self.app)
        except ValueError as exc:
            where = conf.origin("worker_pool_options")
            raise ConfigError(f"{where}: [celeriac.worker] pool_options: {exc}") from None

    def _spawn(self, target: Any, role: str) -> None:
        thread = threading.Thread(target=target, name=f"celeriac-{role}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def run(self) -> int:
        """Start, then block until stopped by a signal or :meth:`stop`; returns the exit code."""
        if threading.current_thread() is threading.main_thread():
            # before start(): a signal that arrives while starting must not kill the process
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        self._started = True
        if self._pending_signal is not None:  # arrived while starting: handle it now
            self._on_signal(self._pending_signal, None)
        while not self._stopped.wait(0.5):
            pass
        return self.exitcode

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self._started:
            self._pending_signal = signum
            return
        name = signal.Signals(signum).name
        self._signals_received += 1
        if self._signals_received == 1:
            logger.warning("%s received: warm shutdown (running tasks finish; %s again for cold shutdown)", name, name)
            threading.Thread(target=self.stop, kwargs={"warm": True, "sig": name}, daemon=True).start()
        else:
            logger.warning("%s received again: cold shutdown (running tasks go back to the queue)", name)
            threading.Thread(target=self.stop, kwargs={"warm": False, "sig": name}, daemon=True).start()

    def stop(self, *, warm: bool = True, sig: str = "", timeout: float | None = None) -> None:
        """Stop consuming. Warm: hand reserved messages back, wait for running tasks (up to
        ``timeout``, default ``worker_shutdown_timeout``). Cold: hand everything back now."""
        with self._stop_lock:
            first = not self._stop_requested
            self._stop_requested = True
        if not first and warm:
            self._stopped.wait()
            return
        app = self.app
        how = "warm" if warm else "cold"
        if first:
            app.plugins.worker_shutting_down(app, self, sig, how, self.exitcode)
        self._stopping.set()
        if self.mailbox is not None:
            self.mailbox.stop()
        if self._state_db is not None:
            self._state_db.close()  # writes what the debounce has not written yet
        with self._cond:
            self._cond.notify_all()
        if self.transport is not None:
            self.transport.wake()
        wait = (self.shutdown_timeout if timeout is None else timeout) if warm else 0.0
        for thread in self._threads:
            if thread is not threading.current_thread():
                # an inline pool (solo) runs the task in the consumer thread itself
                thread.join(timeout=wait + _FETCH_TIMEOUT * 2)
        self._hand_back_reserved()
        if self.pool is not None:
            finished = self.pool.stop(timeout=wait)
            if not finished:
                logger.warning("%s: tasks still running at shutdown go back to the queue", self.hostname)
        if self._settler is not None and self._settler is not threading.current_thread():
            self._settle_queue.put(None)  # settle what finished, then stop
            self._settler.join(timeout=max(wait, 1.0) + 5)
        if self.events is not None:
            self.events.stop()
        if self.transport is not None:
            self.transport.close()
        app._workers.discard(self)
        if first or not warm:
            if not self._stopped.is_set():
                app.plugins.worker_shutdown(app, self)
            self._stopped.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker stopped; True if it did."""
        return self._stopped.wait(timeout)

    def _hand_back_reserved(self) -> None:
        with self._cond:
            pending = list(self._reserved)
            self._reserved.clear()
            self._held -= len(pending)
        if self.transport is None:
            return
        for job in pending:
            if job.acks_late:
                self._safely(self.transport.reject, job.delivery, requeue=True)
            else:
                logger.warning("%s[%s] was acked early and is dropped at shutdown", job.task.name, job.request.id)

    # -- consuming --------------------------------------------------------------------------

    @property
    def prefetch_limit(self) -> int:
        """How many messages this worker may hold (reserved + running)."""
        size = self.pool.size if self.pool is not None else self.concurrency
        return size * self.prefetch_multiplier

    def _consume_loop(self) -> None:
        assert self.transport is not None
        assert self.pool is not None
        backoff = 0.1
        while not self._stopping.is_set():
            self._dispatch()  # reserved jobs into free slots (an inline pool runs them right here)
            limit = self.prefetch_limit
            if limit != self._prefetch_sent:  # the pool grew or shrank
                self._prefetch_sent = limit
                self._safely(self.transport.set_prefetch, limit)
            with self._cond:
                while (
                    not self._stopping.is_set()
                    and not self._dispatchable()
                    and (self._held >= limit or len(self._settling) >= max(limit, _MAX_SETTLE_BATCH))
                ):
                    self._cond.wait(_FETCH_TIMEOUT)
                    limit = self.prefetch_limit
                if self._dispatchable():
                    continue
                want = limit - self._held
            if self._stopping.is_set():
                break
            try:
                deliveries = self.transport.fetch(self.queues, limit=want, timeout=_FETCH_TIMEOUT)
            except Exception as exc:
                logger.error("cannot fetch from the broker: %s; retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.1
            for delivery in deliveries:
                try:
                    self._on_delivery(delivery)
                except Exception as exc:  # a bug here must not lose the message or stop the worker
                    logger.exception("internal error handling a message from %s", delivery.queue)
                    self._safely(self.transport.dead_letter, delivery, f"internal error: {exc!r}")
                    self._safely(_workflow.after_dead_letter, self.app, delivery.envelope.headers, repr(exc))

    def _dispatchable(self) -> bool:
        """Reserved jobs wait and the pool has a free slot (call with ``_cond`` held)."""
        assert self.pool is not None
        return bool(self._reserved) and len(self._active) < self.pool.size and not self._stopping.is_set()

    def _on_delivery(self, delivery: Delivery) -> None:
        app = self.app
        transport = self.transport
        assert transport is not None
        envelope = delivery.envelope
        try:
            message = app.codec.decode(envelope)
        except (ContentDisallowed, DecodeError) as exc:
            self.stats.rejected += 1
            logger.warning("dead-lettered a message from %s: %s", delivery.queue, exc)
            transport.dead_letter(delivery, str(exc))
            self._safely(_workflow.after_dead_letter, app, envelope.headers, str(exc))
            app.plugins.task_rejected(app, envelope, exc)
            return
        try:
            task = app.tasks[message.task]
        except NotRegistered as exc:
            self.stats.rejected += 1
            logger.warning("dead-lettered %s[%s] from %s: %s", message.task, message.id, delivery.queue, exc)
            transport.dead_letter(delivery, str(exc))
            unknown = Request.from_message(message, queue=delivery.queue, hostname=self.hostname)
            self._safely(app.store_result, message.id, states.FAILURE, exception_to_data(exc), request=unknown)
            self._safely(_workflow.after_settled, app, unknown, states.FAILURE, exception_to_data(exc))
            app.plugins.task_unknown(app, envelope, exc, message.task, message.id)
            self._task_event("task-rejected", message.id, requeue=False)
            return
        if self.max_deliveries and delivery.delivery_count > self.max_deliveries:
            # A poison message (it keeps killing the process that runs it, or a worker keeps
            # dying under it) must not loop forever: park it where an operator can look at it.
            reason = (
                f"delivered {delivery.delivery_count} times (more than worker_max_deliveries="
                f"{self.max_deliveries}); it may crash the workers that run it"
            )
            self.stats.rejected += 1
            logger.error("dead-lettered %s[%s] from %s: %s", message.task, message.id, delivery.queue, reason)
            transport.dead_letter(delivery, reason)
            lost = WorkerLostError(f"{message.task}[{message.id}] {reason}")
            poisoned = Request.from_message(message, queue=delivery.queue, hostname=self.hostname)
            self._safely(app.store_result, message.id, states.FAILURE, exception_to_data(lost), request=poisoned)
            self._safely(_workflow.after_dead_letter, app, envelope.headers, reason)
            app.plugins.task_rejected(app, envelope, lost)
            self._task_event("task-rejected", message.id, requeue=False)
            return
        rate_slot = message.extra_headers.pop(RATE_SLOT_HEADER, None)
        request = Request.from_message(
            message,
            queue=delivery.queue,
            hostname=self.hostname,
            redelivered=delivery.redelivered,
            delivery_count=delivery.delivery_count,
        )
        now = datetime.now(UTC)
        expired = message.expires is not None and message.expires <= now
        if expired or message.id in self.revoked:
            self._revoke(request, delivery, expired=expired)
            return
        if message.eta is not None and message.eta > now + timedelta(milliseconds=20):
            # The ETA is still ahead (e.g. sent by a client that does not delay in the broker):
            # wait in the broker, not in this worker's memory.
            transport.publish(envelope, delivery.queue, eta=message.eta.timestamp())
            transport.ack(delivery)
            return
        if task.rate_limit:
            wait = self.rate_limits.admit(task.name, task.rate_limit, rate_slot)
            if wait is not None:
                self._defer(delivery, *wait)
                return
        acks_late = task.acks_late if task.acks_late is not None else app.conf.task_acks_late
        hard, soft = message.timelimit
        hard = hard if hard is not None else app.conf.task_time_limit
        soft = soft if soft is not None else app.conf.task_soft_time_limit
        if task.name in self.time_limits:  # set by remote control: wins over the message's
            soft, hard = self.time_limits[task.name]
        job = _Job(task, request, delivery, acks_late, TimeLimits(soft, hard) if hard or soft else None)
        if logger.isEnabledFor(logging.INFO):
            logger.info("Task %s[%s] received", task.name, request.id)
        app.plugins.task_received(app, request)
        events = self.events
        if events is not None and events.task_events:
            events.send(
                "task-received",
                uuid=request.id,
                name=task.name,
                args=short_repr(request.args),
                kwargs=short_repr(request.kwargs),
                retries=request.retries,
                eta=request.eta.isoformat() if request.eta is not None else None,
                expires=request.expires.isoformat() if request.expires is not None else None,
                root_id=request.root_id,
                parent_id=request.parent_id,
                queue=delivery.queue,
            )
        if not acks_late:
            transport.ack(delivery)
        with self._cond:
            self._reserved.append(job)
            self._held += 1

    def _defer(self, delivery: Delivery, when: float, slot: str) -> None:
        """Rate limit: publish the message again to arrive at ``when`` (its reserved start),
        then ack this delivery; it holds no prefetch and no pool slot while it waits."""
        assert self.transport is not None
        envelope = delivery.envelope
        deferred = Envelope(
            envelope.body,
            envelope.content_type,
            envelope.content_encoding,
            {**envelope.headers, RATE_SLOT_HEADER: slot},
            dict(envelope.properties),
        )
        try:
            self.transport.publish(deferred, delivery.queue, eta=when)
        except Exception as exc:
            logger.error("cannot delay a rate-limited message (%s); it goes back to the queue", exc)
            self._safely(self.transport.reject, delivery, requeue=True)
            return
        self.transport.ack(delivery)

    def _revoke(self, request: Request, delivery: Delivery, *, expired: bool) -> None:
        assert self.transport is not None
        reason = "expired" if expired else "revoked"
        self.stats.revoked += 1
        logger.info("Task %s[%s] %s; not run", request.task, request.id, reason)
        self._safely(
            self.app.store_result,
            request.id,
            states.REVOKED,
            {
                "exc_type": "TaskRevokedError",
                "exc_module": "celeriac.exceptions",
                "exc_message": [f"task {request.id} {reason}"],
            },
            request=request,
        )
        self._safely(_workflow.after_settled, self.app, request, states.REVOKED, reason)
        self.transport.ack(delivery)
        self._task_event("task-revoked", request.id, name=request.task, terminated=False, signum=None, expired=expired)
        self.app.plugins.task_revoked(self.app, request, terminated=False, signum=None, expired=expired)

    def revoke(self, *task_ids: str, persist: bool = True) -> None:
        """Do not run ``task_ids`` if they arrive here or are waiting here (the last 50,000 ids
        are kept; in ``worker_state_db`` too when it is set)."""
        now = time.time()
        for task_id in task_ids:
            self.revoked[task_id] = now
            self.revoked.move_to_end(task_id)  # the cap drops the oldest revokes first
        while len(self.revoked) > _MAX_REVOKED:
            self.revoked.popitem(last=False)
        if persist:
            self.persist_revoked()

    def persist_revoked(self) -> None:
        """Write the revoked ids to ``worker_state_db`` (when set)."""
        if self._state_db is not None:
            self._state_db.save(self.revoked)

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop ``task_id`` if it runs here now (``revoke(terminate=True)``); False if it does
        not, or the pool cannot stop a running task."""
        with self._cond:
            job = next((job for job in self._active.values() if job.request.id == task_id), None)
        if job is None or self.pool is None:
            return False
        job.terminated = signum
        try:
            stopped = self.pool.terminate(job.request, signum)
        except Exception as exc:
            logger.error("could not terminate %s[%s]: %s", job.task.name, task_id, exc)
            stopped = False
        if not stopped:
            job.terminated = None
        else:
            logger.warning("Terminating %s[%s] (%s)", job.task.name, task_id, signal.Signals(signum).name)
        return stopped

    def _task_event(self, type: str, task_id: str, **fields: Any) -> None:  # noqa: A002
        events = self.events
        if events is not None and events.task_events:
            events.send(type, uuid=task_id, **fields)

    # -- running ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Move reserved jobs into free pool slots. Re-entrant calls (an inline pool finishing
        a job inside ``submit``) just return; the outer loop picks up the freed slot."""
        if getattr(self._dispatching, "active", False):
            return
        self._dispatching.active = True
        pool = self.pool
        assert pool is not None
        try:
            while True:
                with self._cond:
                    if not self._reserved or len(self._active) >= pool.size or self._stopping.is_set():
                        return
                    job = self._reserved.popleft()
                    if job.request.id in self.revoked:  # revoked while it waited here
                        self._held -= 1
                        self._cond.notify_all()
                    else:
                        self._active[id(job)] = job
                if job.request.id in self.revoked:
                    self._safely(self._revoke, job.request, job.delivery, expired=False)
                    continue
                job.started = time.monotonic()
                events = self.events
                if events is not None and events.task_events:
                    events.send("task-started", uuid=job.request.id)
                pool.submit(
                    job.request,
                    functools.partial(self._finish, job),
                    functools.partial(self._lost, job),
                    time_limits=job.time_limits,
                )
        finally:
            self._dispatching.active = False

    def _run(self, request: Request) -> Outcome:
        """The pool runner: execute one request (in a pool thread or child process). A pool
        that runs coroutines gets a coroutine for an ``async def`` task, else an ``InThread``."""
        task = self.app.tasks[request.task]
        if self.pool is not None and self.pool.runs_coroutines:
            from .._execution import execute_async, is_async_task
            from ..pool import InThread

            if is_async_task(task):
                return execute_async(task, request)  # type: ignore[return-value]
            return InThread(functools.partial(execute, task, request))  # type: ignore[return-value]
        return execute(task, request)

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        """Pool callback: free the slot, hand the outcome to the settler thread, start the next
        reserved job. Storing and acking happen in the settler, overlapping the next task."""
        self._release(job, outcome)

    def _lost(self, job: _Job, exc: BaseException) -> None:
        """Pool callback: the job could not run (its process died, or the runner failed)."""
        self._release(job, exc)

    def _release(self, job: _Job, outcome: Outcome | BaseException) -> None:
        with self._cond:
            self._active.pop(id(job), None)
            self._settling[id(job)] = job
            self._held -= 1
            self._cond.notify_all()
        self._settle_queue.put((job, outcome))
        if self.pool is not None and not self.pool.runs_inline:
            self._dispatch()

    def _settle_loop(self) -> None:
        """Store results and ack in batches: whatever finished since the last round trip goes
        to the result store in one ``set_many`` and to the broker in one ``ack_many``."""
        while True:
            item = self._settle_queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _MAX_SETTLE_BATCH:
                try:
                    item = self._settle_queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._settle_queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                self._settle_batch(batch)
            except Exception:
                logger.exception("internal error settling %d messages; they will be redelivered", len(batch))
            finally:
                with self._cond:
                    for job, _ in batch:
                        self._settling.pop(id(job), None)
                    self._cond.notify_all()

    def _settle_batch(self, batch: list[tuple[_Job, Outcome | BaseException]]) -> None:
        app = self.app
        transport = self.transport
        assert transport is not None
        records: list[tuple[_Job, ResultRecord, Outcome]] = []
        acks: list[_Job] = []
        for job, outcome in batch:
            if isinstance(outcome, BaseException):
                failed = self._settle_lost(job, outcome)
                if failed is None:
                    continue
                outcome = failed  # a failure like any other: stored, counted, evented, carried on
            task, request = job.task, job.request
            self.stats.total[task.name] += 1
            self._log_outcome(job, outcome)
            if self.events is not None and self.events.task_events:
                self._outcome_event(job, outcome)
            if outcome.state == REJECTED:
                self.stats.rejected += 1
                if outcome.requeue:
                    self._safely(transport.reject, job.delivery, requeue=True)
                else:
                    self._safely(transport.dead_letter, job.delivery, f"rejected by task: {outcome.value}")
                    self._carry_on(job, outcome)
                continue
            already_stored = outcome.stored  # task.retry() stores RETRY before publishing the retry
            if outcome.state != IGNORED and not already_stored and not self._ignores_result(task, request):
                record = app.encode_result(
                    request.id, outcome.state, outcome.value, traceback=outcome.traceback, request=request
                )
                records.append((job, record, outcome))
            else:
                self._settled(job, self._carry_on(job, outcome), acks)
        if records:
            try:
                app.result_store.set_many([record for _, record, _ in records], expires=app.conf.result_expires)
            except Exception as exc:
                logger.error(
                    "could not store %d result(s) (%s); their messages go back to the queue", len(records), exc
                )
                for job, _, _ in records:
                    if job.acks_late:
                        self._safely(transport.reject, job.delivery, requeue=True)
            else:
                for job, _, outcome in records:
                    self._settled(job, self._carry_on(job, outcome), acks)
        if acks:
            self._safely(transport.ack_many, [job.delivery for job in acks])

    def _carry_on(self, job: _Job, outcome: Outcome) -> bool:
        """Carry the job's workflow on (chord counting, failing the rest of a chain); False if
        that failed and the message should be delivered again."""
        if not _workflow.involved(job.request):
            return True
        value = outcome.value
        try:
            _workflow.after_settled(self.app, job.request, outcome.state, value)
        except Exception:
            logger.exception("could not carry on the workflow of %s[%s]", job.task.name, job.request.id)
            return False
        return True

    def _settled(self, job: _Job, carried_on: bool, acks: list[_Job]) -> None:
        if not job.acks_late:
            return
        if carried_on:
            acks.append(job)
        else:
            assert self.transport is not None
            self._safely(self.transport.reject, job.delivery, requeue=True)

    def _log_outcome(self, job: _Job, outcome: Outcome) -> None:
        name, task_id, state = job.task.name, job.request.id, outcome.state
        if state == states.SUCCESS:
            self.stats.succeeded += 1
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "Task %s[%s] succeeded in %.6fs: %s", name, task_id, outcome.runtime, short_repr(outcome.value)
                )
        elif state == states.FAILURE:
            self.stats.failed += 1
            logger.error("Task %s[%s] raised: %s", name, task_id, _exception_line(outcome))
        elif state == states.RETRY:
            self.stats.retried += 1
            logger.info("Task %s[%s] retry: %s", name, task_id, _exception_line(outcome))

    def _outcome_event(self, job: _Job, outcome: Outcome) -> None:
        assert self.events is not None
        task_id, state = job.request.id, outcome.state
        if state == states.SUCCESS:
            self.events.send("task-succeeded", uuid=task_id, result=short_repr(outcome.value), runtime=outcome.runtime)
        elif state == states.FAILURE:
            self.events.send(
                "task-failed", uuid=task_id, exception=_exception_line(outcome), traceback=outcome.traceback
            )
        elif state == states.RETRY:
            self.events.send(
                "task-retried", uuid=task_id, exception=_exception_line(outcome), traceback=outcome.traceback
            )
        elif state == REJECTED:
            self.events.send("task-rejected", uuid=task_id, requeue=outcome.requeue)

    def _ignores_result(self, task: Task[..., Any], request: Request) -> bool:
        return _workflow.ignores_result(self.app, task, request)

    def _settle_lost(self, job: _Job, exc: BaseException) -> Outcome | None:
        """The pool could not return an outcome: the task was terminated (REVOKED), its process
        died (requeued with acks_late), or it failed there (a hard time limit killed it, its
        result could not be sent back): then the FAILURE outcome to settle like any other, after
        the ``task_failure`` signal and the errbacks, which the dead process could not run."""
        assert self.transport is not None
        try:
            if job.terminated is not None or isinstance(exc, Terminated):
                self._settle_terminated(job)
                return None
            if isinstance(exc, WorkerLostError) and job.acks_late:
                logger.error("%s[%s]: %s; the message goes back to the queue", job.task.name, job.request.id, exc)
                self.transport.reject(job.delivery, requeue=True)
                return None
        except Exception:
            logger.exception("could not settle %s[%s]", job.task.name, job.request.id)
            return None
        app, task, request = self.app, job.task, job.request
        text = "".join(traceback_module.format_exception(exc))
        runtime = time.monotonic() - job.started if job.started else 0.0
        outcome = Outcome(request.id, states.FAILURE, exception_to_data(exc), text, runtime, exception=exc)
        app.plugins.task_failure(app, task, request.id, exc, request.args, request.kwargs, text)
        self._safely(_workflow.run_errbacks, app, task, request, exc, text)
        return outcome

    def _settle_terminated(self, job: _Job) -> None:
        """A task stopped by ``revoke(terminate=True)``: REVOKED, acked, never run again."""
        assert self.transport is not None
        request, signum = job.request, job.terminated
        self.stats.revoked += 1
        logger.warning("Task %s[%s] terminated (signal %s)", job.task.name, request.id, signum)
        error = {
            "exc_type": "TaskRevokedError",
            "exc_module": "celeriac.exceptions",
            "exc_message": [f"task {request.id} terminated"],
        }
        self.app.store_result(request.id, states.REVOKED, error, request=request)
        self._safely(_workflow.after_settled, self.app, request, states.REVOKED, "terminated")
        self.transport.ack(job.delivery)
        self._task_event("task-revoked", request.id, name=request.task, terminated=True, signum=signum, expired=False)
        self.app.plugins.task_revoked(self.app, request, terminated=True, signum=signum, expired=False)

    # -- leases -----------------------------------------------------------------------------

    def _lease_loop(self) -> None:
        assert self.transport is not None
        visibility = float(self.transport.options.get("visibility_timeout") or 60.0)
        interval = self.app.conf.worker_lease_interval or max(visibility / 3, 0.05)
        while not self._stopping.wait(interval):
            with self._cond:
                held = [job.delivery for job in (*self._active.values(), *self._reserved, *self._settling.values())]
            if held:
                self._safely(self.transport.extend_lease, held, visibility)

    # -- helpers ----------------------------------------------------------------------------

    def _safely(self, function: Any, *args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except Exception as exc:
            logger.error("%s failed: %s", getattr(function, "__name__", function), exc)

    def info(self) -> dict[str, Any]:
        """A snapshot for ``stats``: pool, counters, held messages."""
        with self._cond:
            active, reserved = len(self._active), len(self._reserved)
        return {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "pool": self.pool.info() if self.pool is not None else {},
            "prefetch_count": self.prefetch_limit,
            "total": dict(self.stats.total),
            "active": active,
            "reserved": reserved,
            "rate_limited": self.rate_limits.deferred,
            "uptime": time.time() - self.stats.started_at,
        }

    # -- remote control ---------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        """Tasks running in the pool now."""
        return len(self._active)

    def job_infos(self, where: str) -> list[dict[str, Any]]:
        """Celery's request dicts of the ``"active"`` (running) or ``"reserved"`` jobs."""
        with self._cond:
            jobs = list(self._active.values() if where == "active" else self._reserved)
        now, wall = time.monotonic(), time.time()
        pid, pool = os.getpid(), self.pool
        infos = []
        for job in jobs:
            request = job.request
            infos.append(
                {
                    "id": request.id,
                    "name": request.task,
                    "type": request.task,
                    "args": request.args,
                    "kwargs": request.kwargs,
                    "hostname": self.hostname,
                    "time_start": wall - (now - job.started) if job.started else None,
                    "acknowledged": not job.acks_late,
                    "delivery_info": {
                        "routing_key": request.queue,
                        "priority": request.priority,
                        "redelivered": request.redelivered,
                    },
                    "worker_pid": (pool.running_pid(request) if pool is not None else None) or pid,
                    "eta": request.eta.isoformat() if request.eta is not None else None,
                    "retries": request.retries,
                    "root_id": request.root_id,
                    "parent_id": request.parent_id,
                }
            )
        return infos

    def stats_reply(self) -> dict[str, Any]:
        """The reply to ``inspect stats`` (Celery's shape)."""
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        rusage = {
            name: getattr(usage, f"ru_{name}")
            for name in ("utime", "stime", "maxrss", "minflt", "majflt", "nvcsw", "nivcsw", "inblock", "oublock")
        }
        broker = self.transport.info() if self.transport is not None else {}
        broker = {key: _masked(value) for key, value in broker.items()}
        events = self.events
        return {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "uptime": time.time() - self.stats.started_at,
            "pool": self.pool.stats() if self.pool is not None else {},
            "prefetch_count": self.prefetch_limit,
            "total": dict(self.stats.total),
            "succeeded": self.stats.succeeded,
            "failed": self.stats.failed,
            "retried": self.stats.retried,
            "rejected": self.stats.rejected,
            "revoked": self.stats.revoked,
            "active": self.active_count,
            "reserved": len(self._reserved),
            "rate_limited": self.rate_limits.deferred,
            "rusage": rusage,
            "broker": broker,
            "queues": list(self.queues),
            "task_events": bool(events is not None and events.task_events),
            "autoscaler": {"min": self.autoscaler.low, "max": self.autoscaler.high}
            if self.autoscaler is not None and hasattr(self.autoscaler, "high")
            else None,
        }

    def add_queue(self, queue: str) -> None:
        """Start consuming ``queue`` too (declared first)."""
        assert self.transport is not None
        self.transport.declare_queue(queue)
        self.queues = [*self.queues, queue]
        self.wake_consumer()
        logger.info("%s: consuming from %s too", self.hostname, queue)

    def remove_queue(self, queue: str) -> None:
        """Stop consuming ``queue``."""
        self.queues = [name for name in self.queues if name != queue]
        self.wake_consumer()
        logger.info("%s: no longer consuming from %s", self.hostname, queue)

    def wake_consumer(self) -> None:
        """Make the consumer loop look at queues and pool size again now."""
        with self._cond:
            self._cond.notify_all()
        if self.transport is not None:
            self.transport.wake()


def _masked(value: Any) -> Any:
    from ..config import mask_url

    return mask_url(value) if isinstance(value, str) and "://" in value else value


def _exception_line(outcome: Outcome) -> str:
    value = outcome.value
    if isinstance(value, dict) and "exc_type" in value:
        message = value.get("exc_message") or []
        return f"{value['exc_type']}({', '.join(repr(m) for m in message)})"
    return repr(value)
