"""Drain rate and round trip of worker *processes* sharing one SQLite broker file.

Usage::

    python benchmarks/sqlite_multiprocess.py [--tasks 5000] [--workers 2] [--pool threads:4]
                                             [--latency-samples 300] [--layout two-files --layout one-file]

For each layout (``two-files``: broker and results in separate files; ``one-file``: both in one
file) it starts ``--workers`` ``celeriac worker`` processes held at ``worker_init`` until the
queue is filled, then prints one JSON line:

* ``publish_per_s`` — ``send_task`` calls per second from this (client) process, no consumer;
* ``drain_per_s``   — no-op tasks per second run by all workers on the pre-filled queue, from
  the moment they are released until every result is stored (results stored and messages acked);
* ``latency_ms``    — ``send_task(...).get()`` round trip for one task at a time, client and
  workers in different processes: p50, p90, p99.

On the 2-core development machine (Python 3.11, SQLite 3.40, two workers ``threads:4``, 5,000
tasks): drain 4,500-5,400 tasks/s, publish 10,000-12,500/s, round trip p50 1.3-1.5 ms, p99
3.6-5.6 ms, for either layout (the figures are also in ``celeriac.plugins.sqlite``'s docstring).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celeriac import Celeriac

TASKS_MODULE = """
from celeriac import shared_task


@shared_task(name="bench.noop")
def noop(number):
    return number
"""

PLUGIN_MODULE = '''
import os
import time
from pathlib import Path

import celeriac


@celeriac.hookimpl
def worker_init(app, worker):
    """Report ready, then wait for the go file so every worker starts on a full queue."""
    here = Path(os.environ["BENCH_DIR"])
    (here / f"ready-{os.getpid()}").touch()
    while not (here / "go").exists():
        time.sleep(0.002)
'''

CONFIG = """
[celeriac]
imports = ["bench_sqlite_tasks"]
plugins = ["bench_sqlite_plugin"]
broker_url = "{broker}"
result_store = "{results}"

[celeriac.worker]
pool = "{pool}"
concurrency = {concurrency}
queues = ["bench"]
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out waiting for {what}")
        time.sleep(0.005)


def run(layout: str, workers: int, pool: str, concurrency: int, tasks: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="celeriac-sqlite-bench-") as directory:
        here = Path(directory)
        broker = f"sqlite:///{here / 'broker.db'}"
        results = broker if layout == "one-file" else f"sqlite:///{here / 'results.db'}"
        (here / "bench_sqlite_tasks.py").write_text(TASKS_MODULE)
        (here / "bench_sqlite_plugin.py").write_text(PLUGIN_MODULE)
        (here / "celeriac.toml").write_text(
            CONFIG.format(broker=broker, results=results, pool=pool, concurrency=concurrency)
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
        env.update(PYTHONPATH=directory, BENCH_DIR=directory)
        app = Celeriac("bench-client", broker_url=broker, result_store=results, environ={}, set_as_current=False)
        app.transport  # noqa: B018 - create the tables before the workers race to
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "celeriac", "worker", "-l", "warning"],
                cwd=directory,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(here / f"worker-{index}.log", "w"),  # noqa: SIM115 - closed with the process
            )
            for index in range(workers)
        ]
        try:
            wait_until(lambda: len(list(here.glob("ready-*"))) == workers, 60, "workers to start")
            started = time.perf_counter()
            sent = [app.send_task("bench.noop", [number], queue="bench") for number in range(tasks)]
            publish_seconds = time.perf_counter() - started

            started = time.perf_counter()
            (here / "go").touch()
            pending = [result.id for result in sent]
            store = app.result_store

            def drained() -> bool:
                nonlocal pending
                found = store.get_many(pending)
                pending = [task_id for task_id in pending if task_id not in found]
                return not pending

            wait_until(drained, 600, "the queue to drain")
            drain_seconds = time.perf_counter() - started

            latencies = []
            for number in range(samples):
                begin = time.perf_counter()
                app.send_task("bench.noop", [number], queue="bench").get(timeout=30)
                latencies.append((time.perf_counter() - begin) * 1000)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            app.close()
    return {
        "benchmark": "sqlite_multiprocess",
        "layout": layout,
        "workers": workers,
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
        "environment": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", default="threads:4", help="NAME:CONCURRENCY of each worker")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--layout", action="append", choices=["two-files", "one-file"], help="repeatable")
    options = parser.parse_args(argv)
    pool, _, concurrency = options.pool.partition(":")
    for layout in options.layout or ["two-files", "one-file"]:
        row = run(layout, options.workers, pool, int(concurrency or 1), options.tasks, options.latency_samples)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
