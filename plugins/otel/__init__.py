"""OpenTelemetry traces across client and worker (extra ``otel``: opentelemetry-api and -sdk).

::

    [celeriac.otel]
    enabled = true              # or CELERIAC_OTEL_ENABLED=1; off by default
    exporter = "otlp"           # optional: set up a TracerProvider exporting to "otlp" or "console"
    service_name = "billing"    # service.name of that provider (default: "celeriac")

With ``enabled`` the plugin creates spans through the global TracerProvider, so an app that
already configures OpenTelemetry (``trace.set_tracer_provider(...)``) gets them in its own
pipeline. Only when ``exporter`` is set does the plugin set a provider up itself (once per
process): ``otlp`` needs ``pip install opentelemetry-exporter-otlp-proto-http`` and reads the
usual ``OTEL_EXPORTER_OTLP_*`` variables; ``console`` prints spans to stderr (stdout stays the program's own).

Spans:

* **producer** ``send <task name>`` at ``before_task_publish`` (ended at
  ``after_task_publish``), a child of whatever span is current where the task is sent (a web
  request, or the task that sends it); its W3C trace context (``traceparent``,
  ``tracestate``) goes into the message headers;
* **consumer** ``process <task name>`` around the execution (``task_prerun`` to
  ``task_postrun``), a child of the producer span taken from the message headers; it is the
  current span while the task runs, so tasks sent from the task, the next step of a chain
  and callbacks are its children. A chord's body (sent by the worker once the header tasks
  are done) is parented on the last header task's producer span. Exceptions are recorded on
  the span and set its status to error.

Attributes follow OpenTelemetry's messaging conventions: ``messaging.system`` (``rabbitmq``,
``redis``, ``sqlite``, ``memory``), ``messaging.destination.name`` (the queue),
``messaging.message.id`` (the task id), ``messaging.message.conversation_id`` (the root id),
``messaging.operation.type`` / ``messaging.operation.name`` (``send`` / ``process``), plus
``celeriac.task.name``, ``celeriac.task.retries``, ``celeriac.task.parent_id`` and, on the
consumer, ``celeriac.task.state`` and ``celeriac.worker.hostname``.

Group members sent outside any span are separate traces; send the group inside a span (as a
web request handler does) to tie them together.

Spans a ``processes`` pool child ends are exported by that child's provider; the plugin
flushes it at ``worker_process_shutdown``, right before the child exits (recycled by
``max_tasks_per_child`` / ``max_memory_per_child``, retired, or stopped), so a batching span
processor loses nothing. A child that is killed (``SIGKILL``, hard time limit) cannot flush.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import celeriac

__all__ = [
    "after_task_publish",
    "before_task_publish",
    "celeriac_configure",
    "celeriac_settings",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_retry",
    "worker_process_shutdown",
    "worker_shutdown",
]

_MISSING_EXTRA = "the otel plugin needs the 'otel' extra: pip install 'celeriac[otel]'"


def _setting(name: str, kind: str, default: Any, doc: str, **extra: Any) -> celeriac.Setting:
    return celeriac.Setting(f"otel_{name}", kind, default, doc, section="otel", **extra)


SETTINGS = (
    _setting("enabled", "bool", False, "Trace publishing and running tasks with OpenTelemetry (extra 'otel')."),
    _setting(
        "exporter",
        "str",
        None,
        "Set up a TracerProvider exporting to `otlp` or `console`; unset: use the app's own provider.",
        choices=("otlp", "console"),
    ),
    _setting("service_name", "str", "celeriac", "service.name of the TracerProvider set up for `exporter`."),
)


@celeriac.hookimpl
def celeriac_settings() -> Sequence[celeriac.Setting]:
    """The ``[celeriac.otel]`` settings."""
    return SETTINGS


def _active(app: celeriac.Celeriac) -> Any:
    """The tracing module when ``app`` traces, else None (opentelemetry is not imported)."""
    if not app.conf.otel_enabled:
        return None
    from celeriac.plugins.otel import _tracing as module

    return module


@celeriac.hookimpl
def celeriac_configure(app: celeriac.Celeriac) -> None:
    """Check the extra (one-line error at start) and set up the exporter when asked."""
    if not app.conf.otel_enabled:
        return
    try:
        import opentelemetry.trace  # noqa: F401 - only to give a clear error when the extra is missing
    except ImportError:
        raise celeriac.PluginError(_MISSING_EXTRA) from None
    from celeriac.plugins.otel import _tracing as module

    if app.conf.otel_exporter:
        module.set_up_provider(app.conf.otel_exporter, app.conf.otel_service_name)


@celeriac.hookimpl
def before_task_publish(
    app: celeriac.Celeriac, sender: str, headers: dict[str, Any], properties: dict[str, Any], queue: str
) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.start_producer_span(app, sender, headers, queue)


@celeriac.hookimpl
def after_task_publish(app: celeriac.Celeriac, headers: dict[str, Any]) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.end_producer_span(headers)


@celeriac.hookimpl
def task_received(app: celeriac.Celeriac, request: celeriac.Request) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.remember_received(request)


@celeriac.hookimpl
def task_prerun(app: celeriac.Celeriac, task: celeriac.Task[..., Any], task_id: str) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.start_consumer_span(app, task, task_id)


@celeriac.hookimpl
def task_failure(app: celeriac.Celeriac, task_id: str, exception: BaseException) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.record_failure(task_id, exception)


@celeriac.hookimpl
def task_retry(app: celeriac.Celeriac, request: celeriac.Request, reason: str) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.record_retry(request.id, reason)


@celeriac.hookimpl
def task_postrun(app: celeriac.Celeriac, task_id: str, state: str) -> None:
    tracing = _active(app)
    if tracing is not None:
        tracing.end_consumer_span(task_id, state)


@celeriac.hookimpl
def worker_process_shutdown(app: celeriac.Celeriac) -> None:
    """Flush the spans a pool child (or the worker, for in-process pools) still buffers: the
    child exits without running ``atexit`` handlers, where the SDK would flush."""
    tracing = _active(app)
    if tracing is not None:
        tracing.flush()


@celeriac.hookimpl
def worker_shutdown(app: celeriac.Celeriac) -> None:
    """Flush spans the provider still buffers before the worker process exits."""
    tracing = _active(app)
    if tracing is not None:
        tracing.flush()
