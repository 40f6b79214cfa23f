"""The ``processes`` pool (prefork): ``N`` forked child processes, one pipe to each.

One supervisor thread in the worker process (``celeriac-pool-supervisor``) does everything
that touches the children: it forks them (so no other pool code runs while it forks), sends
each idle child one item at a time over its pipe, reads the replies, enforces hard time limits
and replaces children that exit. Callbacks run in that thread.

* **process_init** (the worker's ``worker_process_init`` signal) runs once in every child,
  before it takes an item; what it returns (the worker's ``worker_process_shutdown`` signal)
  runs in the child right before it exits after being told to (recycled, retired, stopped),
  never when it is killed. The runner is inherited through ``fork``; items and replies are
  pickled over the child's own two pipes (never the broker's wire format), one length-prefixed
  frame each way per item: one ``write`` and usually one ``read`` on each side.
* **Soft time limit**: the child arms an interval timer (``SIGALRM``) while the task body runs
  (disarmed when it returns, before its success handlers and the next chain step);
  :class:`~celeriac.SoftTimeLimitExceeded` is raised inside the task, which may catch it.
  ``SIGUSR1`` sent to a child does the same (``revoke(terminate=True, signal="SIGUSR1")``).
* **Hard time limit**: the supervisor sends ``SIGTERM``, then ``SIGKILL`` after
  ``term_grace`` seconds, replaces the child and fails the item with
  :class:`~celeriac.TimeLimitExceeded`. Only the offending child is touched.
* **A child that dies** (``SIGKILL``, the OOM killer, ``os._exit``) is seen at once through its
  process sentinel; its item gets :class:`~celeriac.WorkerLostError` (the worker requeues it
  when the task acks late) and a new child takes its place.
* **Recycling**: a child that ran ``max_tasks_per_child`` items, or whose resident memory went
  over ``max_memory_per_child`` KiB after an item, exits after that item and is replaced.

Options (``worker.pool_options``): ``max_tasks_per_child``, ``max_memory_per_child`` (KiB),
``term_grace`` (seconds between ``SIGTERM`` and ``SIGKILL``, default 1.0), ``start_timeout``
(seconds ``start()`` waits for the first children, default 60).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import resource
import selectors
import signal
import struct
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar

from celeriac import Pool, SoftTimeLimitExceeded, Terminated, TimeLimitExceeded, TimeLimits, WorkerLostError
from celeriac.plugins.pools._lifecycle import ProcessLifecycle

__all__ = ["ProcessPool"]

logger = logging.getLogger("celeriac.pool")

_OPTIONS = {"max_tasks_per_child", "max_memory_per_child", "term_grace", "start_timeout"}
_READY, _DONE, _ERROR = "ready", "done", "error"
_RESPAWN_BACKOFF = 1.0  # seconds between attempts after a child failed to start
_HEADER = struct.Struct("<Q")  # each frame on a pipe: its length, then a pickle
_READ_SIZE = 1 << 16


class _Frames:
    """Split what is read from a pipe into frames (``_HEADER`` + payload)."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes | memoryview]:
        """The frames completed by ``chunk`` (payloads only), oldest first."""
        buffer = self.buffer
        frames: list[bytes | memoryview] = []
        if not buffer:  # the usual case: one read, one whole frame, no copy
            end = _split(chunk, memoryview(chunk), frames)
            if end < len(chunk):
                buffer += chunk[end:]
            return frames
        buffer += chunk
        header = _HEADER.size
        if len(buffer) < header or len(buffer) < header + int(_HEADER.unpack_from(buffer)[0]):
            return frames  # a large frame still arriving: copy nothing yet
        data = bytes(buffer)
        del buffer[: _split(data, memoryview(data), frames)]
        return frames


def _split(data: bytes | bytearray, view: memoryview, frames: list[bytes | memoryview]) -> int:
    """Append the whole frames at the start of ``data`` to ``frames``; return where they end."""
    pos, size, header = 0, len(data), _HEADER.size
    while size - pos >= header:
        end = pos + header + int(_HEADER.unpack_from(data, pos)[0])
        if end > size:
            break
        frames.append(view[pos + header : end])
        pos = end
    return pos


def _write_frame(fd: int, payload: bytes) -> None:
    """Write one frame to a blocking pipe (one system call unless a signal interrupts it)."""
    header = _HEADER.pack(len(payload))
    total = len(header) + len(payload)
    written = os.writev(fd, (header, payload))
    if written < total:
        rest = memoryview(header + payload)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


_STOP = pickle.dumps(None, pickle.HIGHEST_PROTOCOL)


@dataclass(slots=True)
class _Work:
    """One submitted item and where its outcome goes."""

    item: Any
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None]
    time_limits: TimeLimits | None
    hard_deadline: float | None = None


@dataclass(slots=True)
class _Child:
    """One child process as the supervisor sees it."""

    process: BaseProcess
    send_fd: int  # items go to the child here (blocking)
    reply_fd: int  # replies come back here (non-blocking)
    number: int
    pid: int
    frames: _Frames = field(default_factory=_Frames)
    reply_open: bool = True  # False after EOF: the child closed its end (it is exiting)
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    work: _Work | None = None
    processed: int = 0
    memory: int = 0  # resident KiB after the last item
    retiring: bool = False  # to exit after its item (recycled, killed, or the pool shrank / stops)
    shrunk: bool = False  # retiring only because the pool shrank: a grow can take it back
    stop_sent: bool = False
    kill_reason: BaseException | None = None  # what the running item fails with when we killed it
    kill_at: float | None = None  # when SIGTERM did not do: SIGKILL


class ProcessPool(Pool):
    """Run items in forked child processes; see the module docstring."""

    name: ClassVar[str] = "processes"

    def __init__(self, concurrency: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(concurrency, options)
        unknown = sorted(set(self.options) - _OPTIONS)
        if unknown:
            raise ValueError(
                f"processes pool: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(_OPTIONS))}"
            )
        self.max_tasks_per_child: int | None = _positive(self.options, "max_tasks_per_child", int)
        self.max_memory_per_child: int | None = _positive(self.options, "max_memory_per_child", int)
        self.term_grace: float = _positive(self.options, "term_grace", float) or 1.0
        self.start_timeout: float = _positive(self.options, "start_timeout", float) or 60.0
        self._context = multiprocessing.get_context("fork")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: collections.deque[_Work] = collections.deque()
        self._children: dict[int, _Child] = {}  # by number
        self._numbers = itertools.count(1)
        self._outstanding = 0
        self._runner: Callable[[Any], Any] | None = None
        self._process_init: Callable[[], None] = lambda: None
        self._supervisor: threading.Thread | None = None
        self._wake_read, self._wake_write = -1, -1
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self._drain_deadline: float | None = None
        self._killed_at_stop = False
        self._start_error: str | None = None
        self._starting = True
        self._next_spawn = 0.0
        self._total_processed = 0
        self._callbacks: list[tuple[Callable[[Any], None], Any, str]] = []  # supervisor thread only

    # -- the Pool interface -----------------------------------------------------------------

    def start(self, runner: Callable[[Any], Any], process_init: Callable[[], None]) -> None:
        """Fork ``concurrency`` children (each calls ``process_init``) and wait until they are ready."""
        with self._lock:
            if self._runner is not None:
                raise RuntimeError("the processes pool is already started")
            self._runner, self._process_init = runner, process_init
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._supervisor = threading.Thread(target=self._supervise, name="celeriac-pool-supervisor", daemon=True)
        self._supervisor.start()
        with self._changed:
            ready = self._changed.wait_for(
                lambda: self._start_error is not None or self._ready_count() >= self.concurrency, self.start_timeout
            )
            error = self._start_error
        with self._lock:
            self._starting = False
        if error is not None or not ready:
            self.stop(timeout=0)
            raise RuntimeError(error or f"the processes pool did not start {self.concurrency} children in time")

    def submit(
        self,
        item: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        *,
        time_limits: TimeLimits | None = None,
    ) -> None:
        """Queue ``item`` for the next idle child."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the processes pool is stopped; it accepts no more items")
            if self._runner is None:
                raise RuntimeError("the processes pool is not started; call start() first")
            if self._outstanding >= self.concurrency:
                raise RuntimeError(
                    f"the processes pool is full: {self._outstanding} items outstanding for size {self.concurrency}"
                )
            self._outstanding += 1
            self._pending.append(_Work(item, on_done, on_error, time_limits))
            if threading.current_thread() is self._supervisor:
                # from an item's callback (the worker hands over its next item as a slot
                # frees): send it to the idle child now, before the other callbacks run
                self._assign(self._callbacks)
                return
        self._wake()

    def running_pid(self, item: Any) -> int | None:
        """The pid of the child running ``item``; ``None`` while it waits for a child."""
        with self._lock:
            for child in self._children.values():
                work = child.work
                if work is not None and work.item is item:
                    return child.pid
        return None

    def grow(self, n: int = 1) -> None:
        """Fork ``n`` more children."""
        _check_step(n)
        with self._lock:
            self._check_accepting()
            self.concurrency += n
        self._wake()

    def shrink(self, n: int = 1) -> None:
        """Retire ``n`` children: idle ones at once, busy ones after their item."""
        _check_step(n)
        with self._lock:
            self._check_accepting()
            if n >= self.concurrency:
                raise ValueError(f"cannot shrink the processes pool by {n}: it has {self.concurrency} and needs 1")
            self.concurrency -= n
        self._wake()

    def terminate(self, item: Any, signum: int) -> bool:
        """Send ``signum`` to the child running ``item``; its ``on_error`` gets :class:`Terminated`
        when the child dies of it. An item still waiting for a child is dropped the same way."""
        name = _signal_name(signum)
        with self._lock:
            for child in self._children.values():
                if child.work is not None and child.work.item is item:
                    child.kill_reason = Terminated(f"terminated by {name} (pool child {child.pid})")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signum)
                    return True
            waiting = next((work for work in self._pending if work.item is item), None)
            if waiting is None:
                return False
            self._pending.remove(waiting)
            self._outstanding -= 1
            self._changed.notify_all()
        _call(waiting.on_error, Terminated(f"terminated by {name} before it started"), "on_error")
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting items and wait up to ``timeout`` for running ones; then the children
        exit. Items still running at the timeout are killed and get :class:`WorkerLostError`
        (the worker requeues them). True when every item finished by itself."""
        with self._lock:
            self._stopping = True
            if timeout is not None:
                deadline = time.monotonic() + timeout
                if self._drain_deadline is None or deadline < self._drain_deadline:
                    self._drain_deadline = deadline
        self._wake()
        supervisor = self._supervisor
        if supervisor is None:
            return True
        if supervisor is threading.current_thread():  # called from a callback: cannot wait here
            return False
        supervisor.join()
        self._selector.close()
        with contextlib.suppress(OSError):
            os.close(self._wake_read)
        with contextlib.suppress(OSError):
            os.close(self._wake_write)
        return not self._killed_at_stop

    def info(self) -> dict[str, Any]:
        """Implementation, max-concurrency and the pids of the live children."""
        info = super().info()
        with self._lock:
            info["processes"] = [child.pid for child in self._children.values()]
        return info

    def stats(self) -> dict[str, Any]:
        """``info()`` plus busy/idle counts and, per child pid, items processed and resident KiB."""
        info = super().info()
        with self._lock:
            children = list(self._children.values())
            busy = sum(1 for child in children if child.work is not None)
            info.update(
                processes=[child.pid for child in children],
                busy=busy,
                idle=max(0, self.concurrency - busy),
                pending=len(self._pending),
                processed={child.pid: child.processed for child in children},
                total_processed=self._total_processed,
                max_tasks_per_child=self.max_tasks_per_child,
                max_memory_per_child=self.max_memory_per_child,
            )
        info["memory"] = {child.pid: _resident_kib(child.pid) or child.memory for child in children}
        return info

    # -- the supervisor thread --------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            while self._supervise_once():
                pass
        except BaseException:  # a bug here must not leave children, or items, behind
            logger.exception("processes pool: the supervisor failed; killing the children")
            lost = WorkerLostError("the processes pool failed (see the log); the task did not finish")
            with self._lock:
                self._stopping = True
                children = list(self._children.values())
                works = [child.work for child in children if child.work is not None] + list(self._pending)
                self._pending.clear()
                self._outstanding = 0
                self._start_error = self._start_error or "the processes pool supervisor failed"
                self._changed.notify_all()
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            self._run_callbacks(self._callbacks)  # outcomes read before the failure
            for work in works:
                _call(work.on_error, lost, "on_error")

    def _supervise_once(self) -> bool:
        """One round: balance, assign, wait, handle what happened. False when done."""
        callbacks = self._callbacks  # kept on the pool: if this round fails, they still run
        with self._lock:
            if self._stopping and self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
                self._kill_for_stop(callbacks)
            done = self._stopping and self._outstanding == 0 and not self._children
            if not done:
                self._balance()
                self._assign(callbacks)
            timeout = self._next_timeout()
        self._run_callbacks(callbacks)
        if done:
            return False
        readable: dict[int, _Child] = {}
        exited: set[int] = set()
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 4096):
                        pass
                continue
            child, what = key.data
            readable[child.number] = child
            if what == "sentinel":
                exited.add(child.number)
        for number, child in readable.items():
            if number in exited:
                self._read_replies(child, callbacks, drain=True)  # a child may reply, then exit
                self._reap(child, callbacks)
            else:
                self._read_replies(child, callbacks)
        self._run_callbacks(callbacks)  # first: they hand the freed children their next items
        self._enforce_hard_limits(callbacks)
        self._run_callbacks(callbacks)
        return True

    def _balance(self) -> None:
        """Fork children up to the target size, retire the extra ones (idle ones first)."""
        live = [child for child in self._children.values() if not child.retiring]
        target = 0 if self._stopping and self._outstanding == 0 else self.concurrency
        if self._stopping:
            target = min(target, len([c for c in live if c.work is not None]) + len(self._pending))
        extra = len(live) - target
        for child in sorted(live, key=lambda child: child.work is not None):
            if extra <= 0:
                break
            self._retire(child, shrunk=True)
            extra -= 1
        for child in self._children.values():  # grown again: keep busy children that were to go
            if extra < 0 and child.shrunk and not child.stop_sent and not self._stopping:
                child.retiring = child.shrunk = False
                extra += 1
        if extra < 0 and self._start_error is None and time.monotonic() >= self._next_spawn:
            for _ in range(-extra):
                try:
                    self._spawn()
                except OSError as exc:  # fork failed (no memory, too many processes)
                    self._next_spawn = time.monotonic() + _RESPAWN_BACKOFF
                    logger.error("processes pool: cannot start a child (%s); retrying in %.0fs", exc, _RESPAWN_BACKOFF)
                    if self._starting:
                        self._start_error = f"the processes pool cannot start a child: {exc}"
                        self._changed.notify_all()
                    break

    def _retire(self, child: _Child, *, shrunk: bool = False) -> None:
        """Ask ``child`` to exit after its current item (at once when idle)."""
        child.retiring, child.shrunk = True, shrunk
        if child.work is None:
            self._send_stop(child)

    def _send_stop(self, child: _Child) -> None:
        if not child.stop_sent:
            child.stop_sent = True
            with contextlib.suppress(OSError):
                _write_frame(child.send_fd, _STOP)

    def _spawn(self) -> None:
        assert self._runner is not None
        number = next(self._numbers)
        item_read, item_write = os.pipe()
        try:
            reply_read, reply_write = os.pipe()
        except OSError:
            os.close(item_read)
            os.close(item_write)
            raise
        os.set_blocking(reply_read, False)
        inherited = [self._wake_read, self._wake_write, self._selector.fileno(), item_write, reply_read]
        for other in self._children.values():
            inherited += [other.send_fd, other.reply_fd]
        process = self._context.Process(
            target=_child_main,
            args=(item_read, reply_write, self._runner, self._process_init, inherited, bool(self.max_memory_per_child)),
            name=f"celeriac-pool-process-{number}",
            daemon=True,
        )
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns about fork() in a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
        except BaseException:
            os.close(item_write)
            os.close(reply_read)
            raise
        finally:
            os.close(item_read)
            os.close(reply_write)
        child = _Child(process, item_write, reply_read, number, process.pid or 0)
        self._children[number] = child
        self._selector.register(reply_read, selectors.EVENT_READ, (child, "reply"))
        self._selector.register(process.sentinel, selectors.EVENT_READ, (child, "sentinel"))

    def _assign(self, callbacks: list[tuple[Callable[[Any], None], Any, str]]) -> None:
        """Hand pending items to idle, ready children."""
        idle = [c for c in self._children.values() if c.ready and c.work is None and not c.retiring]
        while self._pending and idle:
            work = self._pending.popleft()
            child = idle.pop()
            limits = work.time_limits
            soft = limits.soft if limits is not None else None
            try:
                payload = pickle.dumps((work.item, soft), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                self._outstanding -= 1
                self._changed.notify_all()
                callbacks.append((work.on_error, exc, "on_error"))
                idle.append(child)
                continue
            try:
                _write_frame(child.send_fd, payload)
            except OSError:  # the child just died: its sentinel is about to fire
                self._pending.appendleft(work)
                child.retiring = True
                continue
            child.work = work
            if limits is not None and limits.hard is not None:
                work.hard_deadline = time.monotonic() + limits.hard

    def _read_replies(
        self, child: _Child, callbacks: list[tuple[Callable[[Any], None], Any, str]], *, drain: bool = False
    ) -> None:
        """Handle the replies ``child`` sent: one ``read`` (the pipe is readable) unless a
        large reply is arriving, or everything left when ``drain`` (the child exited)."""
        while child.reply_open:
            try:
                chunk = os.read(child.reply_fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # EOF: the child is exiting; its sentinel reaps it
                child.reply_open = False
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(child.reply_fd)
                return
            for frame in child.frames.feed(chunk):
                self._handle_reply(child, frame, callbacks)
            if not drain and not child.frames.buffer:  # else: a large reply, read on until EAGAIN
                return

    def _handle_reply(
        self, child: _Child, frame: bytes | memoryview, callbacks: list[tuple[Callable[[Any], None], Any, str]]
    ) -> None:
        try:
            kind, value, memory = pickle.loads(frame)
        except Exception as exc:  # a reply that does not unpickle
            kind, value, memory = _ERROR, RuntimeError(f"cannot read a reply from pool child {child.pid}: {exc}"), 0
        with self._lock:
            if kind == _READY:
                child.ready = True
                self._changed.notify_all()
                return
            work, child.work = child.work, None
            if work is None:
                return
            child.kill_reason = child.kill_at = None
            child.processed += 1
            self._total_processed += 1
            child.memory = memory
            self._outstanding -= 1
            self._changed.notify_all()
            if child.retiring or self._should_recycle(child):
                self._retire(child)
        if kind == _DONE:
            callbacks.append((work.on_done, value, "on_done"))
        else:
            callbacks.append((work.on_error, value, "on_error"))

    def _should_recycle(self, child: _Child) -> bool:
        if self.max_tasks_per_child and child.processed >= self.max_tasks_per_child:
            logger.info("pool child %d ran %d tasks (max_tasks_per_child): replacing it", child.pid, child.processed)
            return True
        if self.max_memory_per_child and child.memory > self.max_memory_per_child:
            logger.info(
                "pool child %d uses %d KiB (max_memory_per_child=%d): replacing it",
                child.pid,
                child.memory,
                self.max_memory_per_child,
            )
            return True
        return False

    def _reap(self, child: _Child, callbacks: list[tuple[Callable[[Any], None], Any, str]]) -> None:
        child.process.join(timeout=1.0)
        exitcode = child.process.exitcode
        with self._lock:
            self._children.pop(child.number, None)
            work, child.work = child.work, None
            if work is not None:
                self._outstanding -= 1
                self._changed.notify_all()
            if not child.ready:
                self._next_spawn = time.monotonic() + _RESPAWN_BACKOFF
                message = f"a processes pool child exited with {_describe(exitcode)} while starting"
                if not self._stopping:
                    logger.error("%s; retrying in %.0fs", message, _RESPAWN_BACKOFF)
                    if self._starting:
                        self._start_error = message + "; see the log above"
                self._changed.notify_all()
        for fileobj in (child.reply_fd, child.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fileobj)
        for fd in (child.send_fd, child.reply_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ValueError):
            child.process.close()
        if work is None:
            return
        reason = child.kill_reason or WorkerLostError(
            f"pool child {child.pid} exited with {_describe(exitcode)} while running the task"
        )
        if not isinstance(reason, TimeLimitExceeded | Terminated):
            logger.error("%s", reason)
        callbacks.append((work.on_error, reason, "on_error"))

    def _enforce_hard_limits(self, callbacks: list[tuple[Callable[[Any], None], Any, str]]) -> None:
        now = time.monotonic()
        with self._lock:
            children = list(self._children.values())
        for child in children:
            work = child.work
            if child.kill_at is not None and now >= child.kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.kill_at = None
            elif work is not None and work.hard_deadline is not None and now >= work.hard_deadline:
                self._read_replies(child, callbacks)  # it may just have finished
                if child.work is not work:
                    continue
                work.hard_deadline = None
                assert work.time_limits is not None
                child.kill_reason = TimeLimitExceeded(
                    f"hard time limit ({work.time_limits.hard:g}s) exceeded; pool child {child.pid} killed"
                )
                logger.error("%s", child.kill_reason)
                child.retiring = True
                child.kill_at = now + self.term_grace
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    def _kill_for_stop(self, callbacks: list[tuple[Callable[[Any], None], Any, str]]) -> None:
        """The stop timeout passed: kill the children still running items, fail waiting items."""
        while self._pending:
            work = self._pending.popleft()
            self._outstanding -= 1
            callbacks.append((work.on_error, WorkerLostError("the pool stopped before the task started"), "on_error"))
            self._killed_at_stop = True
        for child in self._children.values():
            if child.work is not None and child.kill_reason is None:
                child.kill_reason = WorkerLostError(f"the pool stopped (timeout) while pool child {child.pid} ran it")
                self._killed_at_stop = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            elif child.work is None and child.stop_sent:  # still exiting: its shutdown handlers hang
                logger.warning("pool child %d did not exit in time after its last task: killing it", child.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
        self._drain_deadline = None
        self._changed.notify_all()

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        moments = [self._drain_deadline] if self._drain_deadline is not None else []
        for child in self._children.values():
            if child.kill_at is not None:
                moments.append(child.kill_at)
            if child.work is not None and child.work.hard_deadline is not None:
                moments.append(child.work.hard_deadline)
        live = sum(1 for child in self._children.values() if not child.retiring)
        if live < self.concurrency and not self._stopping:
            moments.append(self._next_spawn)
        if not moments:
            return None
        return max(0.0, min(moments) - now)

    def _run_callbacks(self, callbacks: list[tuple[Callable[[Any], None], Any, str]]) -> None:
        while callbacks:
            callback, value, which = callbacks.pop(0)
            _call(callback, value, which)

    # -- helpers ----------------------------------------------------------------------------

    def _ready_count(self) -> int:
        return sum(1 for child in self._children.values() if child.ready)

    def _check_accepting(self) -> None:
        if self._stopping:
            raise RuntimeError("the processes pool is stopped; it accepts no more items")

    def _wake(self) -> None:
        if self._wake_write >= 0 and threading.current_thread() is not self._supervisor:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_write, b"x")


def _call(callback: Callable[[Any], None], value: Any, which: str) -> None:
    try:
        callback(value)
    except BaseException:  # the supervisor must survive whatever a callback does
        logger.exception("processes pool: the %s callback of an item raised; the pool carries on", which)


# -- the child process ------------------------------------------------------------------------


class _ChildState:
    running = False


def _on_soft_limit(signum: int, frame: object) -> None:
    if _ChildState.running:
        raise SoftTimeLimitExceeded()


def _leave_body() -> None:
    """Called when the task body returns (:meth:`Pool.on_body_return`): its success/failure
    handlers and the next workflow step are not interrupted by ``SIGUSR1``."""
    _ChildState.running = False


def _disarm_soft_limit() -> None:
    """:func:`_leave_body` for a task with a soft limit: the handlers and the next workflow
    step run without it (the hard limit stays)."""
    _ChildState.running = False  # first: a SIGALRM arriving now is ignored
    signal.setitimer(signal.ITIMER_REAL, 0)


def _child_main(
    item_fd: int,
    reply_fd: int,
    runner: Callable[[Any], Any],
    process_init: Callable[[], None],
    inherited: list[int],
    measure_memory: bool,
) -> None:
    """The body of a child: init, then run items from ``item_fd`` until told to stop (or EOF),
    then fire the process shutdown."""
    for fd in inherited:  # the other children's pipes, the wake pipe and the selector are not ours
        with contextlib.suppress(OSError):
            os.close(fd)
    # forked from the supervisor thread, whose name the only thread here would keep in logs
    threading.current_thread().name = "MainThread"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the worker, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _on_soft_limit)
    signal.signal(signal.SIGUSR1, _on_soft_limit)
    lifecycle = ProcessLifecycle(process_init)
    _write_frame(reply_fd, pickle.dumps((_READY, os.getpid(), 0), pickle.HIGHEST_PROTOCOL))
    frames = _Frames()
    waiting: collections.deque[bytes | memoryview] = collections.deque()
    while True:
        while not waiting:
            try:
                chunk = os.read(item_fd, _READ_SIZE)
            except OSError:
                chunk = b""
            if not chunk:  # the worker is gone
                lifecycle.shutdown(0)
                return
            waiting.extend(frames.feed(chunk))
        message = pickle.loads(waiting.popleft())
        if message is None:
            lifecycle.shutdown(0)
            return
        item, soft = message
        try:
            try:
                _ChildState.running = True
                if soft:
                    Pool.on_body_return(_disarm_soft_limit)
                    signal.setitimer(signal.ITIMER_REAL, soft)
                else:
                    Pool.on_body_return(_leave_body)
                reply: tuple[str, Any] = (_DONE, runner(item))
            finally:
                _ChildState.running = False
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                Pool.on_body_return(None)
        except BaseException as exc:
            reply = (_ERROR, exc)
        memory = (_resident_kib(os.getpid()) or _max_resident_kib()) if measure_memory else 0
        _write_frame(reply_fd, _pack(reply, memory))


def _pack(reply: tuple[str, Any], memory: int) -> bytes:
    """Pickle a reply; what does not pickle (or would not unpickle) is replaced, not lost.
    A reply is pickled once; one with an exception in it is also unpickled here, as an
    exception can pickle and still fail to unpickle."""
    kind, value = reply
    exception = getattr(value, "exception", None) if kind == _DONE else value
    try:
        payload = pickle.dumps((kind, value, memory), pickle.HIGHEST_PROTOCOL)
        if isinstance(exception, BaseException):
            pickle.loads(payload)
        return payload
    except Exception as exc:
        problem: Exception = exc
    if isinstance(exception, BaseException) and not _round_trips(exception):
        if kind == _DONE:
            value.exception = None  # the outcome carries the error as data already
        else:
            value = RuntimeError(f"{type(exception).__name__}: {exception} (the original does not pickle)")
        try:
            return pickle.dumps((kind, value, memory), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            problem = exc
    error = RuntimeError(f"the pool child cannot send the item's result back: {problem}")
    return pickle.dumps((_ERROR, error, memory), pickle.HIGHEST_PROTOCOL)


def _round_trips(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return False
    return True


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def _resident_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (Linux ``/proc``); 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB
    except (OSError, ValueError, IndexError):
        return 0


def _max_resident_kib() -> int:
    """Peak resident memory of this process in KiB (fallback where ``/proc`` is missing)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _describe(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        return f"signal {_signal_name(-exitcode)}"
    return f"exit code {exitcode}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _positive(options: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"processes pool: option {key} must be a positive number, got {value!r}")
    return kind(value)


def _check_step(n: int) -> None:
    if n < 1:
        raise ValueError(f"pool grow/shrink step must be at least 1, got {n}")
