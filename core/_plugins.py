"""The plugin host: one loading path for built-in and third-party plugins, and a typed facade.

The kernel never calls ``pm.hook.<name>(...)`` directly; it calls a method here, so mypy sees
real types and every hook call goes through one place (tracing, signal isolation).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pluggy

from . import hookspecs
from .exceptions import HandledError, PluginError

if TYPE_CHECKING:
    import click

    from ._envelope import Envelope
    from .app import Celeriac
    from .codec import Compressor, MessageFilter
    from .config import Setting
    from .pool import Pool
    from .resultstore import ResultStore
    from .serialization import Serializer
    from .task import Request, Task
    from .transport import Transport
    from .worker import Worker

__all__ = ["ENTRY_POINT_GROUP", "PluginHost", "PluginInfo"]

ENTRY_POINT_GROUP = "celeriac"
SIGNALS: tuple[str, ...] = (
    "before_task_publish",
    "after_task_publish",
    "task_received",
    "task_prerun",
    "task_postrun",
    "task_success",
    "task_failure",
    "task_retry",
    "task_revoked",
    "task_rejected",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutting_down",
    "worker_shutdown",
)
#: Signals whose handlers may stop what is starting by raising HandledError.
_ABORTING_SIGNALS = frozenset({"worker_init"})

logger = logging.getLogger("celeriac.plugins")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, as ``celeriac plugins`` shows it."""

    name: str
    version: str
    source: str
    hooks: tuple[str, ...]


@cache
def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


class PluginHost:
    """A pluggy manager for one app, with one typed method per hook."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, tuple[str, str]] = {}
        if os.environ.get("CELERIAC_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
            self.pm.enable_tracing()

    # -- loading ----------------------------------------------------------------------------

    def load(
        self,
        modules: Sequence[str] = (),
        blocked: Sequence[str] = (),
        where: str = "config",
        where_blocked: str | None = None,
    ) -> None:
        """Register entry-point plugins (minus ``blocked``), then ``modules`` from the config.

        ``where`` / ``where_blocked`` name where ``plugins`` / ``disable_plugins`` came from (a
        file, an environment variable) for error messages. Modules are imported with the
        working directory on ``sys.path``, as ``imports`` are."""
        known = {ep.name for ep in _entry_points()}
        for name in blocked:
            if name not in known and name not in modules:
                installed = ", ".join(sorted(known)) or "none"
                raise PluginError(
                    f"{where_blocked or where}: disable_plugins: no plugin called {name!r}; installed: {installed}"
                )
            self.pm.set_blocked(name)
        for entry_point in sorted(_entry_points(), key=_builtin_first):
            if self.pm.is_blocked(entry_point.name) or self.pm.has_plugin(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
            except ImportError as exc:
                raise PluginError(f"plugin {entry_point.name!r} ({entry_point.value}) failed to import: {exc}") from exc
            self._register(plugin, entry_point.name, _dist_source(entry_point))
        if modules and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for module_name in modules:
            if self.pm.has_plugin(module_name):
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise PluginError(f"{where}: plugins: cannot import {module_name!r}: {exc}") from exc
            self._register(module, module_name, ("config", ""))

    def register(self, plugin: object, name: str | None = None, source: str = "code") -> str:
        """Register a plugin object (module, class instance) given in code."""
        name = name or f"{type(plugin).__name__}-{id(plugin):x}"
        self._register(plugin, name, (source, ""))
        return name

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._sources.pop(name, None)

    def _register(self, plugin: object, name: str, source: tuple[str, str]) -> None:
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise PluginError(f"plugin {name!r} is invalid: {reason}") from exc
        self._sources[name] = source

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with its version, source and hooks."""
        found = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            source, version = self._sources.get(name, ("code", ""))
            found.append(PluginInfo(name=name, version=version, source=source, hooks=hooks))
        return found

    # -- assembly ---------------------------------------------------------------------------

    def settings(self) -> list[Setting]:
        return [setting for batch in self.pm.hook.celeriac_settings() for setting in batch]

    def configure(self, app: Celeriac) -> None:
        self.pm.hook.celeriac_configure(app=app)

    def transport(self, url: str, options: Mapping[str, Any], app: Celeriac) -> Transport:
        scheme = _scheme(url, "broker_url")
        transport: Transport | None = self.pm.hook.celeriac_transport(url=url, scheme=scheme, options=options, app=app)
        if transport is None:
            installed = sorted({s for batch in self.pm.hook.celeriac_transport_schemes() for s in batch})
            raise PluginError(
                f"broker_url: no transport for {scheme}:// URLs; installed: "
                f"{', '.join(s + '://' for s in installed) or 'none'} (a plugin may need an extra, "
                f"e.g. pip install 'celeriac[{scheme}]')"
            )
        return transport

    def result_store(self, url: str, options: Mapping[str, Any], app: Celeriac) -> ResultStore:
        scheme = _scheme(url, "result_store")
        store: ResultStore | None = self.pm.hook.celeriac_result_store(url=url, scheme=scheme, options=options, app=app)
        if store is None:
            installed = sorted({s for batch in self.pm.hook.celeriac_result_store_schemes() for s in batch})
            raise PluginError(
                f"result_store: no result store for {scheme}:// URLs; installed: "
                f"{', '.join(s + '://' for s in installed) or 'none'}"
            )
        return store

    def pool(self, name: str, concurrency: int, options: Mapping[str, Any], app: Celeriac) -> Pool:
        pool: Pool | None = self.pm.hook.celeriac_pool(name=name, concurrency=concurrency, options=options, app=app)
        if pool is None:
            installed = sorted({n for batch in self.pm.hook.celeriac_pool_names() for n in batch})
            raise PluginError(f"worker.pool: no pool called {name!r}; installed: {', '.join(installed) or 'none'}")
        return pool

    def pool_names(self) -> list[str]:
        return sorted({n for batch in self.pm.hook.celeriac_pool_names() for n in batch})

    def serializers(self) -> list[Serializer]:
        # pluggy calls the most recently registered first; built-ins (registered first) must win.
        return [s for batch in reversed(self.pm.hook.celeriac_serializers()) for s in batch]

    def compressors(self) -> list[Compressor]:
        return [c for batch in reversed(self.pm.hook.celeriac_compressors()) for c in batch]

    def message_filters(self, app: Celeriac) -> list[MessageFilter]:
        return [f for batch in reversed(self.pm.hook.celeriac_message_filters(app=app)) for f in batch]

    def cli_commands(self) -> list[click.Command]:
        return [command for batch in self.pm.hook.celeriac_cli_commands() for command in batch]

    def worker_options(self) -> list[click.Option]:
        return [option for batch in reversed(self.pm.hook.celeriac_worker_options()) for option in batch]

    def control_commands(self) -> dict[str, Callable[..., Any]]:
        commands: dict[str, Callable[..., Any]] = {}
        for batch in reversed(self.pm.hook.celeriac_control_commands()):
            commands.update(batch)
        return commands

    def beat_schedule(self, value: Any, app: Celeriac) -> Any | None:
        return self.pm.hook.celeriac_beat_schedule(value=value, app=app)

    # -- signals ----------------------------------------------------------------------------

    def send_signal(self, signal: str, /, **kwargs: Any) -> None:
        """Call every handler of ``signal``; a failing handler is logged, the rest still run.

        One exception: a ``worker_init`` handler that raises :class:`~celeriac.HandledError`
        (``ConfigError``, ``PluginError``) stops the worker from starting, with that one-line
        message -- a plugin's configuration that cannot work must not run half-enabled."""
        caller = getattr(self.pm.hook, signal)
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except HandledError:
                if signal in _ABORTING_SIGNALS:
                    raise
                logger.exception("signal handler %s of plugin %r failed", signal, impl.plugin_name)
            except Exception:
                logger.exception("signal handler %s of plugin %r failed", signal, impl.plugin_name)

    def has_handlers(self, name: str) -> bool:
        return bool(getattr(self.pm.hook, name).get_hookimpls())

    def before_task_publish(
        self,
        app: Celeriac,
        sender: str,
        headers: dict[str, Any],
        body: tuple[Any, ...],
        properties: dict[str, Any],
        queue: str,
    ) -> None:
        self.send_signal(
            "before_task_publish",
            app=app,
            sender=sender,
            headers=headers,
            body=body,
            properties=properties,
            queue=queue,
        )

    def after_task_publish(
        self, app: Celeriac, sender: str, headers: dict[str, Any], body: tuple[Any, ...], queue: str
    ) -> None:
        self.send_signal("after_task_publish", app=app, sender=sender, headers=headers, body=body, queue=queue)

    def task_received(self, app: Celeriac, request: Request) -> None:
        self.send_signal("task_received", app=app, request=request)

    def task_prerun(
        self, app: Celeriac, task: Task[..., Any], task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        self.send_signal("task_prerun", app=app, sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)

    def task_postrun(
        self,
        app: Celeriac,
        task: Task[..., Any],
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        retval: Any,
        state: str,
    ) -> None:
        self.send_signal(
            "task_postrun",
            app=app,
            sender=task,
            task_id=task_id,
            task=task,
            args=args,
            kwargs=kwargs,
            retval=retval,
            state=state,
        )

    def task_success(self, app: Celeriac, task: Task[..., Any], result: Any) -> None:
        self.send_signal("task_success", app=app, sender=task, result=result)

    def task_failure(
        self,
        app: Celeriac,
        task: Task[..., Any],
        task_id: str,
        exception: BaseException,
        args: list[Any],
        kwargs: dict[str, Any],
        traceback: str,
    ) -> None:
        self.send_signal(
            "task_failure",
            app=app,
            sender=task,
            task_id=task_id,
            exception=exception,
            args=args,
            kwargs=kwargs,
            traceback=traceback,
        )

    def task_retry(self, app: Celeriac, task: Task[..., Any], request: Request, reason: str) -> None:
        self.send_signal("task_retry", app=app, sender=task, request=request, reason=reason)

    def task_revoked(
        self, app: Celeriac, request: Request, *, terminated: bool, signum: int | None, expired: bool
    ) -> None:
        self.send_signal(
            "task_revoked", app=app, request=request, terminated=terminated, signum=signum, expired=expired
        )

    def task_rejected(self, app: Celeriac, message: Envelope, exc: BaseException) -> None:
        self.send_signal("task_rejected", app=app, message=message, exc=exc)

    def task_unknown(self, app: Celeriac, message: Envelope, exc: BaseException, name: str, task_id: str) -> None:
        self.send_signal("task_unknown", app=app, message=message, exc=exc, name=name, id=task_id)

    def worker_init(self, app: Celeriac, worker: Worker) -> None:
        self.send_signal("worker_init", app=app, sender=worker, worker=worker)

    def worker_process_init(self, app: Celeriac, worker: Worker) -> None:
        self.send_signal("worker_process_init", app=app, sender=worker, worker=worker)

    def worker_process_shutdown(self, app: Celeriac, worker: Worker, pid: int, exitcode: int) -> None:
        self.send_signal("worker_process_shutdown", app=app, sender=worker, worker=worker, pid=pid, exitcode=exitcode)

    def worker_ready(self, app: Celeriac, worker: Worker) -> None:
        self.send_signal("worker_ready", app=app, sender=worker, worker=worker)

    def worker_shutting_down(self, app: Celeriac, worker: Worker, sig: str, how: str, exitcode: int) -> None:
        self.send_signal(
            "worker_shutting_down", app=app, sender=worker, worker=worker, sig=sig, how=how, exitcode=exitcode
        )

    def worker_shutdown(self, app: Celeriac, worker: Worker) -> None:
        self.send_signal("worker_shutdown", app=app, sender=worker, worker=worker)


def signal_handler_plugin(signal: str, function: Callable[..., Any]) -> object:
    """Wrap a plain function as a plugin implementing ``signal``.

    The function receives the signal's arguments it names; with ``**kwargs`` it receives all
    of them (Celery-style ``def handler(sender=None, **kwargs)`` works).
    """
    import inspect

    if signal not in SIGNALS:
        raise PluginError(f"unknown signal {signal!r}; signals: {', '.join(SIGNALS)}")
    spec = getattr(hookspecs, signal)
    spec_params = list(inspect.signature(spec).parameters)
    target = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in target.values())
    wanted = spec_params if takes_all else [name for name in spec_params if name in target]
    unknown = [
        name
        for name, p in target.items()
        if name not in spec_params and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.default is p.empty
    ]
    if unknown:
        raise PluginError(
            f"handler {function.__qualname__} for {signal} takes {', '.join(unknown)}, "
            f"which the signal does not send; it sends: {', '.join(spec_params)}"
        )

    # pluggy reads argument names from the code object, so build a function with exactly the
    # names to pass (all of them come from the hook spec, never from user input).
    namespace: dict[str, Any] = {"_function": function}
    params = ", ".join(wanted)
    call = ", ".join(f"{name}={name}" for name in wanted)
    exec(f"def {signal}({params}):\n    _function({call})\n", namespace)
    handler = namespace[signal]
    marked = hookspecs.hookimpl(handler)

    class SignalHandler:
        pass

    plugin = SignalHandler()
    setattr(plugin, signal, marked)
    return plugin


def _scheme(url: str, key: str) -> str:
    if "://" not in url:
        raise PluginError(f"{key}: {url!r} is not a URL; expected something like memory:// or redis://host:6379/0")
    return urlsplit(url).scheme.lower() or url.split("://", 1)[0].lower()


def _builtin_first(entry_point: importlib.metadata.EntryPoint) -> tuple[int, str]:
    builtin = entry_point.value.startswith("celeriac.plugins.")
    return (0 if builtin else 1, entry_point.name)


def _dist_source(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = entry_point.dist
    if dist is None:
        return ("entry point", "")
    name = dist.metadata["Name"]
    return ("built-in" if name == "celeriac" else f"entry point ({name})", dist.version)


def iter_signals() -> Iterable[str]:
    return iter(SIGNALS)
