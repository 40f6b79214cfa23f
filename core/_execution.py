"""Running one task: the code shared by the worker's pool runner and ``task.apply()``."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import threading
import time
import traceback as traceback_module
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _workflow, states
from ._exceptions_data import exception_to_data
from .exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TaskControl, TimeLimitExceeded
from .pool import body_returned
from .task import Request, current_request

if TYPE_CHECKING:
    from .app import Celeriac
    from .result import EagerResult
    from .task import Task
    from .worker import Worker

__all__ = [
    "IGNORED",
    "REJECTED",
    "Outcome",
    "execute",
    "execute_async",
    "init_pool_process",
    "is_async_task",
    "run_eagerly",
    "shutdown_pool_process",
]

#: Outcome states that are not stored.
IGNORED = "IGNORED"
REJECTED = "REJECTED"


@dataclass(slots=True)
class Outcome:
    """What happened when a task ran; plain data so it can cross a process boundary."""

    task_id: str
    state: str
    #: The return value (SUCCESS), exception data (FAILURE/RETRY) or the reason (REJECTED).
    value: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    requeue: bool = False
    exception: BaseException | None = None
    #: The state is already stored (``task.retry()`` stores RETRY before publishing the retry).
    stored: bool = False

    def __reduce__(self) -> tuple[type[Outcome], tuple[Any, ...]]:
        # positional fields: half the pickle of a slots dataclass's state, no __setstate__ call
        # (every task run by the processes pool comes back through this)
        return (
            Outcome,
            (
                self.task_id,
                self.state,
                self.value,
                self.traceback,
                self.runtime,
                self.requeue,
                self.exception,
                self.stored,
            ),
        )


def execute(task: Task[..., Any], request: Request) -> Outcome:
    """Run ``task`` for ``request`` with the request context, signals and error capture.

    Never raises for anything the task does; the caller stores the outcome and settles the
    message.
    """
    token = current_request.set(request)
    started = time.perf_counter()
    try:
        _before(task, request)
        try:
            try:
                retval = _call(task, request)
            finally:
                if not request.is_eager:  # an eager task run inside a task body is part of that body
                    body_returned()  # the pool disarms its soft time limit
            _workflow.dispatch_success(task.app, request, retval)
        except Exception as exc:
            outcome, retval = _failed(task, request, exc)
        else:
            outcome = _succeeded(task, request, retval)
        return _after(task, request, outcome, retval, started)
    finally:
        current_request.reset(token)


async def execute_async(task: Task[..., Any], request: Request) -> Outcome:
    """:func:`execute` for an event loop: an ``async def`` task body is awaited on the running
    loop (signals and result writes around it run there too, as in :func:`execute`); a plain
    task body runs in the loop's default executor, so it never blocks the loop."""
    if not is_async_task(task):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, contextvars.copy_context().run, execute, task, request)
    token = current_request.set(request)
    started = time.perf_counter()
    try:
        _before(task, request)
        try:
            try:
                retval = await _call_async(task, request)
            finally:
                if not request.is_eager:
                    body_returned()
            _workflow.dispatch_success(task.app, request, retval)
        except Exception as exc:
            outcome, retval = _failed(task, request, exc)
        else:
            outcome = _succeeded(task, request, retval)
        return _after(task, request, outcome, retval, started)
    finally:
        current_request.reset(token)


def init_pool_process(app: Celeriac, worker: Worker, parent_pid: int) -> Any:
    """The ``process_init`` the worker gives its pool: fires ``worker_process_init``. In a
    forked child (``processes`` pool) the app first drops the broker and result-store clients
    it inherited, and their locks, which another thread of the parent may have held at ``fork``:
    the child opens its own on first use and never touches the parent's sockets.

    Returns what the pool calls, once, when that process is about to exit (a pool child) or
    the pool stops (an in-process pool): a ``Callable[[int], None]`` firing
    ``worker_process_shutdown`` with the exit code. (Typed ``Any``: ``Pool.start`` takes a
    ``process_init`` returning ``None``; pools that know call what it returns.)"""
    if os.getpid() != parent_pid:
        app._lock = threading.RLock()
        app._transport = None
        app._result_store = None
    app.plugins.worker_process_init(app, worker)
    return functools.partial(shutdown_pool_process, app, worker)


def shutdown_pool_process(app: Celeriac, worker: Worker, exitcode: int = 0) -> None:
    """Fire ``worker_process_shutdown`` in this process (see :func:`init_pool_process`)."""
    app.plugins.worker_process_shutdown(app, worker, os.getpid(), exitcode)


def is_async_task(task: Task[..., Any]) -> bool:
    """True when the task body is an ``async def`` (a coroutine function)."""
    return bool(getattr(task, "is_coroutine", False)) or inspect.iscoroutinefunction(task.run)


def _before(task: Task[..., Any], request: Request) -> None:
    app = task.app
    app.plugins.task_prerun(app, task, request.id, request.args, request.kwargs)
    if not request.is_eager and (task.track_started if task.track_started is not None else app.conf.task_track_started):
        started = {"pid": os.getpid(), "hostname": request.hostname}
        app.store_result(request.id, states.STARTED, started, request=request)


def _succeeded(task: Task[..., Any], request: Request, retval: Any) -> Outcome:
    app = task.app
    app.plugins.task_success(app, task, retval)
    return Outcome(request.id, states.SUCCESS, retval)


def _failed(task: Task[..., Any], request: Request, exc: Exception) -> tuple[Outcome, Any]:
    """The outcome of a task body (or its success callbacks) that raised ``exc``; call it from
    the ``except`` block, so the traceback is the one being handled."""
    app = task.app
    plugins = app.plugins
    outcome: Outcome
    if isinstance(exc, Retry):
        reason = str(exc.exc) if exc.exc is not None else str(exc)
        outcome = Outcome(request.id, states.RETRY, exception_to_data(exc.exc or exc), exception=exc, stored=exc.stored)
        plugins.task_retry(app, task, request, reason)
    elif isinstance(exc, Ignore):
        outcome = Outcome(request.id, IGNORED, exception=exc)
    elif isinstance(exc, Reject):
        outcome = Outcome(request.id, REJECTED, exc.reason, requeue=exc.requeue, exception=exc)
    else:
        if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded) and not exc.args:
            kind = "soft" if isinstance(exc, SoftTimeLimitExceeded) else "hard"
            exc.args = (f"{task.name}[{request.id}] exceeded its {kind} time limit",)
        text = traceback_module.format_exc()
        outcome = Outcome(request.id, states.FAILURE, exception_to_data(exc), text, exception=exc)
        plugins.task_failure(app, task, request.id, exc, request.args, request.kwargs, text)
        _workflow.run_errbacks(app, task, request, exc, text)
    return outcome, exc


def _after(task: Task[..., Any], request: Request, outcome: Outcome, retval: Any, started: float) -> Outcome:
    app = task.app
    outcome.runtime = time.perf_counter() - started
    app.plugins.task_postrun(app, task, request.id, request.args, request.kwargs, retval, outcome.state)
    return outcome


def _call(task: Task[..., Any], request: Request) -> Any:
    """Run the task body; an exception in ``autoretry_for`` becomes ``task.retry()`` (which
    raises :class:`Retry`, or the exception itself once ``max_retries`` is reached)."""
    try:
        retval = task.run(*request.args, **request.kwargs)
        if inspect.iscoroutine(retval):
            retval = asyncio.run(retval)
        return retval
    except TaskControl:
        raise
    except Exception as exc:
        if not task.should_autoretry(exc):
            raise
        task.retry(exc=exc, **task.autoretry_options(request.retries))


async def _call_async(task: Task[..., Any], request: Request) -> Any:
    """:func:`_call` for an ``async def`` body, awaited on the running loop."""
    try:
        retval = task.run(*request.args, **request.kwargs)
        if inspect.isawaitable(retval):
            retval = await retval
        return retval
    except TaskControl:
        raise
    except Exception as exc:
        if not task.should_autoretry(exc):
            raise
        task.retry(exc=exc, **task.autoretry_options(request.retries))


def run_eagerly(
    task: Task[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    task_id: str | None = None,
    retries: int = 0,
    throw: bool | None = None,
    embed: dict[str, Any] | None = None,
) -> EagerResult[Any]:
    """Run ``task`` in this thread as ``task.apply()`` does; nothing is stored. ``embed``
    (callbacks, errbacks, the rest of a chain) runs here too, after the task."""
    from .result import EagerResult

    app = task.app
    parent = current_request.get()
    request = Request(
        id=task_id or str(uuid.uuid4()),
        task=task.name,
        args=args,
        kwargs=kwargs,
        retries=retries,
        root_id=parent.root_id if parent else None,
        parent_id=parent.id if parent else None,
        is_eager=True,
    )
    if embed is not None:
        request.embed = embed
    request.root_id = request.root_id or request.id
    while True:
        outcome = execute(task, request)
        if outcome.state != states.RETRY:
            break
        request.retries += 1  # eager retries run again at once, as in Celery
    propagate = app.conf.task_eager_propagates if throw is None else throw
    if outcome.state == states.FAILURE:
        if propagate and outcome.exception is not None:
            raise outcome.exception
        return EagerResult(request.id, app, task.name, states.FAILURE, outcome.exception, outcome.traceback)
    if outcome.state in (IGNORED, REJECTED):
        return EagerResult(request.id, app, task.name, outcome.state, outcome.value)
    return EagerResult(request.id, app, task.name, states.SUCCESS, outcome.value)
