"""The canvas: signatures and the workflows built from them.

A :class:`Signature` is a task call that can be stored, passed around and sent later. It *is*
Celery's signature dict ``{"task", "args", "kwargs", "options", "subtask_type", "immutable"}``
(a ``dict`` subclass), so it serializes as one and a Celery peer can read it. Workflows are
signatures too:

* :class:`chain` — ``a | b | c``: each result is the first argument of the next task;
* :class:`group` — tasks in parallel; the result is a :class:`~celeriac.GroupResult`;
* :class:`chord` — a group (the *header*) and a *body* that receives the list of the header's
  results, in header order, once every header task succeeded;
* :class:`xmap` / :class:`xstarmap` (``task.map(it)``, ``task.starmap(it)``) — one message that
  calls the task for every item; :class:`chunks` (``task.chunks(it, n)``) — a group of starmaps.

On the wire (protocol v2, as Celery sends it): a chain is sent as its first task with the rest
of the chain **in reverse order** in ``embed.chain``; ``link`` / ``link_error`` become
``embed.callbacks`` / ``embed.errbacks``; every chord header task carries the body in
``embed.chord`` and the ``group`` / ``group_index`` headers. The worker carries the workflow
forward (:mod:`celeriac._workflow`).

Composition rules, as in Celery: arguments given when a signature is sent are *prepended*
(``add.s(2).delay(1)`` calls ``add(1, 2)``), and immutable signatures (``add.si(1, 2)``)
ignore them; ``chain(chain(a, b), c)`` is ``chain(a, b, c)``; ``group(group(a, b), c)`` is
``group(a, b, c)``; a group followed by another step of a chain becomes a chord
(``a | group(b, c) | d`` is ``a | chord([b, c], d)``).

Every canvas can run in this process with ``apply()`` (and does at ``apply_async()`` when
``task_always_eager`` is set), with the same results as on a worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from . import states
from .exceptions import ChordError
from .result import AsyncResult, EagerResult, GroupResult, attach_parent

if TYPE_CHECKING:
    from .app import Celeriac
    from .task import SharedTask, Task

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "embed_of",
    "group",
    "maybe_signature",
    "signature",
    "xmap",
    "xstarmap",
]

#: Options a signature hands to ``Celeriac.send_task``. Other keys stay in the dict (Celery's
#: ``chord_size``, another client's ``reply_to``) but are not sent.
SEND_OPTIONS = frozenset(
    {
        "task_id",
        "queue",
        "countdown",
        "eta",
        "expires",
        "priority",
        "headers",
        "serializer",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "retries",
        "parent_id",
        "root_id",
        "compression",
        "link",
        "link_error",
        "chain",
        "chord",
        "group_id",
        "group_index",
    }
)
#: Options only the canvas reads (never sent).
CANVAS_OPTIONS = frozenset({"chord_size", "chord_timeout", "throw", "reply_to"})


class Signature(dict[str, Any]):
    """One task call, ready to be sent: ``add.s(2, 2)``, ``signature("proj.add", (2, 2))``.

    ``args`` / ``kwargs`` given when it is sent are merged in (args prepended, kwargs updated)
    unless it is immutable. ``options`` are execution options (``queue``, ``countdown``,
    ``link``, ...) passed to ``apply_async``.
    """

    _subtask_types: ClassVar[dict[str, type[Signature]]] = {}
    #: The ``subtask_type`` value of this class (``None`` for a plain task call).
    kind: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind is not None:
            Signature._subtask_types[cls.kind] = cls

    def __init__(
        self,
        task: str | Task[..., Any] | SharedTask[..., Any] | Mapping[str, Any] = "",
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celeriac | None = None,
        **extra_options: Any,
    ) -> None:
        self._app = app
        if isinstance(task, Mapping):
            data = task
            super().__init__(
                task=str(data.get("task") or ""),
                args=list(data.get("args") or ()),
                kwargs=dict(data.get("kwargs") or {}),
                options={**dict(data.get("options") or {}), **extra_options},
                subtask_type=data.get("subtask_type"),
                immutable=bool(data.get("immutable", False)),
            )
            return
        if not isinstance(task, str):
            self._app = app or getattr(task, "app", None)
            task = task.name
        super().__init__(
            task=task,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={**dict(options or {}), **extra_options},
            subtask_type=subtask_type,
            immutable=bool(immutable),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celeriac | None = None) -> Signature:
        """The signature (of the right class for its ``subtask_type``) a signature dict describes."""
        kind = data.get("subtask_type")
        target = Signature._subtask_types.get(kind) if kind else Signature
        if target is None:
            raise ValueError(f"unknown subtask_type {kind!r} in signature of {data.get('task')!r}")
        return target._from_mapping(data, app)

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature:
        return Signature(data, app=app)

    # -- fields -----------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """The task name."""
        return str(self["task"])

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self["options"]
        return options

    @property
    def subtask_type(self) -> str | None:
        value = self.get("subtask_type")
        return value if isinstance(value, str) else None

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        """The task id, once frozen (or given as ``task_id``)."""
        value = self.options.get("task_id")
        return value if isinstance(value, str) else None

    @property
    def app(self) -> Celeriac:
        """The app this signature was made with (the current app otherwise)."""
        if self._app is not None:
            return self._app
        from .app import current_app

        return current_app()

    @property
    def type(self) -> Task[..., Any]:
        """The registered task this signature calls."""
        return self.app.tasks[self.task]

    def __repr__(self) -> str:
        arguments = [repr(arg) for arg in self.args] + [f"{key}={value!r}" for key, value in self.kwargs.items()]
        return f"{'%' if self.immutable else ''}{self.task}({', '.join(arguments)})"

    # -- building ---------------------------------------------------------------------------

    def _merge(
        self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, options: Mapping[str, Any] | None
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Arguments and options for sending: new args prepended, kwargs and options updated."""
        merged_options = {**self.options, **(options or {})}
        if self.immutable:
            return self.args, dict(self.kwargs), merged_options
        return (*tuple(args or ()), *self.args), {**self.kwargs, **(kwargs or {})}, merged_options

    def clone(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any) -> Self:
        """A deep copy (nested signatures too), with ``args``/``kwargs``/``options`` merged in."""
        copy = type(self)._from_mapping(_copy(self), self._app)
        if args or kwargs or options:
            merged_args, merged_kwargs, merged_options = copy._merge(args, kwargs, options)
            copy["args"], copy["kwargs"], copy["options"] = list(merged_args), merged_kwargs, merged_options
        return copy  # type: ignore[return-value]

    def set(self, immutable: bool | None = None, **options: Any) -> Self:
        """Update the options (and immutability) in place; returns the signature."""
        if immutable is not None:
            self["immutable"] = bool(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = bool(immutable)

    def link(self, callback: Signature | Mapping[str, Any]) -> Signature:
        """Send ``callback`` with this task's result prepended when it succeeds; returns it."""
        sig = _sig(callback, self._app)
        _append_option(self, "link", sig)
        return sig

    def link_error(self, errback: Signature | Mapping[str, Any]) -> Signature:
        """Run ``errback`` once when this task fails; returns it.

        An errback task whose function takes ``(request, exc, traceback)`` is called in the
        worker that ran the failed task; one that takes a single argument is sent as a task
        with the failed task's id.
        """
        sig = _sig(errback, self._app)
        _append_option(self, "link_error", sig)
        return sig

    def on_error(self, errback: Signature | Mapping[str, Any]) -> Self:
        """Like :meth:`link_error`, but returns this signature (for chaining calls)."""
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        """``a | b``: a chain (``group | task`` is a chord)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        combined = chain(self, other, app=self._app)
        return combined.tasks[0] if len(combined.tasks) == 1 else combined

    def chain(self, *others: Signature | Mapping[str, Any]) -> Signature:
        """``sig.chain(b, c)`` is ``sig | b | c``."""
        combined: Signature = self
        for other in others:
            combined = combined | other
        return combined

    def as_dict(self) -> dict[str, Any]:
        """The plain signature dict as it travels (nested signatures as plain dicts too)."""
        plain: dict[str, Any] = _copy(self)
        return plain

    # -- freezing and sending ---------------------------------------------------------------

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        """Fix the task id now (``options["task_id"]``) and return the result it will have."""
        if _id is not None:
            self.options["task_id"] = _id
        elif not self.options.get("task_id"):
            self.options["task_id"] = str(uuid.uuid4())
        return AsyncResult(self.options["task_id"], self.app, self.task)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send it (arguments merged in); options as ``Task.apply_async`` takes them."""
        unknown = set(options) - SEND_OPTIONS - CANVAS_OPTIONS
        if unknown:
            raise TypeError(f"apply_async() got unknown options: {', '.join(sorted(unknown))}")
        return self._send(*self._merge(args, kwargs, options))

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def apply(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Run it in this process now (an :class:`~celeriac.EagerResult` or ``GroupResult``).

        ``throw`` (default ``task_eager_propagates``) re-raises a failure at once.
        """
        return self._run_here(*self._merge(args, kwargs, options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function here with the merged arguments (no message, no result)."""
        merged_args, merged_kwargs, _ = self._merge(args, kwargs, None)
        return self.type(*merged_args, **merged_kwargs)

    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        """Publish with merged arguments and options (the workflow classes override this).
        ``send_task`` runs it here instead when ``task_always_eager`` is set."""
        send = {key: value for key, value in options.items() if key in SEND_OPTIONS}
        return self.app.send_task(self.task, args, kwargs, **send)

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        return self.type.apply(
            args,
            kwargs,
            task_id=options.get("task_id"),
            throw=options.get("throw"),
            link=options.get("link"),
            link_error=options.get("link_error"),
        )


class _Workflow(Signature):
    """Base of chain, group, chord and chunks: ``kwargs`` holds the structure, ``args`` are
    partial arguments for the workflow's first tasks."""

    def _merge(
        self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, options: Mapping[str, Any] | None
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        return (*tuple(args or ()), *self.args), dict(kwargs or {}), {**self.options, **(options or {})}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Workflows are sent when called (as in Celery)."""
        return self.apply_async(args, kwargs)

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        raise NotImplementedError

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        raise NotImplementedError


class _TaskList(_Workflow):
    """A workflow whose ``kwargs["tasks"]`` is a list of signatures (chain, group)."""

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature:
        sig = cls.__new__(cls)
        Signature.__init__(sig, data, app=app)
        sig.kwargs["tasks"] = [_sig(task, app) for task in sig.kwargs.get("tasks") or ()]
        return sig

    @property
    def tasks(self) -> list[Signature]:
        tasks: list[Signature] = self.kwargs["tasks"]
        return tasks


class chain(_TaskList):  # noqa: N801 - Celery's name
    """Tasks run one after the other, each result prepended to the next task's arguments.

    ``chain(a, b, c)``, ``chain([a, b, c])`` or ``a | b | c``. The result is the last task's
    :class:`~celeriac.AsyncResult`; ``.parent`` leads back to the first.
    """

    kind: ClassVar[str | None] = "chain"

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])
        steps: list[Signature] = []
        for item in tasks:
            sig = _step(item, app)
            if type(sig) is chain and not sig.options and not sig.args:
                steps.extend(sig.tasks)
            else:
                steps.append(sig)
        super().__init__("celery.chain", (), {"tasks": _upgrade_groups(steps, app)}, options, app=app)
        self["subtask_type"] = "chain"

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks) if self.tasks else "chain()"

    def link(self, callback: Signature | Mapping[str, Any]) -> Signature:
        """The callback runs after the last task."""
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Signature | Mapping[str, Any]) -> Signature:
        """The errback is attached to every task (only the one that fails runs it)."""
        sig = _sig(errback, self._app)
        for task in self.tasks:
            task.link_error(sig)
        return sig

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        if not self.tasks:
            raise ValueError("cannot freeze an empty chain")
        if _id is not None:
            _set_result_id(self.tasks[-1], _id)
        return _freeze_steps(self.tasks)

    def _prepare(self, options: dict[str, Any]) -> list[Signature]:
        """Cloned steps with the options that belong to them (``chain`` is the rest of an
        outer chain, ``link`` goes to the last step, ``link_error`` to every step)."""
        steps = [task.clone() for task in self.tasks]
        rest = options.pop("chain", None)
        if rest:
            steps = chain(*steps, *(_sig(item, self._app) for item in reversed(rest)), app=self._app).tasks
        if not steps:
            raise ValueError("cannot send an empty chain")
        for callback in _as_list(options.pop("link", None)):
            steps[-1].link(callback)
        for errback in _as_list(options.pop("link_error", None)):
            for step in steps:
                step.link_error(errback)
        task_id = options.pop("task_id", None)
        if task_id:
            _set_result_id(steps[-1], task_id)
        return steps

    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        if self.app.conf.task_always_eager:
            return self._run_here(args, kwargs, options)
        options = dict(options)
        steps = self._prepare(options)
        result = _freeze_steps(steps)
        first, rest = steps[0], steps[1:]
        first_options = {**options, "chain": [step.as_dict() for step in reversed(rest)] or None}
        first._send(*first._merge(args, kwargs, first_options))
        return result

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        options = dict(options)
        steps = self._prepare(options)
        throw = options.get("throw")
        previous: AsyncResult[Any] | None = None
        value: Any = None
        for index, step in enumerate(steps):
            if index == 0:
                result = step._run_here(*step._merge(args, kwargs, options))
            else:
                result = step._run_here(*step._merge((value,), None, {"throw": throw}))
            if previous is not None:
                attach_parent(result, previous)
            previous = result
            try:
                value = result.get()
            except Exception as exc:  # the rest of the chain never runs: it fails with this error
                for rest in steps[index + 1 :]:
                    failed: AsyncResult[Any] = EagerResult(
                        _result_id(rest) or str(uuid.uuid4()), self.app, rest.task, states.FAILURE, exc
                    )
                    attach_parent(failed, previous)
                    previous = failed
                return previous
        assert previous is not None
        return previous


class group(_TaskList):  # noqa: N801 - Celery's name
    """Tasks run in parallel: ``group(a, b)``, ``group([a, b])``, ``group(gen)``.

    Arguments given when it is sent go to every member. The result is a
    :class:`~celeriac.GroupResult`; ``get()`` returns the list of results in member order.
    A group has no callback of its own: use a :class:`chord`.
    """

    kind: ClassVar[str | None] = "group"

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])
        members: list[Signature] = []
        for item in tasks:
            sig = _step(item, app)
            if type(sig) is group and not sig.options and not sig.args:
                members.extend(sig.tasks)
            else:
                members.append(sig)
        super().__init__("celery.group", (), {"tasks": members}, options, app=app)
        self["subtask_type"] = "group"

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(task) for task in self.tasks)}])"

    def link(self, callback: Signature | Mapping[str, Any]) -> Signature:
        raise TypeError("a group cannot have a callback (link); use chord(group, callback)")

    def link_error(self, errback: Signature | Mapping[str, Any]) -> Signature:
        """The errback is attached to every member (it runs once per failed member)."""
        sig = _sig(errback, self._app)
        for task in self.tasks:
            task.link_error(sig)
        return sig

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        group_id = _id or self.options.get("task_id") or str(uuid.uuid4())
        self.options["task_id"] = group_id
        return GroupResult(group_id, [task.freeze() for task in self.tasks], self.app)

    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        if self.app.conf.task_always_eager:
            return self._run_here(args, kwargs, options)
        options = dict(options)
        rest = options.pop("chain", None)
        if rest:  # a group followed by more steps is a chord
            following = [_sig(item, self._app) for item in reversed(rest)]
            return chain(self, *following, app=self._app)._send(args, kwargs, options)
        if options.pop("link", None):
            raise TypeError("a group cannot have a callback (link); use chord(group, callback)")
        errbacks = _as_list(options.pop("link_error", None))
        group_id = options.pop("task_id", None) or options.pop("group_id", None) or str(uuid.uuid4())
        options.pop("group_index", None)
        results = []
        for index, member in enumerate(self.tasks):
            member = member.clone()
            for errback in errbacks:
                member.link_error(errback)
            _tag_group_member(member, group_id, index)
            results.append(member._send(*member._merge(args, kwargs, options)))
        return GroupResult(group_id, results, self.app)

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        group_id = options.get("task_id") or str(uuid.uuid4())
        member_options = {"throw": options["throw"]} if "throw" in options else {}
        results = [member.clone()._run_here(*member._merge(args, kwargs, member_options)) for member in self.tasks]
        return GroupResult(group_id, results, self.app)


class chord(_Workflow):  # noqa: N801 - Celery's name
    """A group (the header) and a body that receives the header's results, in header order.

    ``chord([a, b], body)``, ``chord(header)(body)``, or ``group(a, b) | body``. The result is
    the body's; its ``.parent`` is the header's :class:`~celeriac.GroupResult`. If a header task
    fails (or is revoked, dead-lettered, or the chord times out: ``chord_timeout``) the body
    fails with :class:`~celeriac.ChordError` naming the task, and its errbacks run once.
    """

    kind: ClassVar[str | None] = "chord"

    def __init__(
        self,
        header: Any,
        body: Signature | Mapping[str, Any] | None = None,
        task: str = "celery.chord",
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Celeriac | None = None,
        **options: Any,
    ) -> None:
        header_group = header if isinstance(header, group) else group(header, app=app)
        structure = {"header": header_group, "body": maybe_signature(body, app), "kwargs": dict(kwargs or {})}
        super().__init__(task, args, structure, options, app=app)
        self["subtask_type"] = "chord"

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature:
        sig = cls.__new__(cls)
        Signature.__init__(sig, data, app=app)
        header = sig.kwargs.get("header") or []
        if isinstance(header, Mapping):
            header_sig = _sig(header, app)
            sig.kwargs["header"] = header_sig if isinstance(header_sig, group) else group(header_sig, app=app)
        else:
            sig.kwargs["header"] = group([_sig(item, app) for item in header], app=app)
        sig.kwargs["body"] = maybe_signature(sig.kwargs.get("body"), app)
        return sig

    @property
    def header(self) -> group:
        header: group = self.kwargs["header"]
        return header

    @property
    def tasks(self) -> list[Signature]:
        return self.header.tasks

    @property
    def body(self) -> Signature | None:
        body: Signature | None = self.kwargs.get("body")
        return body

    def __repr__(self) -> str:
        return f"chord([{', '.join(repr(task) for task in self.tasks)}], {self.body!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chord(header)(body)`` sends the chord with that body."""
        if args and isinstance(args[0], Mapping):
            self.kwargs["body"] = _sig(args[0], self._app)
            args = args[1:]
        return self.apply_async(args, kwargs)

    def link(self, callback: Signature | Mapping[str, Any]) -> Signature:
        """The callback runs after the body."""
        return self._body().link(callback)

    def link_error(self, errback: Signature | Mapping[str, Any]) -> Signature:
        """The errback is the body's: it runs once if the body fails or cannot run."""
        return self._body().link_error(errback)

    def _body(self) -> Signature:
        body = self.body
        if body is None:
            raise ValueError("this chord has no body: chord(header, body) or chord(header)(body)")
        return body

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        header_result = self.header.freeze()
        body_result = self._body().freeze(_id)
        attach_parent(body_result, header_result)
        return body_result

    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        app = self.app
        if app.conf.task_always_eager:
            return self._run_here(args, kwargs, options)
        if app.result_store.reply_to is not None:
            raise ChordError(
                f"chords need a result store workers can read; {app.conf.result_store!r} sends results "
                "to the caller only"
            )
        from . import _workflow

        options = dict(options)
        body = self._body().clone()
        rest = options.pop("chain", None)
        if rest:  # the steps after this chord in an outer chain run after the body
            body = chain(body, *(_sig(item, self._app) for item in reversed(rest)), app=self._app)
        for callback in _as_list(options.pop("link", None)):
            body.link(callback)
        for errback in _as_list(options.pop("link_error", None)):
            body.link_error(errback)
        task_id = options.pop("task_id", None)
        if task_id:
            _set_result_id(body, task_id)
        group_id = options.pop("group_id", None) or self.header.options.get("task_id") or str(uuid.uuid4())
        options.pop("group_index", None)
        timeout = options.pop("chord_timeout", None)
        if timeout is None:
            timeout = app.conf.chord_timeout if app.conf.chord_timeout is not None else app.conf.result_expires
        options.pop("chord_size", None)
        members = [_single_result(member.clone(), app) for member in self.header.tasks]
        header_results = [member.freeze() for member in members]
        body_result = body.freeze()
        attach_parent(body_result, GroupResult(group_id, header_results, app))
        if not members:
            body._send(*body._merge(([],), None, options))
            return body_result
        body.options["chord_size"] = len(members)
        if timeout:
            body.options["chord_timeout"] = timeout
        body_dict = body.as_dict()
        for index, member in enumerate(members):
            _set_chord_member(member, group_id, index, body_dict)
        _workflow.save_chord(app, group_id, body_dict, [_result_id(member) for member in members], timeout)
        if timeout:
            _workflow.schedule_chord_timeout(app, group_id, body, timeout)
        for member in members:
            member._send(*member._merge(args, kwargs, options))
        return body_result

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        body = self._body().clone()
        throw = options.get("throw")
        for callback in _as_list(options.get("link")):
            body.link(callback)
        for errback in _as_list(options.get("link_error")):
            body.link_error(errback)
        member_options = {"throw": throw} if throw is not None else {}
        header_result = self.header.clone()._run_here(args, kwargs, {"task_id": str(uuid.uuid4()), **member_options})
        try:
            values = header_result.get()
        except Exception as exc:
            from . import _workflow
            from ._exceptions_data import exception_to_data

            failed = _first_failed_id(header_result) or "?"
            error = ChordError(f"Dependency {failed} raised {_workflow.describe_exception(exception_to_data(exc))}")
            body_result: AsyncResult[Any] = EagerResult(
                _result_id(body) or str(uuid.uuid4()), self.app, body.task, states.FAILURE, error
            )
            attach_parent(body_result, header_result)
            return body_result
        body_result = body._run_here(*body._merge((values,), None, member_options))
        attach_parent(body_result, header_result)
        return body_result


class xmap(Signature):  # noqa: N801 - Celery's name
    """``task.map(items)``: one message (task ``celery.map``) that returns ``[task(i) for i in items]``."""

    kind: ClassVar[str | None] = "xmap"
    builtin: ClassVar[str] = "celery.map"

    def __init__(self, task: Signature | Mapping[str, Any], it: Iterable[Any], app: Celeriac | None = None) -> None:
        super().__init__(self.builtin, (), {"task": _sig(task, app).as_dict(), "it": list(it)}, app=app)
        self["subtask_type"] = self.kind

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature:
        sig = cls.__new__(cls)
        Signature.__init__(sig, data, app=app)
        return sig

    def __repr__(self) -> str:
        return f"[{self.kwargs['task'].get('task')}(x) for x in {self.kwargs['it']!r}]"


class xstarmap(xmap):  # noqa: N801 - Celery's name
    """``task.starmap(items)``: one message (``celery.starmap``) returning ``[task(*i) for i in items]``."""

    kind: ClassVar[str | None] = "xstarmap"
    builtin: ClassVar[str] = "celery.starmap"

    def __repr__(self) -> str:
        return f"[{self.kwargs['task'].get('task')}(*x) for x in {self.kwargs['it']!r}]"


class chunks(_Workflow):  # noqa: N801 - Celery's name
    """``task.chunks(items, n)``: the items split in parts of ``n``, each part one
    :class:`xstarmap` message, all parts a group. ``get()`` gives a list of lists."""

    kind: ClassVar[str | None] = "chunks"

    def __init__(
        self, task: Signature | Mapping[str, Any], it: Iterable[Any], n: int, app: Celeriac | None = None
    ) -> None:
        if n < 1:
            raise ValueError("chunks need a size of at least 1")
        super().__init__("celery.chunks", (), {"task": _sig(task, app).as_dict(), "it": list(it), "n": n}, app=app)
        self["subtask_type"] = "chunks"
        self._group: group | None = None

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature:
        sig = cls.__new__(cls)
        Signature.__init__(sig, data, app=app)
        sig._group = None
        return sig

    def group(self) -> group:
        """The group of starmaps this stands for (the same one every time it is asked)."""
        if self._group is None:
            task = _sig(self.kwargs["task"], self._app)
            items: list[Any] = list(self.kwargs["it"])
            size = int(self.kwargs["n"])
            parts = [xstarmap(task, items[start : start + size], app=self._app) for start in range(0, len(items), size)]
            self._group = group(parts, app=self._app, **self.options)
        return self._group

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        return self.group().freeze(_id)

    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        return self.group()._send(args, kwargs, options)

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> AsyncResult[Any]:
        return self.group()._run_here(args, kwargs, options)


# -- constructors ------------------------------------------------------------------------------


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """A signature from a task name, a task, or a signature dict (Celery's ``signature()``)."""
    app = kwargs.get("app")
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, Mapping):
        return Signature.from_dict(varies, app=app)
    return Signature(varies, *args, **kwargs)


def maybe_signature(value: Signature | Mapping[str, Any] | None, app: Celeriac | None = None) -> Signature | None:
    """``None`` stays ``None``; a signature dict becomes a :class:`Signature`."""
    return None if value is None else _sig(value, app)


def embed_of(link: Any = None, link_error: Any = None, chain: Any = None, chord: Any = None) -> dict[str, Any]:
    """The protocol-v2 ``embed`` dict for these options (plain signature dicts, ``None`` when
    empty). ``chain`` is already in reverse order (the next task last)."""

    def plain_list(value: Any) -> list[dict[str, Any]] | None:
        items = [_sig(item, None).as_dict() for item in _as_list(value)]
        return items or None

    return {
        "callbacks": plain_list(link),
        "errbacks": plain_list(link_error),
        "chain": plain_list(chain),
        "chord": None if chord is None else _sig(chord, None).as_dict(),
    }


# -- helpers -----------------------------------------------------------------------------------


def _sig(value: Any, app: Celeriac | None) -> Signature:
    if isinstance(value, Signature):
        if value._app is None and app is not None:
            value._app = app
        return value
    if isinstance(value, Mapping):
        return Signature.from_dict(value, app)
    raise TypeError(f"expected a signature, got {type(value).__name__}: {value!r}")


def _step(value: Any, app: Celeriac | None) -> Signature:
    """A workflow step; ``chunks`` become the group they stand for."""
    sig = _sig(value, app)
    return sig.group() if isinstance(sig, chunks) else sig


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    return list(value)


def _append_option(sig: Signature, key: str, value: Signature) -> None:
    existing = sig.options.get(key)
    items = _as_list(existing)
    if value not in items:
        items.append(value)
    sig.options[key] = items


def _copy(value: Any) -> Any:
    """A structural copy: dicts (signatures included) and lists are copied, leaves shared."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _upgrade_groups(steps: list[Signature], app: Celeriac | None) -> list[Signature]:
    """In a chain, a group followed by another step becomes a chord with that step as body."""
    upgraded: list[Signature] = []
    for step in steps:
        if upgraded and type(upgraded[-1]) is group:
            upgraded[-1] = chord(upgraded[-1], step, app=app)
        else:
            upgraded.append(step)
    return upgraded


def _freeze_steps(steps: list[Signature]) -> AsyncResult[Any]:
    previous: AsyncResult[Any] | None = None
    for step in steps:
        result = step.freeze()
        if previous is not None:
            attach_parent(result, previous)
        previous = result
    assert previous is not None
    return previous


def _result_id(sig: Signature) -> str | None:
    """The id of the result that stands for ``sig``'s outcome (its last task's, its body's)."""
    if isinstance(sig, chain):
        return _result_id(sig.tasks[-1]) if sig.tasks else None
    if isinstance(sig, chord):
        return _result_id(sig.body) if sig.body is not None else None
    if isinstance(sig, chunks):
        return sig.group().id
    return sig.id


def _set_result_id(sig: Signature, task_id: str) -> None:
    if isinstance(sig, chain) and sig.tasks:
        _set_result_id(sig.tasks[-1], task_id)
    elif isinstance(sig, chord) and sig.body is not None:
        _set_result_id(sig.body, task_id)
    else:
        sig.options["task_id"] = task_id


def _single_result(sig: Signature, app: Celeriac) -> Signature:
    """``sig`` rewritten so one task's result stands for its outcome (needed for a chord
    header member): a trailing group becomes a chord with ``celery.accumulate`` as body."""
    if isinstance(sig, chunks):
        sig = sig.group()
    if isinstance(sig, group):
        return chord(sig, Signature("celery.accumulate", kwargs={"index": 0}, app=app), app=app)
    if isinstance(sig, chain) and sig.tasks:
        sig.kwargs["tasks"][-1] = _single_result(sig.tasks[-1], app)
    elif isinstance(sig, chord) and sig.body is not None:
        sig.kwargs["body"] = _single_result(sig.body, app)
    return sig


def _set_chord_member(sig: Signature, group_id: str, index: int, body: dict[str, Any]) -> None:
    """Make the task whose result stands for ``sig`` report to the chord ``group_id``."""
    if isinstance(sig, chain):
        _set_chord_member(sig.tasks[-1], group_id, index, body)
    elif isinstance(sig, chord):
        _set_chord_member(sig._body(), group_id, index, body)
    else:
        sig.options.update(group_id=group_id, group_index=index, chord=body, ignore_result=False)


def _tag_group_member(sig: Signature, group_id: str, index: int) -> None:
    """Group members carry the group id and their position (stored with their result)."""
    if isinstance(sig, chain) and sig.tasks:
        _tag_group_member(sig.tasks[-1], group_id, index)
    elif type(sig) is Signature or isinstance(sig, xmap):
        sig.options.setdefault("group_id", group_id)
        sig.options.setdefault("group_index", index)


def _first_failed_id(result: AsyncResult[Any]) -> str | None:
    if isinstance(result, GroupResult):
        for member in result.results:
            found = _first_failed_id(member)
            if found is not None:
                return found
        return None
    return result.id if result.state in states.PROPAGATE_STATES else None


from . import _builtins  # noqa: E402, F401 - registers celery.map, celery.accumulate, ... in every app
