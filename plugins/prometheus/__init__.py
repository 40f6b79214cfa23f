"""Prometheus metrics from every worker (extra ``prometheus``: prometheus-client).

A worker started with a metrics port serves ``/metrics`` over HTTP::

    celeriac worker --metrics-port 9808

    [celeriac.prometheus]
    port = 9808                 # or CELERIAC_PROMETHEUS_PORT; unset: no metrics server
    address = "127.0.0.1"       # interface to listen on; "0.0.0.0" to let Prometheus in from elsewhere
    probe_timeout = 2.0         # seconds a scrape may spend asking the broker about queues

Metrics (counters and histograms are labelled ``task`` and, where known, ``queue``):

=============================================  ==============================================
``celeriac_tasks_received_total``              valid task messages the worker took in
``celeriac_tasks_succeeded_total``             tasks that returned normally
``celeriac_tasks_failed_total``                tasks that raised
``celeriac_tasks_retried_total``               tasks that asked to be retried
``celeriac_tasks_revoked_total``               revoked or expired instead of run
``celeriac_tasks_rejected_total``              dead-lettered (malformed, unknown task)
``celeriac_task_runtime_seconds``              histogram of run time, by task
``celeriac_task_queue_wait_seconds``           histogram of publish (or ETA) to start
``celeriac_worker_tasks_active``               tasks running now (in flight)
``celeriac_worker_tasks_reserved``             prefetched messages waiting for a pool slot
``celeriac_worker_prefetch_limit``             most messages the worker may hold
``celeriac_worker_pool_size``                  pool slots
``celeriac_worker_pool_busy``                  pool slots running a task
``celeriac_queue_length``                      ready messages per consumed queue
``celeriac_queue_oldest_message_age_seconds``  how long the oldest ready message has waited
                                               (transports that can tell; the autoscaling
                                               signal)
``celeriac_worker_info``                       1, labelled ``hostname`` and ``pool``
=============================================  ==============================================

Task counters and histograms are recorded where the task runs; with the ``processes`` pool
that is in the children. They are aggregated with prometheus_client's multiprocess mode: at
``worker_init`` (before the pool forks) the worker makes a private directory, points
``PROMETHEUS_MULTIPROC_DIR`` at it and records into memory-mapped files there; every pool
child records into files of its own; ``/metrics`` sums them. The directory is deleted at
shutdown. The gauges are read from the worker at scrape time; queue lengths and ages are
asked of the broker then, bounded by ``probe_timeout`` (a slow broker leaves them out of that
scrape instead of stalling it).

Queue wait needs the publish time: every task message this app publishes carries the header
``x-celeriac-sent-at`` (unix time), stamped at ``before_task_publish``.

Every pool child records into files of its own, so a worker that recycles children
(``max_tasks_per_child``) or loses them (killed) would pile files up; every scrape, and every
30 s, the worker folds the files of children that are gone into one accumulator file per
metric type (``counter_dead.db``, ``histogram_dead.db``) and deletes them: the totals stay
exact and the directory holds the live processes' files plus two.

A metrics port set without prometheus-client installed stops the worker at start with
``celeriac: the prometheus plugin needs the 'prometheus' extra: pip install 'celeriac[prometheus]'``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import celeriac

__all__ = [
    "SENT_AT_HEADER",
    "before_task_publish",
    "celeriac_settings",
    "celeriac_worker_options",
    "metrics_address",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_revoked",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_shutdown",
]

#: Header with the unix time a task message was published (for the queue-wait histogram).
SENT_AT_HEADER = "x-celeriac-sent-at"

logger = logging.getLogger("celeriac.prometheus")

_MISSING_EXTRA = "the prometheus plugin needs the 'prometheus' extra: pip install 'celeriac[prometheus]'"

#: The metrics of this process (``celeriac.plugins.prometheus._metrics.ProcessMetrics``), or None.
_recording: Any = None


def _setting(name: str, kind: str, default: Any, doc: str) -> celeriac.Setting:
    return celeriac.Setting(f"prometheus_{name}", kind, default, doc, section="prometheus")


SETTINGS = (
    _setting("port", "int", None, "Serve Prometheus metrics on this port (`--metrics-port`); unset: off."),
    _setting("address", "str", "127.0.0.1", "Interface the metrics server listens on (`0.0.0.0`: every interface)."),
    _setting("probe_timeout", "float", 2.0, "Seconds a scrape may spend asking the broker about queues."),
)


@celeriac.hookimpl
def celeriac_settings() -> Sequence[celeriac.Setting]:
    """The ``[celeriac.prometheus]`` settings."""
    return SETTINGS


@celeriac.hookimpl
def celeriac_worker_options() -> Sequence[Any]:
    """``celeriac worker --metrics-port N``."""
    import click

    return [
        click.Option(
            ["--metrics-port", "prometheus_port"],
            type=click.IntRange(0, 65535),
            help="Serve Prometheus metrics on this port (0: any free port; extra 'prometheus').",
        )
    ]


def metrics_address(worker: celeriac.Worker) -> tuple[str, int] | None:
    """``(host, port)`` the metrics server of ``worker`` listens on, or None when it has none."""
    metrics = _recording
    if metrics is None or metrics.server is None or metrics.server.worker is not worker:
        return None
    address: tuple[str, int] = metrics.server.address
    return address


# -- worker lifecycle ---------------------------------------------------------------------------


@celeriac.hookimpl
def worker_init(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    """Set up multiprocess recording and start the HTTP server, before the pool forks."""
    global _recording
    port = app.conf.prometheus_port
    if port is None:
        return
    try:
        from celeriac.plugins.prometheus import _metrics as module
    except ImportError:
        # A configured port that cannot be served must stop the worker: a HandledError raised
        # in worker_init does (the CLI prints this one line and exits 2).
        raise celeriac.PluginError(_MISSING_EXTRA) from None
    if _recording is not None and _recording.server is not None:
        logger.error(
            "no metrics for %s: a metrics server already runs in this process (for %s); "
            "run one worker with a metrics port per process",
            worker.hostname,
            _recording.server.worker.hostname,
        )
        return
    try:
        _recording = module.start_worker_metrics(
            app, worker, port, app.conf.prometheus_address, float(app.conf.prometheus_probe_timeout)
        )
    except OSError as exc:
        logger.error(
            "no metrics: cannot listen on %s:%d (%s); choose another [celeriac.prometheus] port / --metrics-port",
            app.conf.prometheus_address,
            port,
            exc.strerror or exc,
        )


@celeriac.hookimpl
def worker_process_init(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    """In a pool child: record into files of its own (the parent's locks are not shared)."""
    global _recording
    metrics = _recording
    if metrics is not None and metrics.app is app:
        _recording = metrics.for_this_process()


@celeriac.hookimpl
def worker_shutdown(app: celeriac.Celeriac, worker: celeriac.Worker) -> None:
    """Stop the server, delete the multiprocess directory, restore prometheus_client's mode."""
    global _recording
    metrics = _recording
    if metrics is not None and metrics.server is not None and metrics.server.worker is worker:
        _recording = None
        metrics.close()


# -- publishing -----------------------------------------------------------------------------------


@celeriac.hookimpl
def before_task_publish(headers: dict[str, Any]) -> None:
    """Stamp the publish time (a retry or chain step copies its parent's headers: overwrite)."""
    headers[SENT_AT_HEADER] = time.time()


# -- in the worker process ------------------------------------------------------------------------


@celeriac.hookimpl
def task_received(app: celeriac.Celeriac, request: celeriac.Request) -> None:
    metrics = _recording
    if metrics is not None and metrics.app is app:
        metrics.received.labels(request.task, request.queue or "").inc()


@celeriac.hookimpl
def task_revoked(app: celeriac.Celeriac, request: celeriac.Request) -> None:
    metrics = _recording
    if metrics is not None and metrics.app is app:
        metrics.revoked.labels(request.task, request.queue or "").inc()


@celeriac.hookimpl
def task_rejected(app: celeriac.Celeriac, message: celeriac.Envelope) -> None:
    metrics = _recording
    if metrics is not None and metrics.app is app:
        name = message.headers.get("task") if isinstance(message.headers, dict) else None
        metrics.rejected.labels(name if isinstance(name, str) else "").inc()


@celeriac.hookimpl
def task_unknown(app: celeriac.Celeriac, name: str) -> None:
    metrics = _recording
    if metrics is not None and metrics.app is app:
        metrics.rejected.labels(name).inc()


# -- where the task runs (pool thread or child process) ------------------------------------------


@celeriac.hookimpl
def task_prerun(app: celeriac.Celeriac, task: celeriac.Task[..., Any], task_id: str) -> None:
    metrics = _recording
    if metrics is not None and metrics.app is app:
        metrics.task_started(task, task_id)


@celeriac.hookimpl
def task_postrun(app: celeriac.Celeriac, task: celeriac.Task[..., Any], task_id: str, state: str) -> None:
    metrics = _recording
    if metrics is not None and metrics.app is app:
        metrics.task_finished(task, task_id, state)
