"""The ``threads`` pool: a fixed set of long-lived threads in the worker process.

Items go through one queue to ``N`` daemon threads named ``celeriac-pool-1`` ... ``-N``; the
callbacks run in the pool thread that ran the item. The pool can grow and shrink at run time.

Time limits are enforced by one shared watchdog thread, which raises an exception *inside* the
pool thread with ``PyThreadState_SetAsyncExc``:

* the **soft** limit raises :class:`~celeriac.SoftTimeLimitExceeded`, which the task may catch
  to clean up;
* the **hard** limit cannot kill a thread, so here it is treated like a second soft limit and
  raises :class:`~celeriac.TimeLimitExceeded`. Use the ``processes`` pool to really kill a task.

Both limits cover the task body only: they are disarmed when it returns, before its success
or failure handlers and the next workflow step run.

An asynchronous exception is only seen when the thread runs Python code: a thread blocked in a
single long C call (``time.sleep(60)``, a socket read without a timeout) sees it when that call
returns.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from celeriac import Pool, SoftTimeLimitExceeded, TimeLimitExceeded, TimeLimits
from celeriac.plugins.pools._lifecycle import ProcessLifecycle

__all__ = ["ThreadPool"]

logger = logging.getLogger("celeriac.pool")
_LIMIT_EXCEPTIONS = (SoftTimeLimitExceeded, TimeLimitExceeded)


@dataclass(frozen=True, slots=True)
class _Work:
    """One submitted item and where its outcome goes."""

    item: Any
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None]
    time_limits: TimeLimits | None


class _Execution:
    """One item running on one thread, as the watchdog sees it.

    ``armed`` and ``fired`` are only read and written under the watchdog's lock, so the
    watchdog never raises into a thread that has moved on to another item.
    """

    __slots__ = ("armed", "fired", "thread_ident")

    def __init__(self, thread_ident: int) -> None:
        self.thread_ident = thread_ident
        self.armed = False
        self.fired = False


def _set_async_exc(thread_ident: int, exc_type: type[BaseException] | None) -> None:
    """Make ``exc_type`` pending in the thread ``thread_ident``; ``None`` clears a pending one."""
    exc = None if exc_type is None else ctypes.py_object(exc_type)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), exc)


class _Watchdog:
    """One thread that raises time-limit exceptions in pool threads whose limits have passed."""

    def __init__(self) -> None:
        # A plain (C) lock, never a Condition, in the pool threads' ``with`` statements: entering
        # a Condition runs Python code, where a pending time-limit exception could be raised
        # after the lock is taken and before the ``with`` body protects it.
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._deadlines: list[tuple[float, int, _Execution, type[BaseException]]] = []
        self._order = itertools.count()
        self._armed_count = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def arm(self, execution: _Execution, limits: TimeLimits) -> None:
        """Start the clock for ``execution`` (called by the pool thread about to run it)."""
        now = time.monotonic()
        with self._lock:
            for seconds, exc_type in ((limits.soft, SoftTimeLimitExceeded), (limits.hard, TimeLimitExceeded)):
                if seconds is not None:
                    heapq.heappush(self._deadlines, (now + seconds, next(self._order), execution, exc_type))
            execution.armed = True
            self._armed_count += 1
            if len(self._deadlines) > 4 * self._armed_count + 64:  # drop deadlines of finished items
                self._deadlines = [entry for entry in self._deadlines if entry[2].armed]
                heapq.heapify(self._deadlines)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="celeriac-pool-watchdog", daemon=True)
                self._thread.start()
            # safe under the lock: nothing can be pending for this thread until it lets go
            self._wakeup.notify()

    def disarm(self, execution: _Execution) -> None:
        """Stop the clock for ``execution``; called by its own thread, and safe to call again.

        If a limit fired just as the item finished, its exception may still be pending: it is
        cleared here, or it is raised out of this method and the caller calls it again.
        """
        with self._lock:
            if execution.armed:
                execution.armed = False
                self._armed_count -= 1
            fired = execution.fired
        if fired:
            _set_async_exc(execution.thread_ident, None)

    def stop(self) -> None:
        """Stop the watchdog thread (no item may be armed any more)."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _watch(self) -> None:
        with self._lock:
            while not self._stopping:
                while self._deadlines and not self._deadlines[0][2].armed:
                    heapq.heappop(self._deadlines)
                if not self._deadlines:
                    self._wakeup.wait()
                    continue
                deadline, _, execution, exc_type = self._deadlines[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._wakeup.wait(remaining)
                    continue
                heapq.heappop(self._deadlines)
                execution.fired = True
                _set_async_exc(execution.thread_ident, exc_type)


class ThreadPool(Pool):
    """Run items on ``concurrency`` long-lived threads; see the module docstring.

    ``process_init`` is called once, in the thread that calls :meth:`start`.
    """

    name: ClassVar[str] = "threads"

    def __init__(self, concurrency: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(concurrency, options)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()  # None: one thread exits
        self._threads: list[threading.Thread] = []
        self._thread_numbers = itertools.count(1)
        self._runner: Callable[[Any], Any] | None = None
        self._lifecycle: ProcessLifecycle | None = None
        self._stopped = False
        self._outstanding = 0
        self._processed = 0
        self._watchdog = _Watchdog()

    def start(self, runner: Callable[[Any], Any], process_init: Callable[[], None]) -> None:
        """Call ``process_init`` in this thread, then start the threads."""
        with self._lock:
            self._check_accepting()
            if self._runner is not None:
                raise RuntimeError("the threads pool is already started")
        self._lifecycle = ProcessLifecycle(process_init)
        with self._lock:
            self._runner = runner
            self._spawn(runner, self.concurrency)

    def submit(
        self,
        item: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        *,
        time_limits: TimeLimits | None = None,
    ) -> None:
        """Queue ``item`` for the next free thread."""
        with self._lock:
            self._check_accepting()
            if self._runner is None:
                raise RuntimeError("the threads pool is not started; call start() first")
            if self._outstanding >= self.concurrency:
                raise RuntimeError(
                    f"the threads pool is full: {self._outstanding} items outstanding for size {self.concurrency}"
                )
            self._outstanding += 1
            self._queue.put(_Work(item, on_done, on_error, time_limits))

    def grow(self, n: int = 1) -> None:
        """Start ``n`` more threads."""
        _check_step(n)
        with self._lock:
            self._check_accepting()
            self.concurrency += n
            if self._runner is not None:
                self._spawn(self._runner, n)

    def shrink(self, n: int = 1) -> None:
        """Retire ``n`` threads; :attr:`size` drops at once, busy threads finish their item first."""
        _check_step(n)
        with self._lock:
            self._check_accepting()
            if n >= self.concurrency:
                raise ValueError(f"cannot shrink the threads pool by {n}: it has {self.concurrency} and needs 1")
            self.concurrency -= n
            if self._runner is not None:
                for _ in range(n):
                    self._queue.put(None)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting items and wait up to ``timeout`` for the threads to finish theirs.

        Safe to call again (e.g. with a longer timeout). Called from a pool thread (inside a
        callback), it does not wait for that thread.
        """
        with self._lock:
            if not self._stopped:
                self._stopped = True
                for _ in self._threads:
                    self._queue.put(None)
            threads = [thread for thread in self._threads if thread is not threading.current_thread()]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        finished = not any(thread.is_alive() for thread in threads)
        if finished:
            self._watchdog.stop()
        if self._lifecycle is not None:
            self._lifecycle.shutdown()  # worker_process_shutdown, once, in this process
        return finished

    def info(self) -> dict[str, Any]:
        """Implementation, max-concurrency and the names of the live threads."""
        info = super().info()
        with self._lock:
            info["threads"] = [thread.name for thread in self._threads]
        return info

    def stats(self) -> dict[str, Any]:
        """``info()`` plus busy/idle slot counts and items processed."""
        info = self.info()
        with self._lock:
            info.update(
                busy=self._outstanding, idle=max(0, self.concurrency - self._outstanding), processed=self._processed
            )
        return info

    def _check_accepting(self) -> None:
        if self._stopped:
            raise RuntimeError("the threads pool is stopped; it accepts no more items")

    def _spawn(self, runner: Callable[[Any], Any], n: int) -> None:
        for _ in range(n):
            name = f"celeriac-pool-{next(self._thread_numbers)}"
            thread = threading.Thread(target=self._work, args=(runner,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self, runner: Callable[[Any], Any]) -> None:
        try:
            while (work := self._queue.get()) is not None:
                self._run(runner, work)
        finally:
            with self._lock:
                self._threads.remove(threading.current_thread())

    def _run(self, runner: Callable[[Any], Any], work: _Work) -> None:
        ok, value = call_with_limits(self._watchdog, functools.partial(runner, work.item), work.time_limits)
        outcome: tuple[Callable[[Any], None], Any] = (work.on_done if ok else work.on_error, value)
        with self._lock:
            self._outstanding -= 1
            self._processed += 1
        callback, value = outcome
        try:
            callback(value)
        except BaseException:  # a pool thread must survive whatever a callback does
            which = "on_done" if callback is work.on_done else "on_error"
            logger.exception("threads pool: the %s callback of an item raised; the pool carries on", which)


def new_watchdog() -> _Watchdog:
    """A watchdog for threads that other pools run items on (``asyncio``'s executor)."""
    return _Watchdog()


def call_with_limits(watchdog: _Watchdog, function: Callable[[], Any], limits: TimeLimits | None) -> tuple[bool, Any]:
    """Call ``function()`` in this thread with ``limits`` enforced by ``watchdog`` until the
    task body returns (:meth:`Pool.on_body_return`: the task's success/failure handlers and
    the next workflow step run without limits); ``(True, result)`` or ``(False, exception)``,
    never raises."""
    execution = None
    if limits is not None and (limits.soft is not None or limits.hard is not None):
        execution = _Execution(threading.get_ident())
    if execution is None or limits is None:
        try:
            return True, function()
        except BaseException as exc:
            return False, exc
    # From arm() until disarm() returns, a time-limit exception may be raised at any call or
    # backward jump: the code in between has neither outside a ``try``. Each limit fires at
    # most once, so at most two can arrive late, and the third disarm() cannot be hit.
    try:
        Pool.on_body_return(functools.partial(_disarm, watchdog, execution))
        watchdog.arm(execution, limits)
        outcome: tuple[bool, Any] = (True, function())
    except BaseException as exc:
        outcome = (False, exc)
    _disarm(watchdog, execution)
    Pool.on_body_return(None)
    return outcome


def _disarm(watchdog: _Watchdog, execution: _Execution) -> None:
    """Stop the clock for ``execution``; a limit that fired just now is dropped."""
    try:
        watchdog.disarm(execution)
    except _LIMIT_EXCEPTIONS:  # fired as the item finished: the item's outcome stands
        try:
            watchdog.disarm(execution)
        except _LIMIT_EXCEPTIONS:
            watchdog.disarm(execution)


def warn_about_hard_limits(app: Any) -> list[str]:
    """Log one warning when ``task_time_limit`` or a registered task declares a hard time limit:
    a thread cannot be killed, so here the hard limit only raises inside the task. Returns the
    names it warned about (``"task_time_limit"`` for the app-wide setting)."""
    declared = [name for name, task in sorted(app.tasks.items()) if getattr(task, "time_limit", None)]
    if app.conf.task_time_limit:
        declared.insert(0, "task_time_limit")
    if declared:
        logger.warning(
            "threads pool: hard time limits (%s) cannot kill a thread; they raise TimeLimitExceeded "
            "inside the task, which a task blocked in C code does not see. Use -P processes to enforce them.",
            ", ".join(declared),
        )
    return declared


def _check_step(n: int) -> None:
    if n < 1:
        raise ValueError(f"pool grow/shrink step must be at least 1, got {n}")
