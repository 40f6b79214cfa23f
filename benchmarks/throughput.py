"""Throughput and latency of a worker, side by side for several pools, on one transport.

Usage::

    python benchmarks/throughput.py [--tasks 5000] [--latency-samples 500] [--broker memory://]

Prints one JSON object per line (machine-readable), one per (pool, concurrency) scenario, then
a ``ratios`` line comparing every scenario with the first one (solo). Fields:

* ``publish_per_s``   — messages published per second by one client thread;
* ``drain_per_s``     — tasks run per second by the worker on a pre-filled queue (publish not
  included), results stored and messages acked;
* ``latency_ms``      — ``delay().get()`` round trip for one task at a time: p50, p90, p99.
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
from typing import Any

from celeriac import Celeriac
from celeriac.testing import start_worker, wait_for

SCENARIOS = [("solo", 1), ("threads", 1), ("threads", 4)]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(pool: str, concurrency: int, tasks: int, latency_samples: int, broker: str) -> dict[str, Any]:
    name = uuid.uuid4().hex
    broker_url = f"memory://{name}" if broker == "memory://" else broker
    app = Celeriac("bench", broker_url=broker_url, result_store=f"memory://{name}", environ={}, set_as_current=False)

    @app.task(name="bench.add")
    def add(x: int, y: int) -> int:
        return x + y

    queue = f"bench-{name}"
    started = time.perf_counter()
    results = [add.apply_async((i, i), queue=queue) for i in range(tasks)]
    publish_seconds = time.perf_counter() - started

    with start_worker(app, pool=pool, concurrency=concurrency, queues=[queue]):
        started = time.perf_counter()
        last = results[-1]
        store = app.result_store
        wait_for(
            lambda: store.get(last.id) is not None and app.transport.queue_length(queue) == 0,
            timeout=300,
            interval=0.001,
        )
        for result in results:
            result.get(timeout=60)
        drain_seconds = time.perf_counter() - started
        latencies = []
        for i in range(latency_samples):
            begin = time.perf_counter()
            add.apply_async((i, 1), queue=queue).get(timeout=10)
            latencies.append((time.perf_counter() - begin) * 1000)
    app.close()
    return {
        "benchmark": "throughput",
        "transport": broker.split("://")[0],
        "pool": pool,
        "concurrency": concurrency,
        "tasks": tasks,
        "publish_per_s": round(tasks / publish_seconds),
        "drain_per_s": round(tasks / drain_seconds),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--broker", default="memory://")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    environment = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    rows = []
    for pool, concurrency in SCENARIOS:
        row = run(pool, concurrency, options.tasks, options.latency_samples, options.broker)
        row["environment"] = environment
        rows.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    base = rows[0]
    ratios = {
        f"{row['pool']}x{row['concurrency']}": {
            "drain_vs_solo": round(row["drain_per_s"] / base["drain_per_s"], 2),
            "p50_latency_vs_solo": round(row["latency_ms"]["p50"] / base["latency_ms"]["p50"], 2),
        }
        for row in rows
    }
    sys.stdout.write(json.dumps({"benchmark": "throughput", "ratios": ratios}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
