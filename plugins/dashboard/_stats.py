"""Counters behind the Graphs page and ``/metrics``: succeeded/failed per second, runtimes per
task name (percentiles and a histogram), tasks by name and state, queue lengths over time."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BUCKETS", "Stats"]

#: Upper bounds (seconds) of the runtime histogram buckets.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_STATE_OF_EVENT = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class Stats:
    """Thread-safe counters fed by :meth:`task_event` and :meth:`queue_sample`."""

    def __init__(self, window: int = 600, samples: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._per_second: deque[list[float]] = deque()  # [second, succeeded, failed]
        self._runtimes: dict[str, deque[float]] = {}
        self._samples = samples
        self._histogram: dict[str, list[int]] = {}
        self._runtime_sum: dict[str, float] = {}
        self._runtime_count: Counter[str] = Counter()
        self.by_name_state: Counter[tuple[str, str]] = Counter()
        self.by_worker: dict[str, Counter[str]] = {}
        self.queue_lengths: dict[str, int] = {}
        self._queue_history: deque[tuple[float, dict[str, int]]] = deque()

    def task_event(self, event: Mapping[str, Any], name: str | None) -> None:
        kind = event.get("type", "")
        state = _STATE_OF_EVENT.get(kind)
        if state is None:
            return
        with self._lock:
            self.by_name_state[(name or "unknown", state)] += 1
            if kind != "task-sent" and event.get("hostname"):
                self.by_worker.setdefault(str(event["hostname"]), Counter())[state] += 1
            if kind in {"task-succeeded", "task-failed"}:
                second = float(int(event.get("timestamp") or self._clock()))
                self._second(second)[1 if kind == "task-succeeded" else 2] += 1
            runtime = event.get("runtime")
            if kind == "task-succeeded" and isinstance(runtime, int | float):
                key = name or "unknown"
                self._runtimes.setdefault(key, deque(maxlen=self._samples)).append(float(runtime))
                counts = self._histogram.setdefault(key, [0] * (len(BUCKETS) + 1))
                position = next((i for i, bound in enumerate(BUCKETS) if runtime <= bound), len(BUCKETS))
                counts[position] += 1
                self._runtime_sum[key] = self._runtime_sum.get(key, 0.0) + float(runtime)
                self._runtime_count[key] += 1

    def _second(self, second: float) -> list[float]:
        if self._per_second and self._per_second[-1][0] == second:
            return self._per_second[-1]
        for bucket in reversed(self._per_second):  # events may arrive a little out of order
            if bucket[0] == second:
                return bucket
        bucket = [second, 0.0, 0.0]
        self._per_second.append(bucket)
        if len(self._per_second) > 1 and self._per_second[-2][0] > second:
            self._per_second = deque(sorted(self._per_second, key=lambda item: item[0]))
        cutoff = self._clock() - self.window
        while self._per_second and self._per_second[0][0] < cutoff:
            self._per_second.popleft()
        return bucket

    def queue_sample(self, lengths: Mapping[str, int]) -> None:
        now = self._clock()
        with self._lock:
            self.queue_lengths = dict(lengths)
            self._queue_history.append((now, dict(lengths)))
            while self._queue_history and self._queue_history[0][0] < now - self.window:
                self._queue_history.popleft()

    def worker_counts(self, hostname: str) -> dict[str, int]:
        with self._lock:
            counts = self.by_worker.get(hostname, Counter())
            return {"succeeded": counts["SUCCESS"], "failed": counts["FAILURE"], "retried": counts["RETRY"]}

    def graphs(self) -> dict[str, Any]:
        """The Graphs page's data: ``throughput`` (per second, last ``window`` s),
        ``runtimes`` (percentiles per task name), ``queues`` (lengths over time)."""
        now = self._clock()
        with self._lock:
            counted = {second: (int(ok), int(bad)) for second, ok, bad in self._per_second}
            last = max([int(now), *(int(second) for second in counted)])  # a worker's clock may run ahead
            first = last - self.window + 1
            throughput = [  # every second of the window, zeros included, so lines drop to 0 between bursts
                {
                    "time": float(second),
                    "succeeded": counted.get(second, (0, 0))[0],
                    "failed": counted.get(second, (0, 0))[1],
                }
                for second in range(first, last + 1)
            ]
            runtimes = {}
            for name, samples in sorted(self._runtimes.items()):
                ordered = sorted(samples)
                runtimes[name] = {
                    "count": self._runtime_count[name],
                    "p50": _percentile(ordered, 0.5),
                    "p90": _percentile(ordered, 0.9),
                    "p99": _percentile(ordered, 0.99),
                    "max": ordered[-1] if ordered else 0.0,
                }
            queues = [{"time": at, "lengths": lengths} for at, lengths in self._queue_history]
        return {"now": now, "window": self.window, "throughput": throughput, "runtimes": runtimes, "queues": queues}

    def prometheus(self, workers_online: int, current: Mapping[tuple[str, str], int] | None = None) -> str:
        """The Prometheus text exposition (format 0.0.4); ``current`` is the history's
        ``(name, state) -> tasks`` (:meth:`History.counts`)."""
        lines = [
            "# HELP celeriac_dashboard_tasks Tasks in the dashboard's history, by task name and current state.",
            "# TYPE celeriac_dashboard_tasks gauge",
        ]
        for (name, state), count in sorted((current or {}).items()):
            lines.append(f'celeriac_dashboard_tasks{{name="{_label(name)}",state="{_label(state)}"}} {count}')
        lines += [
            "# HELP celeriac_task_events_total Task events seen by the dashboard, by task name and the state "
            "each event moves to (one task counts once per event: RECEIVED, STARTED, SUCCESS...).",
            "# TYPE celeriac_task_events_total counter",
        ]
        with self._lock:
            for (name, state), count in sorted(self.by_name_state.items()):
                lines.append(f'celeriac_task_events_total{{name="{_label(name)}",state="{state}"}} {count}')
            lines += [
                "# HELP celeriac_task_runtime_seconds Runtime of succeeded tasks, by task name.",
                "# TYPE celeriac_task_runtime_seconds histogram",
            ]
            for name, counts in sorted(self._histogram.items()):
                label = _label(name)
                cumulative = 0
                for bound, count in zip((*BUCKETS, math.inf), counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == math.inf else repr(bound)
                    lines.append(f'celeriac_task_runtime_seconds_bucket{{name="{label}",le="{le}"}} {cumulative}')
                total = self._runtime_sum.get(name, 0.0)
                lines.append(f'celeriac_task_runtime_seconds_sum{{name="{label}"}} {total!r}')
                lines.append(f'celeriac_task_runtime_seconds_count{{name="{label}"}} {self._runtime_count[name]}')
            lines += [
                "# HELP celeriac_queue_length Messages waiting in a queue (last sample).",
                "# TYPE celeriac_queue_length gauge",
            ]
            for queue, length in sorted(self.queue_lengths.items()):
                lines.append(f'celeriac_queue_length{{queue="{_label(queue)}"}} {length}')
        lines += [
            "# HELP celeriac_workers_online Workers whose heartbeat is current.",
            "# TYPE celeriac_workers_online gauge",
            f"celeriac_workers_online {workers_online}",
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
