"""The hook specifications: the whole contract between the kernel and its plugins.

Implement a hook in any module or object with ``@celeriac.hookimpl`` and a function named
after the spec; take only the arguments you need (pluggy passes them by name). The kernel
calls hooks only through its typed facade (``app.plugins``), never ``pm.hook`` directly.

Groups:

* **assembly** — which transport, result store, pool and serializers a worker is built from,
  extra settings and CLI commands, and the configure notice;
* **signals** — Celery's signals with Celery's argument names (plus ``app``). The ``worker_*`` signals
  pass the worker both as ``worker`` and, for Celery-style handlers, as ``sender``. Every signal
  handler runs isolated: an exception is logged with the plugin's name and the next handler
  still runs, so a broken handler never kills a worker or loses a task. Signal hooks do not
  support wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

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

__all__ = ["hookimpl", "hookspec"]

PROJECT = "celeriac"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ----------------------------------------------------------------------------------------------
# assembly
# ----------------------------------------------------------------------------------------------


@hookspec
def celeriac_settings() -> Sequence[Setting]:
    """Declare configuration keys a plugin reads.

    Called once per app while the config is validated, after every plugin is registered.
    Keys not declared by the kernel or a plugin are rejected as unknown.

    :return: a list of :class:`~celeriac.Setting` objects.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def celeriac_transport(url: str, scheme: str, options: Mapping[str, Any], app: Celeriac) -> Transport | None:
    """Create the transport for a broker URL.

    Called by the app the first time it needs its broker (publishing or starting a worker).

    :param url: the ``broker_url`` as configured.
    :param scheme: the URL's scheme (``memory``, ``redis``, ...), lower-case.
    :param options: ``broker_transport_options`` from the config.
    :param app: the app that asks.
    :return: a :class:`~celeriac.Transport` if this plugin serves ``scheme``, else ``None``.
    """
    raise NotImplementedError


@hookspec
def celeriac_transport_schemes() -> Sequence[str]:
    """Name the URL schemes this plugin's ``celeriac_transport`` serves.

    Called to build the error message for an unknown scheme and for ``celeriac plugins``.

    :return: a list of schemes, e.g. ``["redis", "rediss", "unix"]``.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def celeriac_result_store(url: str, scheme: str, options: Mapping[str, Any], app: Celeriac) -> ResultStore | None:
    """Create the result store for a ``result_store`` URL.

    Called by the app the first time it reads or writes a result.

    :param url: the ``result_store`` URL as configured.
    :param scheme: the URL's scheme, lower-case.
    :param options: ``result_store_options`` from the config.
    :param app: the app that asks.
    :return: a :class:`~celeriac.ResultStore` if this plugin serves ``scheme``, else ``None``.
    """
    raise NotImplementedError


@hookspec
def celeriac_result_store_schemes() -> Sequence[str]:
    """Name the URL schemes this plugin's ``celeriac_result_store`` serves.

    :return: a list of schemes.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def celeriac_pool(name: str, concurrency: int, options: Mapping[str, Any], app: Celeriac) -> Pool | None:
    """Create the execution pool called ``name``.

    Called by a worker at start.

    :param name: the pool name (``worker.pool`` / ``-P``).
    :param concurrency: how many tasks may run at once.
    :param options: ``[celeriac.worker] pool_options`` from the config.
    :param app: the app the worker runs.
    :return: a :class:`~celeriac.Pool` if this plugin provides ``name``, else ``None``.
    """
    raise NotImplementedError


@hookspec
def celeriac_pool_names() -> Sequence[str]:
    """Name the pools this plugin's ``celeriac_pool`` provides.

    :return: a list of pool names.
    """
    raise NotImplementedError


@hookspec
def celeriac_serializers() -> Sequence[Serializer]:
    """Register serializers.

    Called once per app when its serializer registry is first needed. When two plugins
    register the same name, the first registered (built-ins load first) wins.

    :return: a list of :class:`~celeriac.Serializer` instances.
    """
    raise NotImplementedError


@hookspec
def celeriac_compressors() -> Sequence[Compressor]:
    """Register compressors (``zlib``, ``bz2``, ...).

    Called once per app when its message codec is first needed.

    :return: a list of :class:`~celeriac.Compressor` instances.
    """
    raise NotImplementedError


@hookspec
def celeriac_message_filters(app: Celeriac) -> Sequence[MessageFilter]:
    """Return the filters every task message of ``app`` passes through (signing, encryption).

    Called once per app when its message codec is first needed; read ``app.conf`` to decide
    which filters are active. Outgoing messages pass the filters in the order returned (plugins
    in registration order); incoming messages pass them in reverse order.

    :param app: the configured app.
    :return: a list of :class:`~celeriac.MessageFilter` instances (empty when not configured).
    """
    raise NotImplementedError


@hookspec
def celeriac_cli_commands() -> Sequence[click.Command]:
    """Add commands to the ``celeriac`` CLI.

    Called when the CLI looks up a command that is not built in, and by ``celeriac --help``.
    Command callbacks can get the assembled app with ``celeriac.cli.get_app()``.

    :return: a list of :class:`click.Command` objects.
    """
    raise NotImplementedError


@hookspec
def celeriac_worker_options() -> Sequence[click.Option]:
    """Add options to ``celeriac worker`` (``--metrics-port 9808``).

    Called when the ``worker`` command builds its options. Each option's parameter name must
    be a setting's flat name (declare it with ``celeriac_settings``); a value given on the
    command line overrides that setting for this worker.

    :return: a list of :class:`click.Option` objects.
    """
    raise NotImplementedError


@hookspec
def celeriac_control_commands() -> Mapping[str, Callable[..., Any]]:
    """Add remote-control commands a worker answers (``celeriac control NAME``).

    Called once when a worker starts its control mailbox. Each callable is called in the
    worker process as ``command(worker, **arguments)`` and returns the JSON-able reply.

    :return: a mapping of command name to callable; built-in names cannot be replaced.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def celeriac_beat_schedule(value: Any, app: Celeriac) -> Any | None:
    """Turn a periodic task's ``schedule`` value into a schedule object (custom schedule types).

    Called by beat for each entry whose ``schedule`` is not one of the built-in forms (seconds,
    a duration string like ``"5m"``, a crontab string) and for schedule objects given in code.

    :param value: the entry's ``schedule`` as written in the config or passed in code.
    :param app: the app beat runs for.
    :return: an object with the :class:`celeriac.beat.Schedule` interface, or ``None`` if this
        plugin does not understand ``value``.
    """


@hookspec
def celeriac_configure(app: Celeriac) -> None:
    """Notice that ``app`` is configured (config validated, plugins loaded).

    Called once per app at the end of its construction; a plugin can read ``app.conf`` and
    connect signal handlers here.

    :param app: the configured app.
    """


# ----------------------------------------------------------------------------------------------
# signals: publishing (client side)
# ----------------------------------------------------------------------------------------------


@hookspec
def before_task_publish(
    app: Celeriac,
    sender: str,
    headers: dict[str, Any],
    body: tuple[Any, ...],
    properties: dict[str, Any],
    queue: str,
) -> None:
    """A task message is about to be published; ``headers`` and ``properties`` may be changed.

    Called by ``apply_async`` / ``send_task`` in the publishing process.

    :param sender: the task name.
    :param headers: the protocol-v2 headers (mutable).
    :param body: ``(args, kwargs, embed)``.
    :param properties: message properties (mutable).
    :param queue: the target queue.
    """


@hookspec
def after_task_publish(app: Celeriac, sender: str, headers: dict[str, Any], body: tuple[Any, ...], queue: str) -> None:
    """A task message was handed to the broker.

    Called by ``apply_async`` / ``send_task`` after the transport accepted the message.

    :param sender: the task name.
    :param headers: the headers as sent.
    :param body: ``(args, kwargs, embed)``.
    :param queue: the queue it went to.
    """


# ----------------------------------------------------------------------------------------------
# signals: task execution (worker side)
# ----------------------------------------------------------------------------------------------


@hookspec
def task_received(app: Celeriac, request: Request) -> None:
    """A worker received a valid task message and will run it (possibly after others).

    Called in the worker's consumer thread.

    :param request: the decoded request (id, name, args, kwargs, retries, ...).
    """


@hookspec
def task_prerun(
    app: Celeriac, sender: Task[..., Any], task_id: str, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> None:
    """A task is about to run. Called where the task runs (pool thread or child process).

    :param sender: the task (same as ``task``, Celery's convention).
    :param task_id: the task id.
    :param args: positional arguments.
    :param kwargs: keyword arguments.
    """


@hookspec
def task_postrun(
    app: Celeriac,
    sender: Task[..., Any],
    task_id: str,
    task: Task[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    retval: Any,
    state: str,
) -> None:
    """A task has run (whatever the outcome). Called where the task ran.

    :param retval: the return value, or the exception raised.
    :param state: the final state (``SUCCESS``, ``FAILURE``, ``RETRY``, ...).
    """


@hookspec
def task_success(app: Celeriac, sender: Task[..., Any], result: Any) -> None:
    """A task returned normally. Called where the task ran, before ``task_postrun``.

    :param result: the return value.
    """


@hookspec
def task_failure(
    app: Celeriac,
    sender: Task[..., Any],
    task_id: str,
    exception: BaseException,
    args: list[Any],
    kwargs: dict[str, Any],
    traceback: str,
) -> None:
    """A task raised an exception. Called where the task ran, before ``task_postrun``.

    :param exception: the exception.
    :param traceback: the formatted traceback text.
    """


@hookspec
def task_retry(app: Celeriac, sender: Task[..., Any], request: Request, reason: str) -> None:
    """A task asked to be retried; the new message has been published.

    :param request: the request of the attempt that failed.
    :param reason: why (the exception's text).
    """


@hookspec
def task_revoked(app: Celeriac, request: Request, terminated: bool, signum: int | None, expired: bool) -> None:
    """A task was revoked instead of run (revoked id, or ``expires`` passed).

    Called in the worker's consumer thread.

    :param terminated: the task was killed while running.
    :param signum: the signal used to kill it, if any.
    :param expired: it was revoked because its ``expires`` time passed.
    """


@hookspec
def task_rejected(app: Celeriac, message: Envelope, exc: BaseException) -> None:
    """A message was dead-lettered because it could not be decoded or was malformed.

    Called in the worker's consumer thread.

    :param message: the envelope as received.
    :param exc: why it was rejected.
    """


@hookspec
def task_unknown(app: Celeriac, message: Envelope, exc: BaseException, name: str, id: str) -> None:  # noqa: A002
    """A message named a task the worker does not know; it was dead-lettered.

    :param message: the envelope as received.
    :param exc: the :class:`~celeriac.NotRegistered` error.
    :param name: the task name in the message.
    :param id: the task id.
    """


# ----------------------------------------------------------------------------------------------
# signals: worker lifecycle
# ----------------------------------------------------------------------------------------------


@hookspec
def worker_init(app: Celeriac, sender: Worker, worker: Worker) -> None:
    """A worker is starting: config read, not yet connected. Called in the worker process.

    Unlike other signals, a handler that raises :class:`~celeriac.HandledError` (``ConfigError``,
    ``PluginError``) stops the worker from starting with that one-line message; the worker then
    fires ``worker_shutdown`` so handlers release what they set up.
    """


@hookspec
def worker_process_init(app: Celeriac, sender: Worker, worker: Worker) -> None:
    """A process that will run tasks is ready (each child of a process pool; the worker
    process itself, once, for in-process pools). Called in that process, before any task."""


@hookspec
def worker_process_shutdown(app: Celeriac, sender: Worker, worker: Worker, pid: int, exitcode: int) -> None:
    """A process that ran tasks is about to exit: a pool child that is recycled
    (``max_tasks_per_child``, ``max_memory_per_child``), retired (the pool shrank) or stopped;
    the worker process itself, once, when an in-process pool stops. Called in that process
    after its last task; flush buffers here. Not called for a child that is killed (``SIGKILL``,
    a hard time limit, the OOM killer).

    :param pid: the exiting process's id.
    :param exitcode: the exit code the process will use.
    """


@hookspec
def worker_ready(app: Celeriac, sender: Worker, worker: Worker) -> None:
    """A worker is consuming. Called in the worker process."""


@hookspec
def worker_shutting_down(app: Celeriac, sender: Worker, worker: Worker, sig: str, how: str, exitcode: int) -> None:
    """A worker began to shut down.

    :param sig: the signal name that triggered it (``SIGTERM``), or ``""``.
    :param how: ``"warm"`` (finish running tasks) or ``"cold"``.
    :param exitcode: the exit code the worker will use.
    """


@hookspec
def worker_shutdown(app: Celeriac, sender: Worker, worker: Worker) -> None:
    """A worker stopped: pool stopped, messages settled or handed back. Called in the worker process."""
