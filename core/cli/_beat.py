"""``celeriac beat`` and the beat embedded in ``celeriac worker --beat``."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from ..exceptions import HandledError
from ..hookspecs import hookimpl
from ._main import cli, get_app

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..beat import Beat
    from ..worker import Worker

__all__ = ["beat", "embed_beat"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(threadName)s] %(message)s"
logger = logging.getLogger("celeriac.beat")


def _describe(scheduler: Beat) -> str:
    return ", ".join(f"{entry.name} ({entry.task} {entry.schedule!r})" for entry in scheduler.entries.values())


def _check_shared(app: Celeriac) -> None:
    if not app.transport.shared_between_processes:
        raise HandledError(
            f"broker_url {app.conf.masked()['broker_url']} only reaches workers inside this process; "
            "point broker_url at a broker other processes share (e.g. redis://127.0.0.1:6379/0), "
            "or run beat inside a worker with `celeriac worker --beat`"
        )


def _warn_private_store(app: Celeriac) -> None:
    if not app.result_store.shared_between_processes:
        logger.warning(
            "result_store %s is private to this process: beats in other processes cannot see its lease, "
            "so run only one, or use redis:// or sqlite:///",
            app.conf.masked()["result_store"],
        )


@cli.command()
@click.option("-l", "--loglevel", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Log level.")
@click.option("--lease", help="Lease name; beats with one name share it (default: [celeriac.beat] lease_name).")
@click.option("--catch-up", type=click.Choice(["once", "skip"]), help="Runs missed while no beat ran: once or skip.")
@click.option("--lease-timeout", type=click.FloatRange(min=0.1), help="Seconds before a dead leader is replaced.")
def beat(loglevel: str | None, lease: str | None, catch_up: str | None, lease_timeout: float | None) -> None:
    """Run the periodic-task scheduler until SIGTERM/SIGINT (several may run: one sends)."""
    from ..beat import Beat

    app = get_app()
    app.conf.update(
        {"beat_catch_up": catch_up, "beat_lease_timeout": lease_timeout, "beat_lease_name": lease},
        origin="command line",
    )
    level = (loglevel or app.conf.worker_log_level).upper()
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    scheduler = Beat(app)
    _check_shared(app)
    scheduler.check()
    _warn_private_store(app)
    click.echo(
        f"celeriac beat {scheduler.owner}: broker {app.conf.masked()['broker_url']}, "
        f"lease {scheduler.lease!r} in {app.conf.masked()['result_store']}, entries: {_describe(scheduler) or 'none'}",
        err=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.warning("%s received: stopping beat", signal.Signals(signum).name)
        stop.set()
        scheduler.stop(timeout=0)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    scheduler.start()
    while not stop.wait(0.5):
        pass
    scheduler.stop()
    app.close()


class _EmbeddedBeat:
    """Starts ``scheduler`` when ``worker`` is ready and stops it when the worker shuts down."""

    def __init__(self, scheduler: Beat, worker: Worker) -> None:
        self.scheduler = scheduler
        self.worker = worker

    @hookimpl
    def worker_ready(self, app: Celeriac, worker: Worker) -> None:
        if worker is self.worker:
            self.scheduler.start()

    @hookimpl
    def worker_shutting_down(self, app: Celeriac, worker: Worker, sig: str, how: str, exitcode: int) -> None:
        if worker is self.worker:
            self.scheduler.stop()


def embed_beat(app: Celeriac, node: Worker, **beat_options: Any) -> Beat:
    """Run beat inside ``node``: started when it is ready, stopped when it shuts down."""
    from ..beat import Beat

    scheduler = Beat(app, **beat_options)
    scheduler.check()
    app.register_plugin(_EmbeddedBeat(scheduler, node), f"embedded-beat-{scheduler.owner}")
    return scheduler
