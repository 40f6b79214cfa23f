"""The built-in execution pools (``worker.pool`` / ``-P NAME``).

``solo``
    Runs each item inline in the worker's own thread; ``submit`` returns after the item's
    callback. Size is always 1 (a larger concurrency is accepted and ignored). Time limits are
    not enforced. Good for debugging and for tasks that must not run concurrently.
``threads``
    ``concurrency`` long-lived threads in the worker process (``celeriac-pool-N``). Grows and
    shrinks at run time. The soft time limit raises :class:`~celeriac.SoftTimeLimitExceeded`
    inside the task; threads cannot be killed, so the hard limit raises
    :class:`~celeriac.TimeLimitExceeded` the same way (use ``processes`` to kill).

Neither pool takes options. Each pool lives in a private module imported only when it is
selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import celeriac

__all__ = ["celeriac_pool", "celeriac_pool_names"]


@celeriac.hookimpl
def celeriac_pool(name: str, concurrency: int, options: Mapping[str, Any]) -> celeriac.Pool | None:
    """Create the pool called ``name`` if it is one of ours, else ``None``."""
    if name == "solo":
        from celeriac.plugins.pools._solo import SoloPool

        return SoloPool(concurrency, options)
    if name == "threads":
        from celeriac.plugins.pools._threads import ThreadPool

        return ThreadPool(concurrency, options)
    return None


@celeriac.hookimpl
def celeriac_pool_names() -> Sequence[str]:
    """The pools this plugin provides."""
    return ["solo", "threads"]
