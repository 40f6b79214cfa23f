"""The execution-pool interface: where task bodies run.

The worker hands the pool opaque work items; the pool calls the ``runner`` it was started with
on each item (in a thread, a child process, an event loop, or inline) and hands the runner's
return value to the item's ``on_done`` callback **in the worker process**. The worker never
gives a pool more items than :attr:`Pool.size`, so a pool needs no queue of its own.

Pools are created by the ``celeriac_pool`` hook from a name (``solo``, ``threads``, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["InThread", "Pool", "TimeLimits"]

#: What to call when the task body running in this thread (or asyncio task) returns or raises;
#: set by the pool around an item (:meth:`Pool.on_body_return`), called by the kernel.
_body_return: ContextVar[Callable[[], object] | None] = ContextVar("celeriac_body_return", default=None)


def body_returned() -> None:
    """Called by the kernel right after a task body returns or raises, before the success or
    failure handlers and the next workflow step run: calls (once) what the pool set with
    :meth:`Pool.on_body_return` in this thread or asyncio task, if anything."""
    callback = _body_return.get()
    if callback is not None:
        _body_return.set(None)
        callback()


@dataclass(frozen=True, slots=True)
class TimeLimits:
    """Per-item time limits in seconds; ``None`` means no limit."""

    soft: float | None = None
    hard: float | None = None


@dataclass(frozen=True, slots=True)
class InThread:
    """What a runner returns to a pool that runs coroutines (:attr:`Pool.runs_coroutines`)
    for blocking work: the pool calls ``function()`` in a thread, never on its event loop, and
    hands its return value to ``on_done``."""

    function: Callable[[], Any]


class Pool(ABC):
    """Base class of every pool plugin."""

    #: The name the pool is selected by (``-P NAME`` / ``worker.pool``).
    name: ClassVar[str] = ""
    #: True when items run in the caller's thread (``solo``): ``submit`` returns after ``on_done``.
    runs_inline: ClassVar[bool] = False
    #: The size a worker gives this pool when no concurrency is configured (``None``: the
    #: number of CPUs). An ``asyncio`` pool runs many more items at once than a CPU count.
    default_concurrency: ClassVar[int | None] = None
    #: True when the pool calls the runner on an event loop. The runner must not block there:
    #: it returns an awaitable (the worker's runner: a coroutine for an ``async def`` task),
    #: which the pool awaits, or :class:`InThread` (a plain task), which the pool runs in a thread.
    runs_coroutines: ClassVar[bool] = False
    #: :class:`InThread`, reachable from pool plugins as ``celeriac.Pool.InThread``.
    InThread: ClassVar[type[InThread]] = InThread

    def __init__(self, concurrency: int, options: Mapping[str, Any] | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"pool concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.options: dict[str, Any] = dict(options or {})

    @abstractmethod
    def start(self, runner: Callable[[Any], Any], process_init: Callable[[], Any]) -> None:
        """Start executing. ``process_init`` is called once in every process that will run
        items (once, in this process, for in-process pools) before its first item. It may
        return a callable: call that once when the process stops running items (a child
        that is recycled, retired or stopped; an in-process pool at :meth:`stop`) -- it fires
        ``worker_process_shutdown``. A process that is killed cannot call it."""

    @abstractmethod
    def submit(
        self,
        item: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        *,
        time_limits: TimeLimits | None = None,
    ) -> None:
        """Run ``runner(item)`` soon and pass its return value to ``on_done``.

        If the runner raises, or the process running it dies, ``on_error`` gets the exception
        (:class:`~celeriac.WorkerLostError` for a dead process). Exactly one of the two is
        called for every submitted item.
        """

    @property
    def size(self) -> int:
        """How many items can run at the same time right now."""
        return self.concurrency

    def running_pid(self, item: Any) -> int | None:
        """The pid of the process running ``item`` (``inspect active`` reports it as
        ``worker_pid``); ``None`` means this process (in-process pools, or an item not running)."""
        return None

    @staticmethod
    def on_body_return(callback: Callable[[], object] | None) -> None:
        """Have ``callback()`` called when the task body of the item about to run in this
        thread (or asyncio task) returns or raises, before its success/failure handlers and
        the next step of its workflow; ``None`` clears it. A pool calls this right before the
        runner to disarm a soft time limit, so that a limit firing late never turns a task
        that returned into a failure with its chain half dispatched. Called at most once per
        setting; cheap (a context variable)."""
        _body_return.set(callback)

    def grow(self, n: int = 1) -> None:
        """Add ``n`` execution slots."""
        raise NotImplementedError(f"the {self.name} pool cannot grow")

    def shrink(self, n: int = 1) -> None:
        """Remove ``n`` execution slots (running items finish first)."""
        raise NotImplementedError(f"the {self.name} pool cannot shrink")

    def terminate(self, item: Any, signum: int) -> bool:
        """Stop the running ``item`` (revoke with ``terminate=True``): the process or task
        running it gets ``signum`` (or is cancelled) and the item's ``on_error`` gets
        :class:`~celeriac.exceptions.Terminated`. False when the item is not running here or
        this pool cannot stop a running item (``threads``, ``solo``)."""
        return False

    @abstractmethod
    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting items and wait up to ``timeout`` for running ones; True if all finished."""

    def info(self) -> dict[str, Any]:
        """Facts for ``stats`` / inspection."""
        return {"implementation": type(self).__module__ + ":" + type(self).__qualname__, "max-concurrency": self.size}

    def stats(self) -> dict[str, Any]:
        """Live facts for inspection and metrics: ``info()`` plus, where the pool knows them,
        ``busy``/``idle`` slot counts, ``processes`` (pids), ``processed`` per child and
        ``memory`` (resident KiB per child)."""
        return self.info()
