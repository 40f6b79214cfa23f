"""The metrics of one worker and its pool processes, on prometheus_client's multiprocess mode."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import celeriac
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["ProcessMetrics", "start_worker_metrics"]

logger = logging.getLogger("celeriac.prometheus")

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_SENT_AT = "x-celeriac-sent-at"
#: Seconds; tasks and waits run from milliseconds to an hour.
#: Seconds between foldings of dead pool processes' files (every scrape folds too).
COMPACT_INTERVAL = 30.0
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class ProcessMetrics:
    """Counters and histograms recorded in one process (the worker, or one pool child).

    Every process records into memory-mapped files of its own in the worker's directory;
    ``/metrics`` (served by the worker process) sums them.
    """

    def __init__(self, app: celeriac.Celeriac, server: MetricsServer | None) -> None:
        self.app = app
        self.server = server
        self.pid = os.getpid()
        self._started: dict[str, float] = {}
        task_queue = ("task", "queue")
        self.received = Counter(
            "celeriac_tasks_received", "Valid task messages the worker took in.", task_queue, registry=None
        )
        self.succeeded = Counter("celeriac_tasks_succeeded", "Tasks that returned normally.", task_queue, registry=None)
        self.failed = Counter("celeriac_tasks_failed", "Tasks that raised an exception.", task_queue, registry=None)
        self.retried = Counter("celeriac_tasks_retried", "Tasks that asked to be retried.", task_queue, registry=None)
        self.revoked = Counter(
            "celeriac_tasks_revoked", "Tasks revoked or expired instead of run.", task_queue, registry=None
        )
        self.rejected = Counter(
            "celeriac_tasks_rejected",
            "Task messages dead-lettered (malformed, unknown task).",
            ("task",),
            registry=None,
        )
        self.runtime = Histogram(
            "celeriac_task_runtime_seconds", "Run time of tasks.", ("task",), buckets=BUCKETS, registry=None
        )
        self.queue_wait = Histogram(
            "celeriac_task_queue_wait_seconds",
            "Time from publish (or ETA) to start.",
            task_queue,
            buckets=BUCKETS,
            registry=None,
        )
        self._outcomes = {
            celeriac.states.SUCCESS: self.succeeded,
            celeriac.states.FAILURE: self.failed,
            celeriac.states.RETRY: self.retried,
        }

    def for_this_process(self) -> ProcessMetrics:
        """The metrics to record with in this process: ``self`` in the worker process; in a
        forked pool child, fresh ones on a fresh value class (the parent's file handles and
        its lock, possibly held at fork time, stay unused)."""
        if os.getpid() == self.pid:
            return self
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        return ProcessMetrics(self.app, None)

    def task_started(self, task: celeriac.Task[..., Any], task_id: str) -> None:
        now = time.time()
        self._started[task_id] = time.perf_counter()
        request = task.request
        sent = request.headers.get(_SENT_AT)
        if isinstance(sent, int | float) and not isinstance(sent, bool):
            ready = max(float(sent), request.eta.timestamp() if request.eta is not None else 0.0)
            self.queue_wait.labels(task.name, request.queue or "").observe(max(0.0, now - ready))

    def task_finished(self, task: celeriac.Task[..., Any], task_id: str, state: str) -> None:
        started = self._started.pop(task_id, None)
        if started is not None:
            self.runtime.labels(task.name).observe(time.perf_counter() - started)
        counter = self._outcomes.get(state)
        if counter is not None:
            counter.labels(task.name, task.request.queue or "").inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _SettledFilesCollector(MultiProcessCollector):
    """prometheus_client's multiprocess collector, minus files still being created, that first
    folds the files of dead processes into accumulator files.

    A process creates its ``.db`` file (empty) and only then sizes it; a scrape that globs the
    directory in between would fail on the empty file (``struct.error``) and answer 500.
    Folding and reading share one lock, so no scrape counts a dead process twice.
    """

    def __init__(self, registry: CollectorRegistry, path: str, live_pids: Callable[[], set[int]]) -> None:
        super().__init__(registry, path=path)  # type: ignore[no-untyped-call]
        self._live_pids = live_pids
        self._lock = threading.Lock()

    def compact(self) -> int:
        """Fold the files of processes that are gone into the accumulator files; the number of
        files folded."""
        with self._lock:
            return compact_dead_files(self._path, self._live_pids())

    def collect(self) -> Any:
        with self._lock:
            compact_dead_files(self._path, self._live_pids())
            files = glob.glob(os.path.join(self._path, "*.db"))
            settled = [name for name in files if _size(name) > 0]
            return self.merge(settled, accumulate=True)  # type: ignore[no-untyped-call]


#: Name of the accumulator files (``counter_dead.db``, ``histogram_dead.db``) that hold the
#: sums of every process that is gone.
DEAD = "dead"


def compact_dead_files(directory: str, live: set[int]) -> int:
    """Add the values of every ``<type>_<pid>.db`` file whose process is gone (not in ``live``
    and not running) into ``<type>_dead.db`` and delete it; the number of files folded.

    Counters and histogram samples are sums over processes, so the totals stay exact and the
    directory holds the files of live processes plus one accumulator per type. A process
    whose pid is still taken (an unreaped child, or a reused pid) is folded later."""
    dead: dict[str, list[str]] = {}
    for path in glob.glob(os.path.join(directory, "*.db")):
        kind, _, ident = os.path.basename(path)[: -len(".db")].rpartition("_")
        if kind not in ("counter", "histogram") or not ident.isdigit():
            continue  # an accumulator, or a gauge (none here: gauges are read at scrape time)
        pid = int(ident)
        if pid in live or _running(pid) or _size(path) == 0:
            continue
        dead.setdefault(kind, []).append(path)
    folded = 0
    for kind, paths in dead.items():
        target = MmapedDict(os.path.join(directory, f"{kind}_{DEAD}.db"))  # type: ignore[no-untyped-call]
        try:
            for path in paths:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                    total, _ = target.read_value(key)  # type: ignore[no-untyped-call]
                    target.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
        finally:
            target.close()  # type: ignore[no-untyped-call]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            folded += 1
    return folded


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid was reused by another user's process
        return True
    return True


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # removed meanwhile
        return 0


class MetricsServer:
    """The worker's ``/metrics`` endpoint and the multiprocess directory behind it."""

    def __init__(self, worker: celeriac.Worker, directory: str, probe_timeout: float) -> None:
        self.worker = worker
        self.directory = directory
        self.registry = CollectorRegistry(auto_describe=False)
        self.files = _SettledFilesCollector(self.registry, directory, self.live_pids)
        self.registry.register(WorkerCollector(worker, probe_timeout))
        self.address: tuple[str, int] = ("", 0)
        self._httpd: Any = None
        self._thread: threading.Thread | None = None
        self._saved: tuple[str | None, Any] = (None, None)
        self._stop = threading.Event()
        self._compactor: threading.Thread | None = None

    def live_pids(self) -> set[int]:
        """This process and the pool's children as the pool knows them."""
        pool = self.worker.pool
        children = pool.stats().get("processes") if pool is not None else None
        return {os.getpid(), *(pid for pid in children or () if isinstance(pid, int))}

    def listen(self, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, host, registry=self.registry)
        self.address = (host, int(self._httpd.server_port))
        self._compactor = threading.Thread(
            target=self._compact_now_and_then, name="celeriac-metrics-compact", daemon=True
        )
        self._compactor.start()

    def _compact_now_and_then(self) -> None:
        """Fold dead children's files every :data:`COMPACT_INTERVAL` seconds (scrapes fold too),
        so a worker nobody scrapes does not pile them up either."""
        while not self._stop.wait(COMPACT_INTERVAL):
            try:
                self.files.compact()
            except Exception as exc:  # never kill the thread: the next scrape folds again
                logger.warning("metrics: cannot fold the files of finished pool processes: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._compactor is not None:
            self._compactor.join(5)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        env, value_class = self._saved
        if env is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = env
        if value_class is not None:
            values.ValueClass = value_class
        shutil.rmtree(self.directory, ignore_errors=True)


def start_worker_metrics(
    app: celeriac.Celeriac, worker: celeriac.Worker, port: int, host: str, probe_timeout: float
) -> ProcessMetrics:
    """Switch this process to multiprocess recording in a private directory, create the
    metrics and serve them; raises :class:`OSError` when the port cannot be bound."""
    directory = tempfile.mkdtemp(prefix="celeriac-metrics-")
    saved = (os.environ.get(_ENV), values.ValueClass)
    os.environ[_ENV] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    server = MetricsServer(worker, directory, probe_timeout)
    server._saved = saved
    try:
        server.listen(host, port)
    except BaseException:
        server.close()
        raise
    logger.info("metrics on http://%s:%d/metrics", *server.address)
    return ProcessMetrics(app, server)


class WorkerCollector(Collector):
    """Gauges read from the worker at scrape time; queue lengths and ages from the broker."""

    def __init__(self, worker: celeriac.Worker, probe_timeout: float) -> None:
        self.worker = worker
        self.probe = QueueProbe(worker, probe_timeout)

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        info = worker.info()
        pool = worker.pool
        stats: dict[str, Any] = pool.stats() if pool is not None else {}
        size = pool.size if pool is not None else worker.concurrency
        busy = stats.get("busy")
        yield _gauge("celeriac_worker_tasks_active", "Tasks running now (in flight).", info["active"])
        yield _gauge("celeriac_worker_tasks_reserved", "Prefetched messages waiting for a pool slot.", info["reserved"])
        yield _gauge("celeriac_worker_prefetch_limit", "Most messages the worker may hold.", info["prefetch_count"])
        yield _gauge("celeriac_worker_pool_size", "Pool slots.", size)
        yield _gauge(
            "celeriac_worker_pool_busy",
            "Pool slots running a task.",
            busy if isinstance(busy, int) else min(info["active"], size),
        )
        worker_info = GaugeMetricFamily(
            "celeriac_worker_info", "The worker's node name and pool.", labels=("hostname", "pool")
        )
        worker_info.add_metric((worker.hostname, worker.pool_name), 1)
        yield worker_info
        queues = self.probe.read()
        if queues is None:
            return
        length = GaugeMetricFamily("celeriac_queue_length", "Ready messages per consumed queue.", labels=("queue",))
        age = GaugeMetricFamily(
            "celeriac_queue_oldest_message_age_seconds",
            "Seconds the oldest ready message of a consumed queue has waited.",
            labels=("queue",),
        )
        for name, (count, oldest) in queues.items():
            if count is not None:
                length.add_metric((name,), count)
            if oldest is not None:
                age.add_metric((name,), oldest)
        yield length
        yield age


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class QueueProbe:
    """Ask the broker for the length and oldest-message age of the consumed queues, at most
    one probe at a time, waiting at most ``timeout`` seconds for it."""

    def __init__(self, worker: celeriac.Worker, timeout: float) -> None:
        self.worker = worker
        self.timeout = timeout
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._box: dict[str, Any] = {}
        self._warned = False

    def read(self) -> dict[str, tuple[int | None, float | None]] | None:
        with self._lock:
            thread, box = self._thread, self._box
            if thread is None or not thread.is_alive():
                box = {}
                thread = threading.Thread(target=self._probe, args=(box,), name="celeriac-metrics-probe", daemon=True)
                self._thread, self._box = thread, box
                thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            if not self._warned:
                self._warned = True
                logger.warning("metrics: the broker did not say how long the queues are within %.1fs", self.timeout)
            return None
        result: dict[str, tuple[int | None, float | None]] | None = box.get("result")
        return result

    def _probe(self, box: dict[str, Any]) -> None:
        transport = self.worker.transport
        if transport is None:
            return
        result: dict[str, tuple[int | None, float | None]] = {}
        for queue in self.worker.queues:
            count: int | None = None
            oldest: float | None = None
            try:
                count = transport.queue_length(queue)
                oldest = transport.oldest_message_age(queue)
            except Exception as exc:
                logger.debug("metrics: cannot probe queue %s: %s", queue, exc)
            result[queue] = (count, oldest)
        box["result"] = result
