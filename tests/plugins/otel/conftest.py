"""An in-memory span exporter on the process's TracerProvider (set once per process), cleared
around each test; brokers for the tracing tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

REDIS_DB = 8
_exporter: InMemorySpanExporter | None = None


def _session_exporter() -> InMemorySpanExporter:
    global _exporter
    if _exporter is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
    return _exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter every finished span goes to; empty at the start of the test."""
    exporter = _session_exporter()
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture(params=["memory", "redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield f"memory://{uuid.uuid4().hex}"
    elif request.param == "redis":
        from celeriac.plugins.redis import _testing

        url = _testing.server_url(REDIS_DB)
        _testing.require_server(url)
        prefix = f"test-otel-{uuid.uuid4().hex[:12]}:"
        yield f"{url}?global_keyprefix={prefix}"
        _testing.delete_keys(url, prefix)
    else:
        from celeriac.plugins.amqp import _testing as amqp_testing

        with amqp_testing.broker_lock():
            amqp_testing.require_server()
            yield amqp_testing.server_url()
