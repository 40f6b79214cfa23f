"""The application: configuration, plugins, task registry, publishing and results."""

from __future__ import annotations

import fnmatch
import importlib
import os
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import states
from ._exceptions_data import exception_to_data
from ._plugins import PluginHost, signal_handler_plugin
from .codec import MessageCodec
from .config import KERNEL_SETTINGS, Config, ConfigSource, discover_config_file, read_config_file
from .exceptions import ConfigError, NotRegistered, SerializationError
from .message import TaskMessage
from .result import AsyncResult
from .resultstore import ResultRecord, ResultStore
from .serialization import SerializerRegistry
from .task import Request, Task, current_request, shared_task_definitions

if TYPE_CHECKING:
    from .control import Control
    from .events import Events
    from .transport import Transport
    from .worker import Worker

__all__ = ["Celeriac", "current_app"]

P = ParamSpec("P")
R = TypeVar("R")
_current: Celeriac | None = None
_current_lock = threading.Lock()


def current_app() -> Celeriac:
    """The app most recently created (or set current); a default app from the config otherwise."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Celeriac.from_config(set_as_current=False)
        return _current


class TaskRegistry(Mapping[str, Task[..., Any]]):
    """Tasks of one app by name; picks up :func:`~celeriac.shared_task` declarations lazily."""

    def __init__(self, app: Celeriac) -> None:
        self._app = app
        self._tasks: dict[str, Task[..., Any]] = {}
        self._shared_seen = 0

    def _sync_shared(self) -> None:
        definitions = shared_task_definitions()
        if len(definitions) == self._shared_seen:
            return
        for fn, options in definitions[self._shared_seen :]:
            name = options.get("name") or f"{fn.__module__}.{fn.__qualname__}"
            if name not in self._tasks:
                self._app._make_task(fn, {**options, "name": name})
        self._shared_seen = len(definitions)

    def add(self, task: Task[..., Any]) -> None:
        self._tasks[task.name] = task

    def __getitem__(self, name: str) -> Task[..., Any]:
        task = self._tasks.get(name)
        if task is None:
            self._sync_shared()
            task = self._tasks.get(name)
        if task is None:
            raise NotRegistered(f"task {name!r} is not registered; is its module listed in imports?")
        return task

    def __iter__(self) -> Iterator[str]:
        self._sync_shared()
        return iter(self._tasks)

    def __len__(self) -> int:
        self._sync_shared()
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        if name in self._tasks:
            return True
        self._sync_shared()
        return name in self._tasks


class Celeriac:
    """A celeriac application.

    ``Celeriac("proj", broker_url="redis://...", result_store="redis://...", **settings)``
    takes any setting as a keyword. The config file is discovered as the CLI does
    (``$CELERIAC_CONFIG``, ``./celeriac.toml``, ``[tool.celeriac]`` in ``./pyproject.toml``;
    ``config_source=ConfigSource()`` reads none); ``Celeriac.from_config(path)`` names one.
    Environment variables (``CELERIAC_BROKER_URL``...) override the file; keywords override both.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        config_source: ConfigSource | None = None,
        plugins: Sequence[object] = (),
        set_as_current: bool = True,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        global _current
        self.main = main
        environ = os.environ if environ is None else environ
        # Without an explicit source the app reads the config file a worker started here would
        # read (``$CELERIAC_CONFIG``, ``./celeriac.toml``, ``[tool.celeriac]``); keywords win.
        source = discover_config_file(environ=environ) if config_source is None else config_source
        table = read_config_file(source)
        plugin_modules, blocked, origins = self._plugin_lists(source, table, environ, settings)
        self.plugins = PluginHost()
        self.plugins.load(plugin_modules, blocked, where=origins[0], where_blocked=origins[1])
        for plugin in plugins:
            self.plugins.register(plugin)
        self.conf = Config([*KERNEL_SETTINGS, *self.plugins.settings()], source)
        self.conf.load_table(table)
        self.conf.load_environ(environ)
        self.conf.update(settings)
        self.tasks = TaskRegistry(self)
        self._lock = threading.RLock()
        self._transport: Transport | None = None
        self._result_store: ResultStore | None = None
        self._serializers: SerializerRegistry | None = None
        self._codec: MessageCodec | None = None
        self._accept: frozenset[str] | None = None
        self._result_accept: frozenset[str] | None = None
        self._workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        self._control: Control | None = None
        self._events: Events | None = None
        self.plugins.configure(self)
        if set_as_current:
            with _current_lock:
                _current = self

    @staticmethod
    def _plugin_lists(
        source: ConfigSource, table: Mapping[str, Any], environ: Mapping[str, str], settings: Mapping[str, Any]
    ) -> tuple[list[str], list[str], tuple[str, str]]:
        """``plugins`` / ``disable_plugins`` (and where each came from) are needed before the
        plugins' own settings exist."""
        preliminary = Config([s for s in KERNEL_SETTINGS if s.name in ("plugins", "disable_plugins")], source)
        preliminary.load_table({k: v for k, v in table.items() if k in ("plugins", "disable_plugins")})
        preliminary.load_environ(environ)
        preliminary.update({k: v for k, v in settings.items() if k in ("plugins", "disable_plugins")})
        origins = tuple(
            str(source) if preliminary.origin(name) == "default" else preliminary.origin(name)
            for name in ("plugins", "disable_plugins")
        )
        return list(preliminary.plugins), list(preliminary.disable_plugins), (origins[0], origins[1])

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, *, cwd: Path | None = None, **overrides: Any
    ) -> Celeriac:
        """Build the app from the discovered config file (see :mod:`celeriac.config`)."""
        source = discover_config_file(path, cwd)
        return cls(config_source=source, **overrides)

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'} broker={self.conf.masked()['broker_url']}>"

    def set_current(self) -> None:
        """Make this the app that :func:`~celeriac.shared_task` calls go to."""
        global _current
        with _current_lock:
            _current = self

    # -- plugins and signals ----------------------------------------------------------------

    def on(self, signal: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Connect a plain function to a signal: ``@app.on("task_success")``.

        The function gets the signal's arguments it names (or all with ``**kwargs``).
        """

        def connect(function: Callable[..., Any]) -> Callable[..., Any]:
            self.plugins.register(
                signal_handler_plugin(signal, function), f"{signal}:{function.__qualname__}:{id(function):x}"
            )
            return function

        return connect

    def register_plugin(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (a module or instance with hook implementations)."""
        return self.plugins.register(plugin, name)

    # -- tasks ------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...
    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True, ...)``."""
        if fn is not None:
            return self._make_task(fn, options)
        return lambda function: self._make_task(function, options)

    def _make_task(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task[..., Any]:
        options = dict(options)
        name = options.pop("name", None) or self._task_name(fn)
        task: Task[..., Any] = Task(self, fn, name=name, **options)
        self.tasks.add(task)
        return task

    def _task_name(self, fn: Callable[..., Any]) -> str:
        module = fn.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{fn.__qualname__}"

    def import_modules(self) -> None:
        """Import the modules in ``imports`` (their tasks register themselves)."""
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for module in self.conf.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(f"{self.conf.origin('imports')}: imports: cannot import {module!r}: {exc}") from exc

    # -- lazily built parts -----------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        """The broker transport (created on first use, shared by all threads)."""
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = self.create_transport()
        return self._transport

    def create_transport(self) -> Transport:
        """A new transport instance for ``broker_url`` (a worker uses its own, closed at stop)."""
        return self.plugins.transport(self.conf.broker_url, self.conf.broker_transport_options, self)

    @property
    def result_store(self) -> ResultStore:
        """The result store (created on first use, shared by all threads)."""
        if self._result_store is None:
            with self._lock:
                if self._result_store is None:
                    self._result_store = self.plugins.result_store(
                        self.conf.result_store, self.conf.result_store_options, self
                    )
        return self._result_store

    @property
    def serializers(self) -> SerializerRegistry:
        if self._serializers is None:
            with self._lock:
                if self._serializers is None:
                    registry = SerializerRegistry(self.plugins.serializers())
                    registry.get(self.conf.serializer)
                    registry.get(self.conf.result_serializer)
                    self._accept = registry.resolve_accept(self.conf.accept_content)
                    self._result_accept = registry.resolve_accept(self.conf.result_accept_content)
                    self._serializers = registry
        return self._serializers

    @property
    def codec(self) -> MessageCodec:
        """Serializer + compression + message filters (signing, encryption) for task messages."""
        if self._codec is None:
            with self._lock:
                if self._codec is None:
                    self._codec = MessageCodec(
                        self.serializers,
                        self.plugins.compressors(),
                        self.plugins.message_filters(self),
                        accept=self.accept_content,
                        compression=self.conf.compression,
                        compression_threshold=self.conf.compression_threshold,
                        max_size=self.conf.message_max_size,
                    )
        return self._codec

    @property
    def accept_content(self) -> frozenset[str]:
        """Content types a worker of this app decodes."""
        self.serializers  # noqa: B018 - resolves the accept sets
        assert self._accept is not None
        return self._accept

    @property
    def result_accept_content(self) -> frozenset[str]:
        self.serializers  # noqa: B018
        assert self._result_accept is not None
        return self._result_accept

    def close(self) -> None:
        """Close the transport and result store (they reopen on next use)."""
        if self._events is not None:
            self._events.close()  # sends buffered task-sent events first
        with self._lock:
            transport, store = self._transport, self._result_store
            self._transport = self._result_store = None
        if transport is not None:
            transport.close()
        if store is not None:
            store.close()

    # -- publishing -------------------------------------------------------------------------

    def route(self, name: str) -> dict[str, Any]:
        """Options from ``routes`` for task ``name`` (exact name first, then globs in order)."""
        routes: Mapping[str, Any] = self.conf.routes
        found = routes.get(name)
        if found is None:
            for pattern, options in routes.items():
                if fnmatch.fnmatchcase(name, pattern):
                    found = options
                    break
        if found is None:
            return {}
        if isinstance(found, str):
            return {"queue": found}
        if isinstance(found, Mapping):
            return dict(found)
        raise ConfigError(f"{self.conf.origin('routes')}: [celeriac.routes] {name}: expected a table or a queue name")

    def send_task(
        self,
        name: str,
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
        retries: int = 0,
        parent_id: str | None = None,
        root_id: str | None = None,
        reply_to: str | None = None,
        compression: str | None = None,
        link: Any = None,
        link_error: Any = None,
        chain: Any = None,
        chord: Any = None,
        group_id: str | None = None,
        group_index: int | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Queue task ``name`` (it need not be registered here). Returns its :class:`AsyncResult`.

        ``link`` / ``link_error`` (signatures) become the message's callbacks / errbacks; the
        canvas (:mod:`celeriac.canvas`) also passes ``chain`` (the rest of a chain, reversed),
        ``chord`` (the body a chord header task reports to), ``group_id`` and ``group_index``.
        """
        if options:
            raise TypeError(f"send_task() got unknown options: {', '.join(sorted(options))}")
        task = self.tasks.get(name)
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if self.conf.task_always_eager and task is not None:
            return task.apply(
                args, kwargs, task_id=task_id, retries=retries, link=link, link_error=link_error, chain=chain
            )
        route = self.route(name)
        queue = queue or route.get("queue") or (task.queue if task else None) or self.conf.task_default_queue
        if priority is None:
            priority = route.get("priority", task.priority if task else None)
            if priority is None:
                priority = self.conf.task_default_priority
        now = datetime.now(UTC)
        if countdown is not None:
            eta = now + timedelta(seconds=countdown)
        elif eta is not None and eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
        if expires is None and task is not None and task.expires is not None:
            expires = task.expires
        if isinstance(expires, int | float):
            expires = now + timedelta(seconds=expires)
        elif isinstance(expires, datetime) and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        parent = current_request.get()
        if parent is not None and not parent.is_eager:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id
        task_id = task_id or str(uuid.uuid4())
        if reply_to is None and not (ignore_result or (task is not None and task.ignore_result)):
            reply_to = self.result_store.reply_to
        if time_limit is None and task is not None:
            time_limit = task.time_limit
        if soft_time_limit is None and task is not None:
            soft_time_limit = task.soft_time_limit
        if ignore_result is None and task is not None:
            ignore_result = task.ignore_result
        message = TaskMessage(
            id=task_id,
            task=name,
            args=args,
            kwargs=kwargs,
            retries=retries,
            eta=eta,
            expires=expires,
            root_id=root_id or task_id,
            parent_id=parent_id,
            timelimit=(time_limit, soft_time_limit),
            ignore_result=ignore_result,
            reply_to=reply_to,
            priority=priority,
            extra_headers=dict(headers or {}),
            group=group_id,
            group_index=group_index,
        )
        if link is not None or link_error is not None or chain is not None or chord is not None:
            from .canvas import embed_of

            message.embed = embed_of(link, link_error, chain, chord)
        serializer = serializer or (task.serializer if task else None) or self.conf.serializer
        compression = compression or (task.compression if task else None)
        envelope, body = self.codec.encode(message, serializer, compression, filters=False)
        self.plugins.before_task_publish(self, name, envelope.headers, body, envelope.properties, queue)
        envelope = self.codec.apply_filters(envelope)  # after the signal, so signatures cover its changes
        delay_until = eta.timestamp() if eta is not None and eta > now else None
        self.transport.publish(envelope, queue, eta=delay_until)
        self.plugins.after_task_publish(self, name, envelope.headers, body, queue)
        if self.conf.task_send_sent_event:
            self._send_sent_event(message, queue)
        return AsyncResult(task_id, self, name)

    def _send_sent_event(self, message: TaskMessage, queue: str) -> None:
        from .worker._events import short_repr

        self.events.client_dispatcher.send(
            "task-sent",
            uuid=message.id,
            name=message.task,
            args=short_repr(message.args),
            kwargs=short_repr(message.kwargs),
            retries=message.retries,
            eta=message.eta.isoformat() if message.eta is not None else None,
            expires=message.expires.isoformat() if message.expires is not None else None,
            queue=queue,
            exchange="",
            routing_key=queue,
            root_id=message.root_id,
            parent_id=message.parent_id,
        )

    # -- monitoring and remote control ------------------------------------------------------

    @property
    def control(self) -> Control:
        """Remote control of the workers (:mod:`celeriac.control`): ``app.control.inspect().active()``."""
        if self._control is None:
            from .control import Control

            self._control = Control(self)
        return self._control

    @property
    def events(self) -> Events:
        """Event shortcuts (:mod:`celeriac.events`): ``app.events.Receiver``, ``.State``, ``.Dispatcher``."""
        if self._events is None:
            with self._lock:
                if self._events is None:
                    from .events import Events

                    self._events = Events(self)
        return self._events

    def AsyncResult(self, task_id: str, name: str | None = None) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        """A handle on the result of ``task_id``."""
        return AsyncResult(task_id, self, name)

    # -- results ----------------------------------------------------------------------------

    def encode_result(
        self, task_id: str, state: str, result: Any, *, traceback: str | None = None, request: Request | None = None
    ) -> ResultRecord:
        """The stored form of a state: Celery's result meta, encoded with ``result_serializer``."""
        meta: dict[str, Any] = {
            "task_id": task_id,
            "status": state,
            "result": result,
            "traceback": traceback,
            "children": [],
            "date_done": datetime.now(UTC).isoformat() if state in states.READY_STATES else None,
        }
        if request is not None:
            meta.update(
                name=request.task,
                worker=request.hostname,
                retries=request.retries,
                queue=request.queue,
                parent_id=request.parent_id,
                group_id=request.group,
            )
        registry = self.serializers
        try:
            data, content_type, encoding = registry.dumps(meta, self.conf.result_serializer)
        except (TypeError, ValueError, OverflowError) as exc:
            error = SerializationError(
                f"the result of {meta.get('name') or 'task'}[{task_id}] cannot be serialized with "
                f"{self.conf.result_serializer}: {exc}"
            )
            meta.update(status=states.FAILURE, result=exception_to_data(error), traceback=None)
            meta["date_done"] = datetime.now(UTC).isoformat()
            data, content_type, encoding = registry.dumps(meta, self.conf.result_serializer)
            state = states.FAILURE
        return ResultRecord(task_id, state, data, content_type, encoding, request.reply_to if request else None)

    def decode_result(self, record: ResultRecord) -> dict[str, Any]:
        meta = self.serializers.loads(
            record.payload, record.content_type, self.result_accept_content, setting="result_accept_content"
        )
        if not isinstance(meta, dict):
            raise SerializationError(f"stored result of {record.task_id} is not a result meta mapping")
        return meta

    def store_result(
        self, task_id: str, state: str, result: Any, *, traceback: str | None = None, request: Request | None = None
    ) -> None:
        """Store ``state`` for ``task_id`` with ``result_expires``."""
        record = self.encode_result(task_id, state, result, traceback=traceback, request=request)
        self.result_store.set(record, expires=self.conf.result_expires)

    # -- workers ----------------------------------------------------------------------------

    def running_workers(self) -> list[Worker]:
        """Workers of this app running in this process."""
        return list(self._workers)

    def Worker(self, **options: Any) -> Worker:  # noqa: N802 - Celery's name
        """A worker for this app; options override ``[celeriac.worker]`` (pool, concurrency, queues...)."""
        from .worker import Worker

        return Worker(self, **options)

    # -- periodic tasks (beat) --------------------------------------------------------------

    @property
    def periodic_tasks(self) -> dict[str, Any]:
        """Entries added with :meth:`add_periodic_task`, by name (``celeriac.beat.Entry`` objects)."""
        entries: dict[str, Any] = self.__dict__.setdefault("_periodic_tasks", {})
        return entries

    def add_periodic_task(
        self,
        schedule: Any,
        sig_or_task_name: Any,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Send a task periodically (when a beat runs for this app); returns the entry's name.

        ``schedule``: seconds, a ``timedelta``, a duration (``"5m"``), a crontab string
        (``"0 7 * * mon-fri"``), a :class:`celeriac.beat.Schedule`, or what a plugin accepts.
        ``sig_or_task_name``: a task, a signature (``add.s(2, 2)``) or a task name. ``options``:
        ``timezone``, ``enabled`` and send options (``queue``, ``priority``, ``expires``, ...).
        ``name`` defaults to the signature, e.g. ``"proj.add(1, 2)"``. Adding the same entry again
        changes nothing; another entry under a name already added raises
        :class:`~celeriac.exceptions.ConfigError`. An entry with the name of a config entry
        replaces it. Checked now: a bad value raises :class:`~celeriac.exceptions.ConfigError`.
        """
        from .beat import make_entry

        table: dict[str, Any] = {"schedule": schedule, **options}
        if isinstance(sig_or_task_name, str):
            table["task"] = sig_or_task_name
        elif isinstance(sig_or_task_name, Mapping) and "task" in sig_or_task_name:  # a signature
            if sig_or_task_name.get("subtask_type"):
                raise ConfigError(
                    f"add_periodic_task: {sig_or_task_name.get('subtask_type')} signatures are not supported; "
                    "schedule a task that starts the workflow instead"
                )
            table["task"] = sig_or_task_name["task"]
            table["args"] = [*sig_or_task_name.get("args", ()), *(args or ())]
            table["kwargs"] = {**sig_or_task_name.get("kwargs", {}), **(kwargs or {})}
            table = {**dict(sig_or_task_name.get("options") or {}), **table}
        elif isinstance(getattr(sig_or_task_name, "name", None), str):  # a task
            table["task"] = sig_or_task_name.name
        else:
            raise ConfigError(
                f"add_periodic_task: expected a task, a signature or a task name, got {sig_or_task_name!r}"
            )
        if "args" not in table:
            table["args"] = list(args or ())
        if "kwargs" not in table:
            table["kwargs"] = dict(kwargs or {})
        if not name:  # as Celery: the signature's repr, so add.s(1, 2) and add.s(3, 4) are two entries
            sig_args, sig_kwargs = table["args"], table["kwargs"]
            shown = (  # with bad args or kwargs make_entry raises, naming them
                [*map(repr, sig_args), *(f"{k}={v!r}" for k, v in sig_kwargs.items())]
                if isinstance(sig_args, list | tuple) and isinstance(sig_kwargs, Mapping)
                else ["..."]
            )
            name = f"{table['task']}({', '.join(shown)})"
        entry = make_entry(name, table, self, "add_periodic_task")
        known = self.periodic_tasks.get(name)
        if known is not None and known != entry:
            raise ConfigError(
                f"add_periodic_task: an entry named {name!r} was already added with another schedule or options "
                f"({known.schedule!r} vs {entry.schedule!r}); give each one its own name=..."
            )
        self.periodic_tasks[name] = entry
        return name
