"""Overhead of task events, Prometheus metrics, tracing and JSON logs on a real worker.

Usage::

    python benchmarks/overhead.py [--broker URL ...] [--concurrency 4] [--tasks 3000]
                                  [--latency-samples 300] [--repeats 3] [--config NAME ...] [--json]

    python benchmarks/overhead.py                                     # memory://, threads x4
    python benchmarks/overhead.py --broker memory:// --broker redis://127.0.0.1:6379/12

For each broker (its result store of the same kind, as in ``benchmarks/throughput.py``) and
each configuration, a fresh app and ``threads`` worker in this process measure:

* ``drain_per_s``  — no-op tasks run per second from a pre-filled queue (results stored);
* ``latency_ms``   — ``delay().get()`` round trip, one task at a time: p50, p99;
* ``cpu_us_per_task`` — CPU time of this process (client and worker share it) per task,
  while draining and during the round trips: steadier than wall-clock figures under load.

Configurations (``--config``, repeatable; default: the first six):

* ``none``    — nothing on (task events off, no metrics, no tracing, no task-context logging);
* ``events``  — ``worker_send_task_events`` (every task: received, started, succeeded events);
* ``metrics`` — Prometheus metrics (``prometheus_port = 0``: a server on a free port);
* ``tracing`` — OpenTelemetry (``otel_enabled``) with an SDK provider whose batch processor
  hands spans to an exporter that drops them, so the exporter's own cost is not counted;
* ``json-logs`` — ``logging_format = "json"`` at INFO level (the worker writes two lines per
  task) to a handler that formats each record and throws the text away;
* ``all``     — all of the above;
* ``text-logs`` (extra) — the default text format with the task context at INFO, same handler:
  separates the cost of logging at INFO from that of the JSON formatter.

Every configuration runs ``--repeats`` times, interleaved (none, events, ..., none, events,
...) so a change in the machine's load hits them all alike; the figures are medians. Prints a
table with each median and its ratio to ``none`` (drain: higher is better; latency and CPU:
lower is better), and with ``--json`` one JSON object per line instead: one per (broker,
configuration) with the medians, the raw runs and the load average, then a ``ratios`` line
per broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celeriac import Celeriac
from celeriac.testing import start_worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import ServerCpu, default_result_store, percentile, wait_all

CONFIGS: dict[str, dict[str, Any]] = {
    "none": {},
    "events": {"worker_send_task_events": True},
    "metrics": {"prometheus_port": 0, "prometheus_address": "127.0.0.1"},
    "tracing": {"otel_enabled": True},
    "json-logs": {"logging_format": "json", "logging_task_context": True},
    "all": {
        "worker_send_task_events": True,
        "prometheus_port": 0,
        "prometheus_address": "127.0.0.1",
        "otel_enabled": True,
        "logging_format": "json",
        "logging_task_context": True,
    },
    "text-logs": {"logging_format": "text", "logging_task_context": True},
}
DEFAULT_CONFIGS = ["none", "events", "metrics", "tracing", "json-logs", "all"]
_LOGS = {"json-logs", "all", "text-logs"}


class DiscardingHandler(logging.Handler):
    """Formats every record (as a handler writing to a file would) and drops the text."""

    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.records += 1


class DroppingExporter:
    """A span exporter that counts spans and drops them (no exporter cost in the figures)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_exporter: DroppingExporter | None = None


def tracing_exporter() -> DroppingExporter:
    """Set the global TracerProvider up once (the otel plugin uses whatever provider is set)."""
    global _exporter
    if _exporter is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        _exporter = DroppingExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_exporter, max_queue_size=1 << 20))  # type: ignore[arg-type]
        trace.set_tracer_provider(provider)
    return _exporter


def run(
    broker: str, result_store: str, config: str, concurrency: int, tasks: int, latency_samples: int
) -> dict[str, Any]:
    settings = CONFIGS[config]
    name = uuid.uuid4().hex
    if settings.get("otel_enabled"):
        tracing_exporter()
    root = logging.getLogger()
    handler = DiscardingHandler()
    saved = root.level, root.handlers[:]
    if config in _LOGS:  # only the discarding handler, so the logging plugin formats nothing else
        root.handlers = [handler]
        root.setLevel(logging.INFO)
    app = Celeriac(
        "bench",
        broker_url=f"memory://{name}" if broker == "memory://" else broker,
        result_store=f"memory://{name}" if result_store == "memory://" else result_store,
        result_expires=600,
        environ={},
        set_as_current=False,
        **{"logging_task_context": False, **settings},
    )

    @app.task(name="bench.noop")
    def noop(i: int) -> int:
        return i

    queue = f"bench-overhead-{name}"
    spans_before = _exporter.spans if _exporter is not None else 0
    results = [noop.apply_async((i,), queue=queue) for i in range(tasks)]
    server = ServerCpu(broker)
    try:
        with start_worker(app, pool="threads", concurrency=concurrency, queues=[queue], prefetch_multiplier=1):
            started, cpu = time.perf_counter(), time.process_time()
            wait_all(app, [r.id for r in results], timeout=600)
            drain_seconds = time.perf_counter() - started
            drain_cpu = time.process_time() - cpu
            latencies = []
            cpu = time.process_time()
            for i in range(latency_samples):
                begin = time.perf_counter()
                result = noop.apply_async((i,), queue=queue)
                result.get(timeout=10)
                results.append(result)
                latencies.append((time.perf_counter() - begin) * 1000)
            latency_cpu = time.process_time() - cpu
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        for result in results:  # every result this run stored (they would expire in 10 minutes)
            result.forget()
        app.close()
        server.delete_matching(f"*{queue}*")
        server.delete_matching(f"*{app.conf.event_channel}*")
        server.close()
    if _exporter is not None and settings.get("otel_enabled"):
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    return {
        "drain_per_s": round(tasks / drain_seconds),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "drain_cpu_us_per_task": round(drain_cpu / tasks * 1e6, 1),
        "round_trip_cpu_us_per_task": round(latency_cpu / max(latency_samples, 1) * 1e6, 1),
        # evidence that the feature was on: log records formatted, spans exported
        "log_records": handler.records,
        "spans": (_exporter.spans - spans_before) if _exporter is not None else 0,
        "load_average": os.getloadavg()[0],
    }


FIELDS = ("drain_per_s", "p50_ms", "p99_ms", "drain_cpu_us_per_task", "round_trip_cpu_us_per_task")


def summarize(broker: str, config: str, runs: list[dict[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    return {
        "benchmark": "overhead",
        "broker": broker.split("://")[0],
        "pool": "threads",
        "concurrency": options.concurrency,
        "config": config,
        "tasks": options.tasks,
        "latency_samples": options.latency_samples,
        "repeats": len(runs),
        **{field: round(statistics.median(run[field] for run in runs), 3) for field in FIELDS},
        "runs": runs,
        "load_average": os.getloadavg()[0],
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    base = rows[0]
    return {row["config"]: {field: round(row[field] / base[field], 2) for field in FIELDS} for row in rows}


def table(broker: str, rows: list[dict[str, Any]]) -> str:
    relative = ratios(rows)
    header = f"{'config':<10} {'drain/s':>14} {'p50 ms':>14} {'p99 ms':>14} {'cpu us/task':>16}"
    lines = [f"broker {broker}, threads x{rows[0]['concurrency']}, medians of {rows[0]['repeats']}", header]
    for row in rows:
        r = relative[row["config"]]
        lines.append(
            f"{row['config']:<10} {row['drain_per_s']:>7.0f} ({r['drain_per_s']:.2f})"
            f" {row['p50_ms']:>7.3f} ({r['p50_ms']:.2f}) {row['p99_ms']:>7.3f} ({r['p99_ms']:.2f})"
            f" {row['drain_cpu_us_per_task']:>9.1f} ({r['drain_cpu_us_per_task']:.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--broker", action="append", help="broker URL (repeatable; default memory://)")
    parser.add_argument("--result-store", action="append", help="result store URL per --broker (repeatable)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads of the worker's pool (default 4)")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    parser.add_argument(
        "--config",
        action="append",
        choices=list(CONFIGS),
        help=f"configuration to run (repeatable; default {' '.join(DEFAULT_CONFIGS)}); 'none' always runs first",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of the table")
    options = parser.parse_args(argv)
    if options.tasks < 1 or options.latency_samples < 1 or options.repeats < 1:
        parser.error("--tasks, --latency-samples and --repeats must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    brokers = options.broker or ["memory://"]
    stores = options.result_store or [default_result_store(b) for b in brokers]
    if len(stores) != len(brokers):
        parser.error("give one --result-store per --broker, or none")
    configs = ["none", *[c for c in dict.fromkeys(options.config or DEFAULT_CONFIGS) if c != "none"]]
    environment = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    out = sys.stdout
    if not options.json:
        out.write(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    for broker, store in zip(brokers, stores, strict=True):
        runs: dict[str, list[dict[str, Any]]] = {config: [] for config in configs}
        for _ in range(options.repeats):
            for config in configs:
                runs[config].append(
                    run(broker, store, config, options.concurrency, options.tasks, options.latency_samples)
                )
        rows = [summarize(broker, config, runs[config], options) for config in configs]
        if options.json:
            for row in rows:
                out.write(json.dumps({**row, "environment": environment}) + "\n")
            out.write(
                json.dumps(
                    {
                        "benchmark": "overhead",
                        "broker": broker.split("://")[0],
                        "baseline": "none",
                        "ratios": ratios(rows),
                    }
                )
                + "\n"
            )
        else:
            out.write(table(broker, rows) + "\n")
        out.flush()
    if not options.json:
        out.write(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
