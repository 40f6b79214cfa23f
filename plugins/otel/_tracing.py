"""Producer and consumer spans on the signal hooks; W3C trace context in the message headers."""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any

import celeriac
from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "end_consumer_span",
    "end_producer_span",
    "flush",
    "record_failure",
    "record_retry",
    "remember_received",
    "set_up_provider",
    "start_consumer_span",
    "start_producer_span",
]

#: Spans and contexts kept per task id are bounded, so a publish that never completes (or a
#: worker that receives many tasks) cannot grow memory without limit.
_MAX_KEPT = 10_000
_SYSTEMS = {"amqp": "rabbitmq", "amqps": "rabbitmq", "rediss": "redis", "unix": "redis"}
_CARRIED = ("traceparent", "tracestate", "baggage")

_tracer = trace.get_tracer("celeriac", celeriac.__version__)
_lock = threading.Lock()
#: task id -> producer span, between before_task_publish and after_task_publish.
_producing: collections.OrderedDict[str, Span] = collections.OrderedDict()
#: task id -> (consumer span, context token), between task_prerun and task_postrun.
_running: dict[str, tuple[Span, object]] = {}
#: task id -> trace headers of a received message (the parent of what its worker sends for it
#: outside the task, such as a chord's body).
_received: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()
_provider_set_up = False


def set_up_provider(exporter: str, service_name: str) -> None:
    """Install a global SDK TracerProvider exporting to ``exporter`` (once per process)."""
    global _provider_set_up
    if _provider_set_up:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    span_exporter: SpanExporter
    if exporter == "console":  # stderr: stdout belongs to the program (``celeriac call`` prints results there)
        span_exporter = ConsoleSpanExporter(out=sys.stderr)
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise celeriac.PluginError(
                "[celeriac.otel] exporter = 'otlp' needs the OTLP exporter: "
                "pip install opentelemetry-exporter-otlp-proto-http"
            ) from None
        span_exporter = OTLPSpanExporter()
    with _lock:
        first = not _provider_set_up
        _provider_set_up = True
    if not first:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)


def flush() -> None:
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush()


def _system(app: celeriac.Celeriac) -> str:
    scheme = str(app.conf.broker_url).partition("://")[0].lower()
    return _SYSTEMS.get(scheme, scheme)


def _keep(store: collections.OrderedDict[str, Any], key: str, value: Any) -> Any:
    """Add to a bounded store; returns the evicted value, if any (call with ``_lock`` held)."""
    store[key] = value
    if len(store) > _MAX_KEPT:
        return store.popitem(last=False)[1]
    return None


# -- publishing -----------------------------------------------------------------------------------


def start_producer_span(app: celeriac.Celeriac, name: str, headers: dict[str, Any], queue: str) -> None:
    task_id = str(headers.get("id") or "")
    parent: context.Context | None = None
    if not trace.get_current_span().get_span_context().is_valid:
        # Sent outside any span (a chord's body, sent by the worker's settler): continue the
        # trace of the task it follows.
        with _lock:
            carrier = _received.get(str(headers.get("parent_id") or ""))
        if carrier is not None:
            parent = propagate.extract(carrier)
    attributes: dict[str, Any] = {
        "messaging.system": _system(app),
        "messaging.destination.name": queue,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": task_id,
        "messaging.message.conversation_id": str(headers.get("root_id") or task_id),
        "celeriac.task.name": name,
        "celeriac.task.retries": int(headers.get("retries") or 0),
    }
    if headers.get("parent_id"):
        attributes["celeriac.task.parent_id"] = str(headers["parent_id"])
    span = _tracer.start_span(f"send {name}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes)
    for key in _CARRIED:  # a retry or chain step copies its parent's headers: replace them
        headers.pop(key, None)
    propagate.inject(headers, context=trace.set_span_in_context(span))
    with _lock:
        evicted = _keep(_producing, task_id, span)
    if evicted is not None:
        evicted.set_status(Status(StatusCode.ERROR, "publish did not complete"))
        evicted.end()


def end_producer_span(headers: dict[str, Any]) -> None:
    with _lock:
        span = _producing.pop(str(headers.get("id") or ""), None)
    if span is not None:
        span.end()


# -- in the worker --------------------------------------------------------------------------------


def remember_received(request: celeriac.Request) -> None:
    carrier = {key: str(request.headers[key]) for key in _CARRIED if key in request.headers}
    if carrier:
        with _lock:
            _keep(_received, request.id, carrier)


def start_consumer_span(app: celeriac.Celeriac, task: celeriac.Task[..., Any], task_id: str) -> None:
    request = task.request
    carrier = {key: str(request.headers[key]) for key in _CARRIED if key in request.headers}
    parent = propagate.extract(carrier) if carrier else None
    attributes: dict[str, Any] = {
        "messaging.system": _system(app),
        "messaging.destination.name": request.queue or "",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": task_id,
        "messaging.message.conversation_id": request.root_id or task_id,
        "celeriac.task.name": task.name,
        "celeriac.task.retries": request.retries,
    }
    if request.parent_id:
        attributes["celeriac.task.parent_id"] = request.parent_id
    if request.hostname:
        attributes["celeriac.worker.hostname"] = request.hostname
    if request.delivery_count > 1:
        attributes["messaging.message.delivery_count"] = request.delivery_count
    span = _tracer.start_span(f"process {task.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes)
    token = context.attach(trace.set_span_in_context(span))
    with _lock:
        _running[task_id] = (span, token)


def record_failure(task_id: str, exception: BaseException) -> None:
    with _lock:
        found = _running.get(task_id)
    if found is not None:
        span = found[0]
        span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))


def record_retry(task_id: str, reason: str) -> None:
    with _lock:
        found = _running.get(task_id)
    if found is not None:
        found[0].add_event("retry", {"celeriac.retry.reason": reason})


def end_consumer_span(task_id: str, state: str) -> None:
    with _lock:
        found = _running.pop(task_id, None)
    if found is None:
        return
    span, token = found
    span.set_attribute("celeriac.task.state", state)
    span.end()
    context.detach(token)  # type: ignore[arg-type]
