"""Tasks: :class:`Task` (what ``@app.task`` makes), :class:`Request` (the running task's
context) and :func:`shared_task` (tasks declared without an app)."""

from __future__ import annotations

import contextvars
import inspect
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar, overload

from . import states
from ._exceptions_data import exception_to_data
from .exceptions import MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from .app import Celeriac
    from .canvas import Signature, xmap, xstarmap
    from .canvas import chunks as chunks_signature
    from .message import TaskMessage
    from .result import AsyncResult, EagerResult

__all__ = ["Request", "SharedTask", "Task", "current_request", "exponential_backoff", "shared_task"]

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
        rate_limit: str | float | None = None,
        compression: str | None = None,
        autoretry_for: Iterable[type[BaseException]] = (),
        dont_autoretry_for: Iterable[type[BaseException]] = (),
        retry_kwargs: dict[str, Any] | None = None,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
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
        if rate_limit is not None:
            from .worker._ratelimit import parse_rate

            parse_rate(rate_limit, name)  # a bad limit fails at declaration, not in the worker
        self.rate_limit = rate_limit
        self.compression = compression
        #: Exceptions that retry the task automatically (``dont_autoretry_for`` wins).
        self.autoretry_for: tuple[type[BaseException], ...] = tuple(autoretry_for)
        self.dont_autoretry_for: tuple[type[BaseException], ...] = tuple(dont_autoretry_for)
        #: Keyword arguments for those automatic ``retry()`` calls (``max_retries``, ``countdown``).
        self.retry_kwargs: dict[str, Any] = dict(retry_kwargs or {})
        #: ``True`` or a base in seconds: automatic retries wait ``base * 2**retries`` seconds.
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        #: Full jitter: the wait is uniform between 0 and the backoff.
        self.retry_jitter = retry_jitter
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
        link: Any = None,
        link_error: Any = None,
        chain: Any = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here, now, as a worker would (request context, signals), returning an
        :class:`~celeriac.EagerResult`. Nothing is stored. ``throw`` (default:
        ``task_eager_propagates``) re-raises the task's exception. ``link`` / ``link_error``
        (and ``chain``, the rest of a chain in reverse order) run here too."""
        from ._execution import run_eagerly

        embed = None
        if link is not None or link_error is not None or chain is not None:
            from .canvas import embed_of

            embed = embed_of(link, link_error, chain)
        return run_eagerly(
            self, list(args or ()), dict(kwargs or {}), task_id=task_id, retries=retries, throw=throw, embed=embed
        )

    # -- signatures ------------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (more are prepended when it is sent)."""
        from .canvas import Signature

        return Signature(self, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: arguments given when it is sent (a parent's result) are ignored."""
        from .canvas import Signature

        return Signature(self, args, kwargs, immutable=True, app=self.app)

    def signature(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A signature with execution options: ``add.signature((2, 2), countdown=10)``."""
        from .canvas import Signature

        immutable = bool(options.pop("immutable", False))
        return Signature(self, args, kwargs, options, immutable=immutable, app=self.app)

    subtask = signature

    def map(self, it: Iterable[Any]) -> xmap:
        """One message that returns ``[task(item) for item in it]``."""
        from .canvas import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> xstarmap:
        """One message that returns ``[task(*item) for item in it]``."""
        from .canvas import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> chunks_signature:
        """``it`` in parts of ``n`` items, each part one :meth:`starmap` message, run as a group."""
        from .canvas import chunks

        return chunks(self.s(), it, n, app=self.app)

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

        Raises :class:`~celeriac.Retry` (the worker acks; ``RETRY`` with ``exc`` is stored), or,
        when ``max_retries`` is reached (``None``: never), re-raises ``exc`` or
        :class:`MaxRetriesExceededError`. The new message goes through the broker's delayed
        delivery (``countdown``, default ``default_retry_delay``, or ``eta``) and keeps the
        task's place in its workflow (callbacks, errbacks, the rest of its chain, its chord).
        """
        request = self.request
        limit = self.max_retries if isinstance(max_retries, EllipsisType) else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"cannot retry {self.name}[{request.id}]: it ran {request.retries + 1} times (max_retries={limit})"
            )
        if eta is None:
            delay = self.default_retry_delay if countdown is None else countdown
            eta = datetime.now(UTC) + timedelta(seconds=delay)
            when = f"{delay:g}s"
        else:
            when = eta.isoformat()
        retry = Retry(
            f"Retry in {when}: {exc!r}" if exc is not None else f"Retry in {when}", exc=exc, when=eta.timestamp()
        )
        if request.is_eager:
            raise retry
        from ._workflow import ignores_result

        if not ignores_result(self.app, self, request):
            # Stored before the new message exists: a fast retry must not be overwritten later.
            self.app.store_result(request.id, states.RETRY, exception_to_data(exc or retry), request=request)
            retry.stored = True
        embed = request.embed
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
            link=embed.get("callbacks"),
            link_error=embed.get("errbacks"),
            chain=embed.get("chain"),
            chord=embed.get("chord"),
            group_id=request.group,
            group_index=request.group_index,
            reply_to=options.pop("reply_to", request.reply_to),
            **options,
        )
        raise retry

    def autoretry_options(self, retries: int) -> dict[str, Any]:
        """The ``retry()`` arguments for an automatic retry after ``retries`` earlier ones."""
        options = dict(self.retry_kwargs)
        if self.retry_backoff:
            base = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            options["countdown"] = exponential_backoff(base, retries, self.retry_backoff_max, self.retry_jitter)
        return options

    def should_autoretry(self, exc: BaseException) -> bool:
        return (
            bool(self.autoretry_for)
            and isinstance(exc, self.autoretry_for)
            and not (self.dont_autoretry_for and isinstance(exc, self.dont_autoretry_for))
        )

    def update_state(self, task_id: str | None = None, state: str = states.STARTED, meta: Any = None) -> None:
        """Store a custom state (``PROGRESS``) with ``meta`` for the running task (or ``task_id``)."""
        target = task_id or self.request.id
        if not target:
            raise RuntimeError(f"{self.name}.update_state() needs a task_id outside a running task")
        self.app.store_result(target, state, meta, request=self.request if not task_id else None)


def exponential_backoff(base: float, retries: int, maximum: float, jitter: bool = True) -> float:
    """Seconds before retry number ``retries + 1``: ``min(maximum, base * 2**retries)``, or with
    ``jitter`` (full jitter) a uniform random value between 0 and that."""
    delay = min(float(maximum), float(base) * 2.0 ** min(retries, 64))
    return random.uniform(0.0, delay) if jitter else delay


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
