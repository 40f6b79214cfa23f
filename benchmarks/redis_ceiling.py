"""The ceiling on this machine: a plain redis-py push / blocking-pop loop, no task queue.

Usage::

    python benchmarks/redis_ceiling.py [--url redis://127.0.0.1:6379/12] [--messages 20000]

Prints one JSON object per line:

* ``push``      — ``LPUSH`` one message per call, and ``LPUSH`` in one pipeline (messages/s);
* ``pop``       — ``BRPOP`` one message per call, and ``RPOP`` 100 at a time pipelined;
* ``round_trip`` — a request pushed by this thread, popped by an echo thread that pushes the
  answer back, popped here: p50/p90/p99 in ms (the floor of a ``delay().get()`` round trip).

Message bodies are 300 bytes, about the size of a small task message. Keys are deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import redis

BODY = b"x" * 300


def emit(row: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def push_and_pop(client: redis.Redis, key: str, messages: int) -> dict[str, Any]:
    started = time.perf_counter()
    for _ in range(messages):
        client.lpush(key, BODY)
    single_push = messages / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(messages):
        client.brpop([key], timeout=1)
    single_pop = messages / (time.perf_counter() - started)

    started = time.perf_counter()
    pipeline = client.pipeline(transaction=False)
    for _ in range(messages):
        pipeline.lpush(key, BODY)
    pipeline.execute()
    batch_push = messages / (time.perf_counter() - started)
    started = time.perf_counter()
    popped = 0
    while popped < messages:
        pipeline = client.pipeline(transaction=False)
        for _ in range(100):
            pipeline.rpop(key)
        popped += sum(item is not None for item in pipeline.execute())
    batch_pop = messages / (time.perf_counter() - started)
    return {
        "push_per_s": round(single_push),
        "push_pipelined_per_s": round(batch_push),
        "pop_blocking_per_s": round(single_pop),
        "pop_pipelined_per_s": round(batch_pop),
    }


def round_trip(url: str, key: str, samples: int) -> dict[str, float]:
    requests, replies = f"{key}:requests", f"{key}:replies"
    stop = threading.Event()

    def echo() -> None:
        client = redis.Redis.from_url(url)
        while not stop.is_set():
            item = client.brpop([requests], timeout=0.2)
            if item is not None:
                client.lpush(replies, item[1])
        client.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    client = redis.Redis.from_url(url)
    latencies = []
    for _ in range(samples):
        begin = time.perf_counter()
        client.lpush(requests, BODY)
        client.brpop([replies], timeout=5)
        latencies.append((time.perf_counter() - begin) * 1000)
    stop.set()
    thread.join()
    client.close()
    return {
        "p50": round(statistics.median(latencies), 3),
        "p90": round(percentile(latencies, 0.90), 3),
        "p99": round(percentile(latencies, 0.99), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--latency-samples", type=int, default=2000)
    options = parser.parse_args(argv)
    environment = {
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "cpus": os.cpu_count(),
    }
    client = redis.Redis.from_url(options.url)
    key = f"celeriac-ceiling-{uuid.uuid4().hex}"
    try:
        rates = push_and_pop(client, key, options.messages)
        emit({"benchmark": "redis_ceiling", "messages": options.messages, **rates, "environment": environment})
        latency = round_trip(options.url, key, options.latency_samples)
        emit({"benchmark": "redis_ceiling", "round_trip_ms": latency, "environment": environment})
    finally:
        client.delete(key, f"{key}:requests", f"{key}:replies")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
