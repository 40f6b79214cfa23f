"""Tasks: :class:`Task` (what ``@app.task`` makes), :class:`Request` (the running task's
context) and :func:`shared_task` (tasks declared without an app)."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar, overload

from . import states
from .exceptions import MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from .app import Celeriac
    from .message import TaskMessage
    from .result import AsyncResult, EagerResult

__all__ = ["Request", "SharedTask", "Task", "current_request", "shared_task"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Request:
    """The context of one task execution; ``self.request`` inside a bound task."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    origin: str | None = None
    reply_to: str | None = None
    hostname: str | None = None
    queue: str | None = None
    priority: int | None = None
    redelivered: bool = False
    delivery_count: int = 1
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False

    @classmethod
    def from_message(
        cls,
        message: TaskMessage,
        *,
        queue: str | None = None,
        hostname: str | None = None,
        redelivered: bool = False,
        delivery_count: int = 1,
    ) -> Request:
        return cls(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            eta=message.eta,
            expires=message.expires,
            root_id=message.root_id,
            parent_id=message.parent_id,
            group=message.group,
            group_index=message.group_index,
            origin=message.origin,
            reply_to=message.reply_to,
            hostname=hostname,
            queue=queue,
            priority=message.priority,
            redelivered=redelivered,
            delivery_count=delivery_count,
            timelimit=message.timelimit,
            ignore_result=message.ignore_result,
            headers=message.extra_headers,
            embed=message.embed,
        )

    @property
    def delivery_info(self) -> dict[str, Any]:
        return {"exchange": "", "routing_key": self.queue, "priority": self.priority, "redelivered": self.redelivered}


#: The request of the task running in this thread / asyncio task, if any.
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar("celeriac_request", default=None)


class Task(Generic[P, R]):
    """A registered task. Call it to run the function here; ``delay``/``apply_async`` to queue it."""

    def __init__(
        self,
        app: Celeriac,
        fn: Callable[..., R],
        *,
        name: str,
        bind: bool = False,
        queue: str | None = None,
        ignore_result: bool | None = None,
        acks_late: bool | None = None,
        serializer: str | None = None,
        priority: int | None = None,
        track_started: bool | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        max_retries: int | EllipsisType | None = ...,
        default_retry_delay: float | None = None,
        expires: float | None = None,
        rate_limit: str | None = None,
        compression: str | None = None,
        **extra: Any,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.queue = queue
        self.ignore_result = ignore_result
        self.acks_late = acks_late
        self.serializer = serializer
        self.priority = priority
        self.track_started = track_started
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.max_retries: int | None = (
            app.conf.task_default_max_retries if isinstance(max_retries, EllipsisType) else max_retries
        )
        self.default_retry_delay = (
            app.conf.task_default_retry_delay if default_retry_delay is None else default_retry_delay
        )
        self.expires = expires
        self.rate_limit = rate_limit
        self.compression = compression
        self.options = extra
        self.is_coroutine = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- running here ----------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process, synchronously (no message, no result stored)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> R:
        """The task body (what a worker calls)."""
        return self(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The request of the running execution (an empty one outside a worker)."""
        return current_request.get() or Request(id="", task=self.name)

    # -- sending ---------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task with these arguments (shortcut for :meth:`apply_async`)."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        priority: int | None = None,
        headers: dict[str, Any] | None = None,
        serializer: str | None = None,
        ignore_result: bool | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        compression: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Queue the task. Options as in Celery; explicit ones beat routes, which beat the task's."""
        return self.app.send_task(
            self.name,
            args,
            kwargs,
            task_id=task_id,
            queue=queue,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            headers=headers,
            serializer=serializer,
            ignore_result=ignore_result,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            compression=compression,
            **options,
        )

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        retries: int = 0,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here, now, as a worker would (request context, signals), returning an
        :class:`~celeriac.EagerResult`. Nothing is stored. ``throw`` (default:
        ``task_eager_propagates``) re-raises the task's exception."""
        from ._execution import run_eagerly

        return run_eagerly(self, list(args or ()), dict(kwargs or {}), task_id=task_id, retries=retries, throw=throw)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        from .result import AsyncResult

        return AsyncResult(task_id, self.app, self.name)

    def retry(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | EllipsisType | None = ...,
        **options: Any,
    ) -> NoReturn:
        """Run this task again later, with the same id and ``retries + 1``; always raises.

        Raises :class:`~celeriac.Retry` (the worker stores ``RETRY`` and acks), or, when
        ``max_retries`` is reached, re-raises ``exc`` or :class:`MaxRetriesExceededError`.
        """
        request = self.request
        limit = self.max_retries if isinstance(max_retries, EllipsisType) else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"{self.name}[{request.id}] exceeded max_retries={limit}")
        if eta is None:
            delay = self.default_retry_delay if countdown is None else countdown
            eta = datetime.now(UTC) + timedelta(seconds=delay)
        if request.is_eager:
            raise Retry(exc=exc, when=eta.timestamp())
        self.app.send_task(
            self.name,
            request.args if args is None else args,
            request.kwargs if kwargs is None else kwargs,
            task_id=request.id,
            eta=eta,
            retries=request.retries + 1,
            parent_id=request.parent_id,
            root_id=request.root_id,
            queue=options.pop("queue", request.queue),
            priority=options.pop("priority", request.priority),
            headers=request.headers or None,
            **options,
        )
        raise Retry(exc=exc, when=eta.timestamp())

    def update_state(self, task_id: str | None = None, state: str = states.STARTED, meta: Any = None) -> None:
        """Store a custom state (``PROGRESS``) with ``meta`` for the running task (or ``task_id``)."""
        target = task_id or self.request.id
        if not target:
            raise RuntimeError(f"{self.name}.update_state() needs a task_id outside a running task")
        self.app.store_result(target, state, meta, request=self.request if not task_id else None)


# -- shared tasks ----------------------------------------------------------------------------

_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []


class SharedTask(Generic[P, R]):
    """A task declared with :func:`shared_task`: resolves to the current app's task on use."""

    def __init__(self, fn: Callable[..., R], options: dict[str, Any]) -> None:
        self.fn = fn
        self.options = options
        self.name: str = options.get("name") or f"{fn.__module__}.{fn.__qualname__}"
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@shared_task: {self.name}>"

    def _task(self) -> Task[P, R]:
        from .app import current_app

        return current_app().tasks[self.name]  # type: ignore[return-value]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._task()(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self._task().apply_async(args, kwargs)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._task(), attribute)


@overload
def shared_task(fn: Callable[P, R], /) -> SharedTask[P, R]: ...
@overload
def shared_task(**options: Any) -> Callable[[Callable[P, R]], SharedTask[P, R]]: ...
def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task without an app (Celery's name). It joins every app, including the one the
    CLI assembles from the config, and calls go to the current app."""

    def decorate(function: Callable[..., Any]) -> SharedTask[Any, Any]:
        _shared_tasks.append((function, options))
        return SharedTask(function, options)

    return decorate(fn) if fn is not None else decorate


def shared_task_definitions() -> list[tuple[Callable[..., Any], dict[str, Any]]]:
    return list(_shared_tasks)
