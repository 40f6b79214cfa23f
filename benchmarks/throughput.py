"""Throughput and latency of a real worker, side by side for several transports and pools.

Usage::

    python benchmarks/throughput.py [--broker URL ...] [--pool NAME:CONCURRENCY ...]
                                    [--tasks 5000] [--latency-samples 500]

    python benchmarks/throughput.py                                   # memory://, solo/threads
    python benchmarks/throughput.py --broker memory:// --broker redis://127.0.0.1:6379/12 \\
        --pool threads:4

Each broker is paired with a result store of the same kind (``memory://`` with an in-memory
store; other URLs with the same URL, e.g. ``redis://`` results in the same Redis), unless
``--result-store`` gives one per broker. Prints one JSON object per line (machine-readable):
one per (broker, pool) scenario, then a ``ratios`` line comparing every scenario with the
first, and with ``--ceiling`` the plain-client ceiling of each Redis/AMQP broker measured in
the same run with celeriac's figures as a fraction of it. Fields:

* ``publish_per_s`` — messages published per second by one client thread (``apply_async``);
* ``drain_per_s``   — tasks run per second by the worker from a pre-filled queue, results
  stored and messages acked (publishing not included);
* ``latency_ms``    — ``delay().get()`` round trip, one task at a time: p50, p90, p99.
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
from celeriac.states import READY_STATES
from celeriac.testing import start_worker

DEFAULT_POOLS = ["solo:1", "threads:1", "threads:4"]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def wait_all(app: Celeriac, ids: list[str], timeout: float) -> None:
    """Wait for the last id (tasks finish roughly in order), then check every id with batched
    reads, so the waiting itself costs the worker next to nothing."""
    store = app.result_store
    deadline = time.monotonic() + timeout
    store.wait(ids[-1], states=READY_STATES, timeout=timeout)
    remaining = list(ids)
    while remaining:
        found: dict[str, Any] = {}
        for start in range(0, len(remaining), 1000):
            found.update(store.get_many(remaining[start : start + 1000]))
        remaining = [i for i in remaining if i not in found or found[i].state not in READY_STATES]
        if remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(remaining)} tasks unfinished after {timeout}s")
            store.wait(remaining[-1], states=READY_STATES, timeout=max(0.0, deadline - time.monotonic()))


def run(
    broker: str,
    result_store: str,
    pool: str,
    concurrency: int,
    tasks: int,
    latency_samples: int,
    prefetch_multiplier: int,
) -> dict[str, Any]:
    name = uuid.uuid4().hex
    app = Celeriac(
        "bench",
        broker_url=f"memory://{name}" if broker == "memory://" else broker,
        result_store=f"memory://{name}" if result_store == "memory://" else result_store,
        environ={},
        set_as_current=False,
    )

    @app.task(name="bench.noop")
    def noop(i: int) -> int:
        return i

    queue = f"bench-{name}"
    app.transport.purge(queue)
    started = time.perf_counter()
    results = [noop.apply_async((i,), queue=queue) for i in range(tasks)]
    publish_seconds = time.perf_counter() - started

    with start_worker(app, pool=pool, concurrency=concurrency, queues=[queue], prefetch_multiplier=prefetch_multiplier):
        started = time.perf_counter()
        wait_all(app, [r.id for r in results], timeout=600)
        drain_seconds = time.perf_counter() - started
        latencies = []
        for i in range(latency_samples):
            begin = time.perf_counter()
            noop.apply_async((i,), queue=queue).get(timeout=10)
            latencies.append((time.perf_counter() - begin) * 1000)
    for result in results[:: max(1, tasks // 100)]:
        result.forget()
    app.close()
    return {
        "benchmark": "throughput",
        "broker": broker.split("://")[0],
        "result_store": result_store.split("://")[0],
        "pool": pool,
        "concurrency": concurrency,
        "prefetch_multiplier": prefetch_multiplier,
        "tasks": tasks,
        "publish_per_s": round(tasks / publish_seconds),
        "drain_per_s": round(tasks / drain_seconds),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
        },
    }


def default_result_store(broker: str) -> str:
    return "memory://" if broker.startswith("memory://") else broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--broker", action="append", help="broker URL (repeatable; default memory://)")
    parser.add_argument("--result-store", action="append", help="result store URL per --broker (repeatable)")
    parser.add_argument(
        "--pool", action="append", help="NAME:CONCURRENCY (repeatable; default solo:1 threads:1 threads:4)"
    )
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--prefetch-multiplier", type=int, default=1)
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the plain-client ceiling (benchmarks/redis_ceiling.py, amqp_ceiling.py) for redis/amqp "
        "brokers in this run and print celeriac's figures as a fraction of it",
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    brokers = options.broker or ["memory://"]
    stores = options.result_store or [default_result_store(b) for b in brokers]
    if len(stores) != len(brokers):
        parser.error("give one --result-store per --broker, or none")
    pools = [(p.split(":")[0], int(p.split(":")[1]) if ":" in p else 1) for p in options.pool or DEFAULT_POOLS]
    environment = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    rows = []
    for broker, store in zip(brokers, stores, strict=True):
        for pool, concurrency in pools:
            row = run(
                broker, store, pool, concurrency, options.tasks, options.latency_samples, options.prefetch_multiplier
            )
            row["environment"] = environment
            rows.append(row)
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    base = rows[0]
    label = f"{base['broker']}/{base['pool']}x{base['concurrency']}"
    ratios = {
        f"{row['broker']}/{row['pool']}x{row['concurrency']}": {
            "drain_vs_first": round(row["drain_per_s"] / base["drain_per_s"], 2),
            "publish_vs_first": round(row["publish_per_s"] / base["publish_per_s"], 2),
            "p50_latency_vs_first": round(row["latency_ms"]["p50"] / base["latency_ms"]["p50"], 2),
        }
        for row in rows
    }
    sys.stdout.write(json.dumps({"benchmark": "throughput", "baseline": label, "ratios": ratios}) + "\n")
    if options.ceiling:
        for broker in dict.fromkeys(brokers):
            ceiling = run_ceiling(broker, options.tasks, options.latency_samples)
            if ceiling is None:
                continue
            sys.stdout.write(json.dumps(ceiling) + "\n")
            scheme = broker.split("://")[0]
            for row in rows:
                if row["broker"] == scheme:
                    fraction = {
                        "benchmark": "throughput_vs_ceiling",
                        "broker": scheme,
                        "pool": f"{row['pool']}x{row['concurrency']}",
                        "drain_vs_ceiling": round(row["drain_per_s"] / ceiling["drain_per_s"], 2),
                        "publish_vs_ceiling": round(row["publish_per_s"] / ceiling["publish_per_s"], 2),
                        "p50_latency_vs_ceiling": round(row["latency_ms"]["p50"] / ceiling["p50_ms"], 2),
                    }
                    sys.stdout.write(json.dumps(fraction) + "\n")
    return 0


def run_ceiling(broker: str, messages: int, samples: int) -> dict[str, Any] | None:
    """Run the plain-client ceiling script for ``broker`` and boil its output down to one row."""
    import subprocess
    from pathlib import Path

    scheme = broker.split("://")[0]
    script = {"redis": "redis_ceiling.py", "rediss": "redis_ceiling.py", "amqp": "amqp_ceiling.py"}.get(scheme)
    if script is None:
        return None
    command = [
        sys.executable,
        str(Path(__file__).with_name(script)),
        "--url",
        broker,
        "--messages",
        str(messages),
        "--latency-samples",
        str(samples),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600).stdout
    merged: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    latency = merged.get("round_trip_ms") or merged.get("latency_ms") or {}
    return {
        "benchmark": "ceiling",
        "broker": scheme,
        "client": merged.get("client", "redis-py"),
        "publish_per_s": merged.get("push_per_s") or merged.get("publish_per_s"),
        "drain_per_s": merged.get("pop_blocking_per_s") or merged.get("drain_per_s"),
        "p50_ms": latency.get("p50"),
        "raw": merged,
    }


if __name__ == "__main__":
    sys.exit(main())
