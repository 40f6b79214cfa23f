"""The built-in execution pools (``worker.pool`` / ``-P NAME``).

``solo``
    Runs each item inline in the worker's own thread; ``submit`` returns after the item's
    callback. Size is always 1 (a larger concurrency is accepted and ignored). Time limits are
    not enforced. Good for debugging and for tasks that must not run concurrently.
``threads``
    ``concurrency`` long-lived threads in the worker process (``celeriac-pool-N``). Grows and
    shrinks at run time. The soft time limit raises :class:`~celeriac.SoftTimeLimitExceeded`
    inside the task; threads cannot be killed, so the hard limit raises
    :class:`~celeriac.TimeLimitExceeded` the same way, but cannot stop a thread stuck in C code
    (use ``processes`` to kill); a warning says so at start when a task declares a hard limit.
``processes``
    Prefork: ``concurrency`` forked child processes. Enforces soft and hard time limits (the
    hard one kills and replaces the child), recycles children (``max_tasks_per_child``,
    ``max_memory_per_child``), replaces a child that dies and fails its item with
    :class:`~celeriac.WorkerLostError` (the worker requeues it). See ``_processes``.
``asyncio``
    One event loop thread (uvloop when installed); ``async def`` tasks are awaited on it,
    ``concurrency`` tasks in flight (default 100); plain tasks run in a thread executor. Soft
    and hard limits by cancellation. See ``_asyncio``.

Each pool lives in a private module imported only when it is selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import celeriac

__all__ = ["celeriac_pool", "celeriac_pool_names"]


@celeriac.hookimpl
def celeriac_pool(
    name: str, concurrency: int, options: Mapping[str, Any], app: celeriac.Celeriac | None
) -> celeriac.Pool | None:
    """Create the pool called ``name`` if it is one of ours, else ``None``."""
    if name == "solo":
        from celeriac.plugins.pools._solo import SoloPool

        return SoloPool(concurrency, options)
    if name == "threads":
        from celeriac.plugins.pools._threads import ThreadPool, warn_about_hard_limits

        if app is not None:
            warn_about_hard_limits(app)
        return ThreadPool(concurrency, options)
    if name == "processes":
        from celeriac.plugins.pools._processes import ProcessPool

        return ProcessPool(concurrency, options)
    if name == "asyncio":
        from celeriac.plugins.pools._asyncio import AsyncioPool

        return AsyncioPool(concurrency, options)
    return None


@celeriac.hookimpl
def celeriac_pool_names() -> Sequence[str]:
    """The pools this plugin provides."""
    return ["asyncio", "processes", "solo", "threads"]
