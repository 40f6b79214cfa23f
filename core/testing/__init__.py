"""Helpers for testing celeriac apps and plugins.

* :func:`start_worker` runs a real worker in this process for the duration of a ``with`` block.
* :mod:`celeriac.testing.conformance` holds the suites every transport and result store passes.
* The pytest plugin (``celeriac.pytest_plugin``, loaded automatically) provides the
  ``celeriac_app`` and ``celeriac_worker`` fixtures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._clock import VirtualClock

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..worker import Worker

__all__ = ["VirtualClock", "start_worker", "wait_for"]


@contextmanager
def start_worker(
    app: Celeriac,
    *,
    pool: str = "threads",
    concurrency: int | None = 1,
    queues: Sequence[str] | None = None,
    shutdown_timeout: float = 10.0,
    **options: Any,
) -> Iterator[Worker]:
    """Run a real worker for ``app`` in background threads of this process.

    The worker consumes ``queues`` (default: the app's) until the block ends, then shuts down
    warmly (running tasks finish, reserved messages go back to the broker)::

        with start_worker(app, pool="threads", concurrency=4):
            assert add.delay(2, 2).get(timeout=10) == 4
    """
    worker = app.Worker(pool=pool, concurrency=concurrency, queues=queues, shutdown_timeout=shutdown_timeout, **options)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(warm=True)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, message: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; raise ``AssertionError`` at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)
