"""The ``asyncio`` pool: ``async def`` tasks on one event loop, in the worker process.

One thread (``celeriac-asyncio-loop``) runs an event loop (uvloop's when it is installed and
the ``uvloop`` option is not false). ``concurrency`` is the number of items in flight, so it is
usually set much higher than for threads or processes (``-c 500``). The runner is called on the
loop and must not block there: the worker's runner returns a coroutine for an ``async def``
task, which is awaited on the loop, and :class:`~celeriac.Pool.InThread` for a plain task,
which runs in the pool's thread executor (``threads`` option, default ``min(32, concurrency)``
threads) so it never blocks the loop. Callbacks run on the loop.

Time limits:

* **coroutines**: the soft limit raises :class:`~celeriac.SoftTimeLimitExceeded` inside the
  task at the ``await`` it is suspended on (the task may catch it); the hard limit cancels the
  task and fails the item with :class:`~celeriac.TimeLimitExceeded`. Code that never awaits
  (a CPU loop) sees neither until it awaits: use ``processes`` for that.
* **plain tasks** in the executor: as in the ``threads`` pool (raised inside the thread; a
  thread cannot be killed).

Options (``worker.pool_options``): ``threads`` (executor size), ``uvloop`` (bool, default true).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, ClassVar

from celeriac import Pool, SoftTimeLimitExceeded, Terminated, TimeLimitExceeded, TimeLimits, WorkerLostError
from celeriac.plugins.pools._lifecycle import ProcessLifecycle

from ._threads import call_with_limits, new_watchdog

__all__ = ["AsyncioPool"]

logger = logging.getLogger("celeriac.pool")

_OPTIONS = {"threads", "uvloop", "max_tasks_per_child", "max_memory_per_child"}  # the last two: no children


class _Interruptible:
    """Await ``awaitable`` so that :meth:`interrupt` raises :class:`SoftTimeLimitExceeded`
    inside it, at the ``await`` it is suspended on (a cancellation turned into that exception).
    """

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self._awaitable = awaitable
        self._interrupt_pending = False
        self.cancelled_for_real = False

    def interrupt(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._interrupt_pending = True
            task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = yield yielded
            except GeneratorExit:
                if hasattr(inner, "close"):
                    inner.close()
                raise
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and self._interrupt_pending and not self.cancelled_for_real:
                    self._interrupt_pending = False
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    error = SoftTimeLimitExceeded()
                else:
                    error = exc


class _Flight:
    """One item in flight on the loop."""

    __slots__ = ("driver", "item", "limits", "on_done", "on_error", "started", "stop_reason", "task", "timers")

    def __init__(
        self,
        item: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        limits: TimeLimits | None,
    ) -> None:
        self.item = item
        self.on_done = on_done
        self.on_error = on_error
        self.limits = limits
        self.task: asyncio.Task[Any] | None = None
        self.started = False  # _fly() began: from here on its ``finally`` always reports
        self.driver: _Interruptible | None = None
        self.stop_reason: BaseException | None = None  # hard limit, terminate or stop
        self.timers: list[asyncio.TimerHandle] = []


class AsyncioPool(Pool):
    """Run items on one event loop; see the module docstring."""

    name: ClassVar[str] = "asyncio"
    runs_coroutines: ClassVar[bool] = True

    #: Without ``-c`` / ``worker.concurrency`` a worker runs this many items at once.
    default_concurrency: ClassVar[int | None] = 100

    def __init__(self, concurrency: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(concurrency, options)
        unknown = sorted(set(self.options) - _OPTIONS)
        if unknown:
            raise ValueError(f"asyncio pool: unknown option(s) {', '.join(map(repr, unknown))}; known: threads, uvloop")
        threads = self.options.get("threads", min(32, concurrency))
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"asyncio pool: option threads must be a positive integer, got {threads!r}")
        self.threads: int = threads
        self.use_uvloop = bool(self.options.get("uvloop", True))
        self.loop_implementation = ""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._flights: dict[int, _Flight] = {}  # by id(flight)
        self._outstanding = 0
        self._runner: Callable[[Any], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchdog = new_watchdog()
        self._stopped = False
        self._finished = True
        self._lifecycle: ProcessLifecycle | None = None

    def start(self, runner: Callable[[Any], Any], process_init: Callable[[], None]) -> None:
        """Call ``process_init`` here, then start the loop thread."""
        with self._lock:
            if self._runner is not None:
                raise RuntimeError("the asyncio pool is already started")
            self._runner = runner
        self._lifecycle = ProcessLifecycle(process_init)
        self._loop = self._new_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="celeriac-asyncio")
        running = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(self._loop, running), name="celeriac-asyncio-loop", daemon=True
        )
        self._thread.start()
        running.wait()

    def submit(
        self,
        item: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        *,
        time_limits: TimeLimits | None = None,
    ) -> None:
        """Start ``item`` on the loop."""
        flight = _Flight(item, on_done, on_error, time_limits)
        with self._lock:
            if self._stopped:
                raise RuntimeError("the asyncio pool is stopped; it accepts no more items")
            if self._runner is None or self._loop is None:
                raise RuntimeError("the asyncio pool is not started; call start() first")
            if self._outstanding >= self.concurrency:
                raise RuntimeError(
                    f"the asyncio pool is full: {self._outstanding} items in flight for size {self.concurrency}"
                )
            self._outstanding += 1
            self._flights[id(flight)] = flight
            loop = self._loop
        loop.call_soon_threadsafe(self._launch, flight)

    def grow(self, n: int = 1) -> None:
        """Allow ``n`` more items in flight."""
        _check_step(n)
        with self._lock:
            self.concurrency += n

    def shrink(self, n: int = 1) -> None:
        """Allow ``n`` fewer items in flight (running ones finish)."""
        _check_step(n)
        with self._lock:
            if n >= self.concurrency:
                raise ValueError(f"cannot shrink the asyncio pool by {n}: it has {self.concurrency} and needs 1")
            self.concurrency -= n

    def terminate(self, item: Any, signum: int) -> bool:
        """Cancel the coroutine running ``item`` (its ``on_error`` gets :class:`Terminated`).
        False for a plain task running in a thread, which cannot be stopped."""
        with self._lock:
            flight = next((f for f in self._flights.values() if f.item is item), None)
            loop = self._loop
        if flight is None or loop is None or (flight.task is not None and flight.driver is None):
            return False
        loop.call_soon_threadsafe(self._cancel, flight, Terminated(f"terminated (signal {signum}): cancelled"))
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting items and wait up to ``timeout`` for those in flight; coroutines still
        running then are cancelled and get :class:`WorkerLostError` (the worker requeues them)."""
        with self._lock:
            first = not self._stopped
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return True
        if threading.current_thread() is thread:
            return False
        if not first and not thread.is_alive():
            return self._finished
        with self._changed:
            finished = self._changed.wait_for(lambda: self._outstanding == 0, timeout)
        if not finished:
            lost = WorkerLostError("the asyncio pool stopped (shutdown timeout) while the task ran")
            with self._lock:
                flights = list(self._flights.values())
            for flight in flights:
                loop.call_soon_threadsafe(self._cancel, flight, lost)
            with self._changed:
                self._changed.wait_for(lambda: self._outstanding == 0, 5.0)
        self._finished = finished
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if self._executor is not None:
            self._executor.shutdown(wait=finished, cancel_futures=True)
        if not thread.is_alive():
            loop.close()
        self._watchdog.stop()
        if self._lifecycle is not None:
            self._lifecycle.shutdown()  # worker_process_shutdown, once, in this process
        return finished

    def info(self) -> dict[str, Any]:
        """Implementation, max-concurrency, the loop implementation and executor threads."""
        info = super().info()
        info["loop"] = self.loop_implementation
        info["threads"] = self.threads
        return info

    def stats(self) -> dict[str, Any]:
        """``info()`` plus busy (in flight) and idle slot counts."""
        info = self.info()
        with self._lock:
            info["busy"] = self._outstanding
            info["idle"] = max(0, self.concurrency - self._outstanding)
        return info

    # -- on the loop ------------------------------------------------------------------------

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self.use_uvloop:
            try:
                import uvloop  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                pass
            else:
                self.loop_implementation = "uvloop"
                return uvloop.new_event_loop()  # type: ignore[no-any-return,unused-ignore]
        self.loop_implementation = "asyncio"
        return asyncio.new_event_loop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, running: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(running.set)
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def _launch(self, flight: _Flight) -> None:
        loop = asyncio.get_running_loop()
        flight.task = loop.create_task(self._fly(flight))
        limits = flight.limits
        if limits is not None:
            if limits.soft is not None:
                flight.timers.append(loop.call_later(limits.soft, self._soft_limit, flight))
            if limits.hard is not None:
                flight.timers.append(loop.call_later(limits.hard, self._hard_limit, flight))

    async def _fly(self, flight: _Flight) -> None:
        assert self._runner is not None
        flight.started = True
        try:
            try:
                if flight.stop_reason is not None:
                    raise flight.stop_reason
                produced = self._runner(flight.item)
                if isinstance(produced, Pool.InThread):
                    loop = asyncio.get_running_loop()
                    ok, value = await loop.run_in_executor(
                        self._executor, call_with_limits, self._watchdog, produced.function, flight.limits
                    )
                    if not ok:
                        raise value
                    result = value
                elif inspect.isawaitable(produced):
                    flight.driver = _Interruptible(produced)
                    result = await flight.driver
                else:
                    result = produced
            except asyncio.CancelledError:
                reason = flight.stop_reason or WorkerLostError("the asyncio pool cancelled the task")
                outcome: tuple[Callable[[Any], None], Any] = (flight.on_error, reason)
            except BaseException as exc:
                outcome = (flight.on_error, exc)
            else:
                outcome = (flight.on_done, result)
        finally:
            for timer in flight.timers:
                timer.cancel()
            with self._lock:
                self._flights.pop(id(flight), None)
                self._outstanding -= 1
                self._changed.notify_all()
        callback, value = outcome
        try:
            callback(value)
        except BaseException:
            which = "on_done" if callback is flight.on_done else "on_error"
            logger.exception("asyncio pool: the %s callback of an item raised; the pool carries on", which)

    def _soft_limit(self, flight: _Flight) -> None:
        if flight.driver is not None and flight.task is not None:
            flight.driver.interrupt(flight.task)

    def _hard_limit(self, flight: _Flight) -> None:
        if flight.driver is None:  # a plain task in a thread: the watchdog raises there
            return
        assert flight.limits is not None
        self._cancel(flight, TimeLimitExceeded(f"hard time limit ({flight.limits.hard:g}s) exceeded; task cancelled"))

    def _cancel(self, flight: _Flight, reason: BaseException) -> None:
        if flight.stop_reason is None:
            flight.stop_reason = reason
        if flight.driver is not None:
            flight.driver.cancelled_for_real = True
        if flight.started and flight.task is not None and not flight.task.done():
            flight.task.cancel()  # not started yet: _fly() sees stop_reason first thing


def _check_step(n: int) -> None:
    if n < 1:
        raise ValueError(f"pool grow/shrink step must be at least 1, got {n}")
