"""The execution pools side by side: the same workloads on solo, threads, processes and asyncio.

Usage::

    python benchmarks/pools.py [--broker memory://] [--scale 1.0] [--only noop,cpu,io,sleepers] [--repeat 1]

Every run goes through a real worker (``celeriac.testing.start_worker``) on ``--broker``
(default: the in-memory transport and result store; give a ``redis://`` URL to include a real
broker). The worker is started and warmed up first; the timed part publishes the batch and waits
for every result. Workloads:

* ``noop`` -- tasks that return at once, one slot: the per-task overhead (latency) of each pool
  (``asyncio`` twice: a plain task, run in its thread executor, and an ``async def`` one);
  ``noop-c2`` -- the same on two slots (threads and processes), where round trips overlap;
* ``cpu`` -- pure-Python loops (~30 ms each) on 2 slots: processes should win on 2 cores;
* ``io`` -- tasks that sleep 50 ms (``time.sleep``; ``asyncio.sleep`` for asyncio), with the
  concurrency each pool is meant for: threads/asyncio should win;
* ``sleepers`` -- 10,000 ``async def`` tasks each awaiting 1 s, all in flight in one asyncio worker.

With ``--repeat N`` the whole plan runs N times (interleaved, so a burst of load on a shared
machine hits every pool alike); each row is the run with the median time and lists every
run's ``per_task_us`` under ``runs_us``.

Prints one JSON object per measurement, then one ``summary`` object with the ratios
(``processes_minus_threads_noop_us``, ``cpu_speedup_processes_over_threads``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from typing import Any

from celeriac import Celeriac
from celeriac.testing import start_worker


def build_app(broker: str) -> Celeriac:
    name = uuid.uuid4().hex[:8]
    if broker.startswith("memory://"):
        url = f"memory://bench-{name}"
    elif broker.startswith("redis://"):
        url = f"{broker}{'&' if '?' in broker else '?'}global_keyprefix=bench-{name}:"
    else:
        url = broker
    app = Celeriac("bench", environ={}, broker_url=url, result_store=url, worker_log_level="WARNING")

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    @app.task(name="bench.anoop")
    async def anoop() -> None:
        return None

    @app.task(name="bench.cpu")
    def cpu(n: int) -> int:
        total = 0
        for i in range(n):
            total += i * i % 7
        return total

    @app.task(name="bench.io")
    def io(seconds: float) -> None:
        time.sleep(seconds)

    @app.task(name="bench.aio")
    async def aio(seconds: float) -> None:
        await asyncio.sleep(seconds)

    return app


def measure(
    broker: str, pool: str, concurrency: int, task_name: str, args: tuple[Any, ...], count: int, workload: str
) -> dict[str, Any]:
    app = build_app(broker)
    task = app.tasks[task_name]
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        with start_worker(app, pool=pool, concurrency=concurrency, queues=[queue], prefetch_multiplier=4):
            warm = [task.apply_async(args, queue=queue) for _ in range(min(count, 2 * concurrency, 200))]
            for result in warm:
                result.get(timeout=120)
            started = time.perf_counter()
            results = [task.apply_async(args, queue=queue) for _ in range(count)]
            for result in results:
                result.get(timeout=600)
            elapsed = time.perf_counter() - started
    finally:
        app.close()
    return {
        "workload": workload,
        "pool": pool,
        "task": task_name,
        "concurrency": concurrency,
        "tasks": count,
        "seconds": round(elapsed, 4),
        "per_task_us": round(elapsed / count * 1e6, 1),
        "tasks_per_s": round(count / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="memory://", help="broker and result store URL (memory:// or redis://)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the task counts")
    parser.add_argument("--only", default="noop,cpu,io,sleepers", help="comma-separated workloads")
    parser.add_argument("--repeat", type=int, default=1, help="run every measurement N times; report the median")
    options = parser.parse_args()
    only = set(options.only.split(","))

    def scaled(n: int) -> int:
        return max(1, int(n * options.scale))

    print(
        json.dumps(
            {
                "benchmark": "pools",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "broker": options.broker,
                "scale": options.scale,
            }
        ),
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    plan: list[tuple[str, str, int, str, tuple[Any, ...], int]] = []
    if "noop" in only:
        plan += [
            ("noop", "solo", 1, "bench.noop", (), scaled(2000)),
            ("noop", "threads", 1, "bench.noop", (), scaled(2000)),
            ("noop", "processes", 1, "bench.noop", (), scaled(2000)),
            ("noop", "asyncio", 1, "bench.noop", (), scaled(2000)),
            ("noop", "asyncio", 1, "bench.anoop", (), scaled(2000)),
            ("noop-c2", "threads", 2, "bench.noop", (), scaled(2000)),
            ("noop-c2", "processes", 2, "bench.noop", (), scaled(2000)),
        ]
    if "cpu" in only:
        plan += [
            ("cpu", pool, 1 if pool == "solo" else 2, "bench.cpu", (300_000,), scaled(16))
            for pool in ("solo", "threads", "processes", "asyncio")
        ]
    if "io" in only:
        plan += [
            ("io", "solo", 1, "bench.io", (0.05,), scaled(40)),
            ("io", "threads", 32, "bench.io", (0.05,), scaled(400)),
            ("io", "processes", 4, "bench.io", (0.05,), scaled(80)),
            ("io", "asyncio", 500, "bench.aio", (0.05,), scaled(400)),
        ]
    if "sleepers" in only:
        plan.append(("sleepers", "asyncio", scaled(10_000), "bench.aio", (1.0,), scaled(10_000)))
    if options.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {options.repeat}")
    runs: list[list[dict[str, Any]]] = [[] for _ in plan]
    for _ in range(options.repeat):
        for index, (workload, pool, concurrency, task_name, args, count) in enumerate(plan):
            runs[index].append(measure(options.broker, pool, concurrency, task_name, args, count, workload))
    for measured in runs:
        ordered = sorted(measured, key=lambda row: row["seconds"])
        row = dict(ordered[len(ordered) // 2])
        if options.repeat > 1:
            row["runs_us"] = [one["per_task_us"] for one in measured]
        rows.append(row)
        print(json.dumps(row), flush=True)

    def per_task(workload: str, pool: str, task: str | None = None) -> float | None:
        for row in rows:
            if row["workload"] == workload and row["pool"] == pool and (task is None or row["task"] == task):
                return float(row["per_task_us"])
        return None

    def throughput(workload: str, pool: str) -> float | None:
        found = per_task(workload, pool)
        return None if found is None else 1e6 / found

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else round(a / b, 2)

    noop_threads, noop_processes = per_task("noop", "threads"), per_task("noop", "processes")
    summary = {
        "summary": True,
        "processes_minus_threads_noop_us": (
            None if noop_threads is None or noop_processes is None else round(noop_processes - noop_threads, 1)
        ),
        "processes_minus_threads_noop_c2_us": (
            None
            if per_task("noop-c2", "threads") is None or per_task("noop-c2", "processes") is None
            else round(per_task("noop-c2", "processes") - per_task("noop-c2", "threads"), 1)  # type: ignore[operator]
        ),
        "asyncio_native_minus_threads_noop_us": (
            None
            if noop_threads is None or per_task("noop", "asyncio", "bench.anoop") is None
            else round(per_task("noop", "asyncio", "bench.anoop") - noop_threads, 1)  # type: ignore[operator]
        ),
        "cpu_speedup_processes_over_threads": ratio(throughput("cpu", "processes"), throughput("cpu", "threads")),
        "cpu_speedup_processes_over_solo": ratio(throughput("cpu", "processes"), throughput("cpu", "solo")),
        "io_speedup_asyncio_over_processes": ratio(throughput("io", "asyncio"), throughput("io", "processes")),
        "io_speedup_threads_over_processes": ratio(throughput("io", "threads"), throughput("io", "processes")),
        "sleepers_seconds": next((row["seconds"] for row in rows if row["workload"] == "sleepers"), None),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
