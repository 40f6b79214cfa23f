"""Running one task: the code shared by the worker's pool runner and ``task.apply()``."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import traceback as traceback_module
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _workflow, states
from ._exceptions_data import exception_to_data
from .exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TaskControl, TimeLimitExceeded
from .task import Request, current_request

if TYPE_CHECKING:
    from .result import EagerResult
    from .task import Task

__all__ = ["IGNORED", "REJECTED", "Outcome", "execute", "run_eagerly"]

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


def execute(task: Task[..., Any], request: Request) -> Outcome:
    """Run ``task`` for ``request`` with the request context, signals and error capture.

    Never raises for anything the task does; the caller stores the outcome and settles the
    message.
    """
    app = task.app
    plugins = app.plugins
    token = current_request.set(request)
    started = time.perf_counter()
    outcome: Outcome
    retval: Any = None
    try:
        plugins.task_prerun(app, task, request.id, request.args, request.kwargs)
        if not request.is_eager and (
            task.track_started if task.track_started is not None else app.conf.task_track_started
        ):
            app.store_result(
                request.id, states.STARTED, {"pid": os.getpid(), "hostname": request.hostname}, request=request
            )
        try:
            retval = _call(task, request)
            _workflow.dispatch_success(app, request, retval)
        except Retry as retry:
            retval = retry
            reason = str(retry.exc) if retry.exc is not None else str(retry)
            outcome = Outcome(
                request.id,
                states.RETRY,
                exception_to_data(retry.exc or retry),
                exception=retry,
                stored=retry.stored,
            )
            plugins.task_retry(app, task, request, reason)
        except Ignore as ignore:
            retval = ignore
            outcome = Outcome(request.id, IGNORED, exception=ignore)
        except Reject as reject:
            retval = reject
            outcome = Outcome(request.id, REJECTED, reject.reason, requeue=reject.requeue, exception=reject)
        except Exception as exc:
            retval = exc
            if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded) and not exc.args:
                kind = "soft" if isinstance(exc, SoftTimeLimitExceeded) else "hard"
                exc.args = (f"{task.name}[{request.id}] exceeded its {kind} time limit",)
            text = traceback_module.format_exc()
            outcome = Outcome(request.id, states.FAILURE, exception_to_data(exc), text, exception=exc)
            plugins.task_failure(app, task, request.id, exc, request.args, request.kwargs, text)
            _workflow.run_errbacks(app, task, request, exc, text)
        else:
            outcome = Outcome(request.id, states.SUCCESS, retval)
            plugins.task_success(app, task, retval)
        outcome.runtime = time.perf_counter() - started
        plugins.task_postrun(app, task, request.id, request.args, request.kwargs, retval, outcome.state)
        return outcome
    finally:
        current_request.reset(token)


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
