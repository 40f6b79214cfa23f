"""Producer and consumer spans, context in the headers, one trace per workflow."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac, PluginError, chain, chord
from celeriac.testing import start_worker, wait_for
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

tracer = trace.get_tracer("tests")


@pytest.fixture
def make_app() -> Iterator[Any]:
    apps: list[Celeriac] = []

    def make(broker_url: str | None = None, **settings: Any) -> Celeriac:
        name = uuid.uuid4().hex
        settings.setdefault("otel_enabled", True)
        app = Celeriac(
            "traced",
            broker_url=broker_url or f"memory://{name}",
            result_store=f"memory://{name}",
            environ={},
            **settings,
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def only(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{name}: {[s.name for s in spans.get_finished_spans()]}"
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_producer_and_consumer_spans_nest_under_the_request(
    broker_url: str, make_app: Any, spans: InMemorySpanExporter
) -> None:
    queue = f"traced-{uuid.uuid4().hex[:8]}"
    app = make_app(broker_url, task_default_queue=queue)

    @app.task(name="traced.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with start_worker(app, queues=[queue]):
            with tracer.start_as_current_span("web request") as request_span:
                result = add.delay(2, 2)
            assert result.get(timeout=10) == 4
    finally:
        if broker_url.startswith("amqp"):
            from celeriac.plugins.amqp import _testing

            _testing.delete_queues(broker_url, queue)

    web = only(spans, "web request")
    send = only(spans, "send traced.add")
    process = only(spans, "process traced.add")
    trace_id = request_span.get_span_context().trace_id
    assert {web.context.trace_id, send.context.trace_id, process.context.trace_id} == {trace_id}
    assert parent_of(send) == web.context.span_id
    assert parent_of(process) == send.context.span_id
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    system = {"memory": "memory", "redis": "redis", "amqp": "rabbitmq"}[broker_url.partition("://")[0]]
    for span in (send, process):
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == system
        assert span.attributes["messaging.destination.name"] == queue
        assert span.attributes["messaging.message.id"] == result.id
        assert span.attributes["celeriac.task.name"] == "traced.add"
    assert send.attributes is not None and send.attributes["messaging.operation.type"] == "send"
    assert process.attributes is not None and process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["celeriac.task.state"] == "SUCCESS"
    assert process.status.status_code != StatusCode.ERROR


def test_a_chain_is_one_trace(make_app: Any, spans: InMemorySpanExporter) -> None:
    app = make_app()

    @app.task(name="traced.add")
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, concurrency=2):
        assert chain(add.s(1, 1), add.s(2), add.s(3)).delay().get(timeout=10) == 7

    sends, processes = named(spans, "send traced.add"), named(spans, "process traced.add")
    assert len(sends) == 3
    assert len(processes) == 3
    assert len({span.context.trace_id for span in sends + processes}) == 1
    roots = [span for span in sends + processes if span.parent is None]
    assert roots == [min(sends, key=lambda span: span.start_time or 0)]  # the client's send
    process_ids = {span.context.span_id for span in processes}
    assert sum(parent_of(span) in process_ids for span in sends) == 2  # later steps sent from earlier ones


def test_a_chord_body_joins_the_trace(make_app: Any, spans: InMemorySpanExporter) -> None:
    app = make_app()

    @app.task(name="traced.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="traced.total")
    def total(values: list[int]) -> int:
        return sum(values)

    with start_worker(app, concurrency=2):
        with tracer.start_as_current_span("web request") as request_span:
            result = chord([add.s(i, i) for i in range(3)], total.s()).delay()
        assert result.get(timeout=10) == 6

    trace_id = request_span.get_span_context().trace_id
    finished = spans.get_finished_spans()
    assert {span.name for span in finished} >= {"send traced.add", "process traced.total", "send traced.total"}
    assert {span.context.trace_id for span in finished} == {trace_id}


def test_exceptions_are_recorded(make_app: Any, spans: InMemorySpanExporter) -> None:
    app = make_app()

    @app.task(name="traced.fail")
    def fail() -> None:
        raise ValueError("it broke")

    with start_worker(app), pytest.raises(ValueError, match="it broke"):
        fail.delay().get(timeout=10)

    process = only(spans, "process traced.fail")
    assert process.status.status_code == StatusCode.ERROR
    assert process.status.description == "ValueError: it broke"
    events = [event for event in process.events if event.name == "exception"]
    assert len(events) == 1
    assert events[0].attributes is not None and events[0].attributes["exception.type"] == "ValueError"
    assert process.attributes is not None and process.attributes["celeriac.task.state"] == "FAILURE"


def test_a_retry_stays_in_the_trace(make_app: Any, spans: InMemorySpanExporter) -> None:
    app = make_app()

    @app.task(name="traced.flaky", bind=True, max_retries=1)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "ok"

    with start_worker(app):
        assert flaky.delay().get(timeout=10) == "ok"

    sends, processes = named(spans, "send traced.flaky"), named(spans, "process traced.flaky")
    assert len(sends) == 2
    assert len(processes) == 2
    assert len({span.context.trace_id for span in sends + processes}) == 1
    first = min(processes, key=lambda span: span.start_time or 0)
    assert [event.name for event in first.events] == ["retry"]
    assert first.attributes is not None and first.attributes["celeriac.task.state"] == "RETRY"


def test_processes_pool_runs_the_task_inside_the_consumer_span(make_app: Any, spans: InMemorySpanExporter) -> None:
    """Spans of a pool child are exported by the child; here the child reports what it sees."""
    app = make_app()

    @app.task(name="traced.context", bind=True)
    def context(self: Any) -> list[Any]:
        current = trace.get_current_span()
        return [self.request.headers.get("traceparent"), format(current.get_span_context().trace_id, "032x")]

    with start_worker(app, pool="processes", concurrency=1):
        with tracer.start_as_current_span("web request") as request_span:
            result = context.delay()
        traceparent, trace_id = result.get(timeout=20)
    expected = format(request_span.get_span_context().trace_id, "032x")
    assert trace_id == expected
    assert traceparent.split("-")[1] == expected
    assert traceparent.split("-")[2] == format(only(spans, "send traced.context").context.span_id, "016x")


class FileExporter(SpanExporter):
    """Appends finished spans to a JSON-lines file: how a pool child shows the test its spans."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as file:
            for span in spans:
                trace_id = format(span.context.trace_id, "032x") if span.context else ""
                file.write(json.dumps({"name": span.name, "trace_id": trace_id, "pid": os.getpid()}) + "\n")
        return SpanExportResult.SUCCESS


def test_a_recycled_child_flushes_its_spans_before_it_exits(
    make_app: Any, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The child batches spans (a long export delay) and is recycled right after its task: the
    span reaches the exporter only through the flush at worker_process_shutdown."""
    app = make_app(worker_max_tasks_per_child=1)
    exported = tmp_path / "spans.jsonl"

    @app.on("worker_process_init")
    def batch_spans_in_the_child() -> None:
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        provider.add_span_processor(BatchSpanProcessor(FileExporter(exported), schedule_delay_millis=600_000))

    @app.task(name="traced.pid")
    def child_pid() -> int:
        return os.getpid()

    def exported_process_span() -> dict[str, Any] | None:
        lines = exported.read_text().splitlines() if exported.exists() else []
        found = [json.loads(line) for line in lines]
        return next((span for span in found if span["name"] == "process traced.pid"), None)

    with start_worker(app, pool="processes", concurrency=1):
        with tracer.start_as_current_span("web request") as request_span:
            result = child_pid.delay()
        pid = result.get(timeout=20)
        span = wait_for(exported_process_span, message="the recycled child's span was not flushed")
    assert span["pid"] == pid != os.getpid()
    assert span["trace_id"] == format(request_span.get_span_context().trace_id, "032x")


def test_off_by_default(make_app: Any, spans: InMemorySpanExporter) -> None:
    app = make_app(otel_enabled=False)
    seen: dict[str, Any] = {}

    @app.task(name="traced.headers", bind=True)
    def headers(self: Any) -> None:
        seen.update(self.request.headers)

    with start_worker(app):
        headers.delay().get(timeout=10)
    assert "traceparent" not in seen
    assert spans.get_finished_spans() == ()


def test_otlp_exporter_without_its_package_is_one_clear_error(make_app: Any) -> None:
    pytest.importorskip("opentelemetry.sdk")
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed")
    with pytest.raises(PluginError, match=r"pip install opentelemetry-exporter-otlp-proto-http"):
        make_app(otel_exporter="otlp")


def test_console_spans_go_to_stderr_not_stdout(tmp_path: Any) -> None:
    """``exporter = "console"`` must not mix spans into a program's output (``celeriac call``)."""
    import subprocess
    import sys

    script = """
import uuid
from celeriac import Celeriac
from celeriac.testing import start_worker
name = uuid.uuid4().hex
app = Celeriac("x", broker_url=f"memory://{name}", result_store=f"memory://{name}", environ={},
               otel_enabled=True, otel_exporter="console")
@app.task(name="otel.add")
def add(x, y): return x + y
with start_worker(app):
    print("result", add.delay(1, 2).get(timeout=10))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "result 3\n"
    assert '"name": "process otel.add"' in done.stderr
    assert '"name": "send otel.add"' in done.stderr
