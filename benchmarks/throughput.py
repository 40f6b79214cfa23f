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
* ``publish_batch_per_s`` — the same number of messages sent in one ``publish_many`` batch
  (``..._with_encoding_per_s``: including building them with ``apply_async``);
* ``drain_per_s``   — tasks run per second by the worker from a pre-filled queue, results
  stored and messages acked (publishing not included);
* ``latency_ms``    — ``delay().get()`` round trip, one task at a time: p50, p90, p99;
* ``cpu_us_per_task`` — CPU time per task of this process (client and worker threads: the
  benchmark runs both in one process, so they share the GIL) and, for Redis, of the server;
* ``load_average``  — the machine's 1-minute load when the scenario ended (the figures are
  only comparable between runs at a similar load).
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
        result_expires=600,  # the results of a run (20,000+) vanish from the store soon after
        environ={},
        set_as_current=False,
    )

    @app.task(name="bench.noop")
    def noop(i: int) -> int:
        return i

    queue = f"bench-{name}"
    app.transport.purge(queue)
    batch = batch_publish(app, noop, f"{queue}-batch", tasks)
    started = time.perf_counter()
    results = [noop.apply_async((i,), queue=queue) for i in range(tasks)]
    publish_seconds = time.perf_counter() - started

    server = ServerCpu(broker)
    with start_worker(app, pool=pool, concurrency=concurrency, queues=[queue], prefetch_multiplier=prefetch_multiplier):
        started, cpu, server_cpu = time.perf_counter(), time.process_time(), server.seconds()
        wait_all(app, [r.id for r in results], timeout=600)
        drain_seconds = time.perf_counter() - started
        drain_cpu = (time.process_time() - cpu, server.since(server_cpu))
        latencies = []
        cpu, server_cpu = time.process_time(), server.seconds()
        for i in range(latency_samples):
            begin = time.perf_counter()
            noop.apply_async((i,), queue=queue).get(timeout=10)
            latencies.append((time.perf_counter() - begin) * 1000)
        latency_cpu = (time.process_time() - cpu, server.since(server_cpu))
    for result in results[:: max(1, tasks // 100)]:
        result.forget()
    app.close()
    server.delete_matching(f"*{queue}*")  # the queue's streams (the interface has no delete)
    server.close()
    return {
        "benchmark": "throughput",
        "broker": broker.split("://")[0],
        "result_store": result_store.split("://")[0],
        "pool": pool,
        "concurrency": concurrency,
        "prefetch_multiplier": prefetch_multiplier,
        "tasks": tasks,
        "publish_per_s": round(tasks / publish_seconds),
        **batch,
        "drain_per_s": round(tasks / drain_seconds),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
        },
        # CPU per task (µs): this process (client + worker threads) and the broker server
        # (Redis only); steadier than wall-clock rates on a shared machine.
        "cpu_us_per_task": {
            "drain_process": round(drain_cpu[0] / tasks * 1e6, 1),
            "drain_server": _per_task(drain_cpu[1], tasks),
            "round_trip_process": round(latency_cpu[0] / max(latency_samples, 1) * 1e6, 1),
            "round_trip_server": _per_task(latency_cpu[1], latency_samples),
        },
        "load_average": os.getloadavg()[0],
    }


def batch_publish(app: Celeriac, task: Any, queue: str, count: int) -> dict[str, int]:
    """``count`` messages sent in one batch (``transport.publish_many``, one pipeline): the
    messages are built by ``apply_async`` with the transport's ``publish`` captured, then sent
    together. Rates without and with building the messages."""
    transport = app.transport
    captured: list[tuple[Any, str]] = []
    transport.publish = lambda envelope, queue, *, eta=None: captured.append((envelope, queue))  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        for i in range(count):
            task.apply_async((i,), queue=queue)
        build_seconds = time.perf_counter() - started
    finally:
        del transport.publish
    started = time.perf_counter()
    transport.publish_many(captured)
    send_seconds = time.perf_counter() - started
    transport.purge(queue)
    return {
        "publish_batch_per_s": round(count / send_seconds),
        "publish_batch_with_encoding_per_s": round(count / (build_seconds + send_seconds)),
    }


def _per_task(seconds: float | None, count: int) -> float | None:
    return None if seconds is None else round(seconds / max(count, 1) * 1e6, 1)


class ServerCpu:
    """The Redis server behind ``broker``: CPU seconds it used so far (``INFO cpu``) and key
    cleanup; does nothing (``None``) for other brokers."""

    def __init__(self, broker: str) -> None:
        self._client: Any = None
        if broker.split("://")[0] in {"redis", "rediss", "unix"}:
            import redis

            self._client = redis.Redis.from_url(broker)

    def seconds(self) -> float | None:
        if self._client is None:
            return None
        info = self._client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def since(self, start: float | None) -> float | None:
        now = self.seconds()
        return None if now is None or start is None else now - start

    def delete_matching(self, pattern: str) -> None:
        if self._client is not None:
            for key in list(self._client.scan_iter(match=pattern, count=1000)):
                self._client.delete(key)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


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
                        **{
                            f"{p}_latency_vs_ceiling": round(row["latency_ms"][p] / ceiling[f"{p}_ms"], 2)
                            for p in ("p50", "p90", "p99")
                            if ceiling.get(f"{p}_ms")
                        },
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
        "p90_ms": latency.get("p90"),
        "p99_ms": latency.get("p99"),
        "raw": merged,
    }


if __name__ == "__main__":
    sys.exit(main())
