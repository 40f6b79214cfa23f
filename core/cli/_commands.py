"""Built-in commands: worker, call, result, purge, plugins, config, demo."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

import click

from .. import states
from .._envelope import Envelope
from ..exceptions import HandledError, TimeoutError
from ._main import cli, get_app

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(threadName)s] %(message)s"


def _split(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def _json_option(text: str | None, option: str, expected: type, example: str) -> Any:
    if text is None:
        return expected()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HandledError(f"{option}: not valid JSON ({exc.msg}); expected e.g. {example}") from None
    if not isinstance(value, expected):
        raise HandledError(f"{option}: expected a JSON {expected.__name__}, e.g. {example}")
    return value


def _user_tasks(names: Iterable[str]) -> list[str]:
    """Task names without the built-ins (``celery.*``, ``celeriac.*``), as Celery's banner shows them."""
    return sorted(name for name in names if not name.startswith(("celery.", "celeriac.")))


def _to_json(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False)


# -- worker ---------------------------------------------------------------------------------


class WorkerCommand(click.Command):
    """``celeriac worker`` plus the options plugins add (``celeriac_worker_options``)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        try:
            app = get_app(ctx)
        except (HandledError, AttributeError):
            return params
        return params + list(app.plugins.worker_options())


def _autoscale(value: str | None) -> list[int] | None:
    """``--autoscale MAX,MIN`` (Celery's order) -> ``[min, max]``."""
    if not value:
        return None
    try:
        numbers = [int(part) for part in value.split(",")]
    except ValueError:
        raise HandledError(f"--autoscale: expected MAX,MIN (e.g. 10,3), got {value!r}") from None
    if len(numbers) == 1:
        numbers.append(0)
    if len(numbers) != 2 or min(numbers) < 0 or numbers[0] < 1:
        raise HandledError(f"--autoscale: expected MAX,MIN with MAX >= 1 (e.g. 10,3), got {value!r}")
    high, low = numbers
    return [min(low, high), max(low, high)]


@cli.command(cls=WorkerCommand)
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: [celeriac.worker] queues).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once.")
@click.option("-P", "--pool", help="Execution pool (solo, threads, processes, asyncio; see `celeriac plugins`).")
@click.option("-n", "--hostname", help="Node name; %h is replaced by the host name.")
@click.option("-l", "--loglevel", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Log level.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1), help="Messages held per pool slot.")
@click.option("--autoscale", metavar="MAX,MIN", help="Grow the pool up to MAX under backlog, shrink to MIN when idle.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), help="Replace a pool child after this many tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), help="Replace a pool child above this RSS (KiB).")
@click.option("-E", "--events", "send_events", is_flag=True, default=None, help="Send task events for monitors.")
@click.option("--statedb", help="File that keeps revoked task ids across restarts.")
@click.option("-B", "--beat", "embed_beat", is_flag=True, help="Also run the periodic-task scheduler (beat) here.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), help="Hard time limit of every task (s).")
@click.option(
    "--soft-time-limit", type=click.FloatRange(min=0, min_open=True), help="Soft time limit of every task (s)."
)
@click.option("-f", "--logfile", type=click.Path(dir_okay=False), help="Write the log to this file, not stderr.")
@click.option(
    "--pidfile", type=click.Path(dir_okay=False), help="Write the worker's pid here; refuse to start if taken."
)
def worker(
    queues: str | None,
    concurrency: int | None,
    pool: str | None,
    hostname: str | None,
    loglevel: str | None,
    prefetch_multiplier: int | None,
    autoscale: str | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    send_events: bool | None,
    statedb: str | None,
    embed_beat: bool,
    time_limit: float | None,
    soft_time_limit: float | None,
    logfile: str | None,
    pidfile: str | None,
    **plugin_options: Any,
) -> None:
    """Start a worker: consume queues and run tasks until SIGTERM/SIGINT."""
    app = get_app()
    app.conf.update(
        {
            "task_time_limit": time_limit,
            "task_soft_time_limit": soft_time_limit,
            "worker_autoscale": _autoscale(autoscale),
            "worker_max_tasks_per_child": max_tasks_per_child,
            "worker_max_memory_per_child": max_memory_per_child,
            "worker_send_task_events": send_events,
            "worker_state_db": statedb,
            **plugin_options,
        },
        origin="command line",
    )
    level = (loglevel or app.conf.worker_log_level).upper()
    if logfile:
        try:
            handler: logging.Handler = logging.FileHandler(logfile)
        except OSError as exc:
            raise HandledError(f"--logfile: cannot open {logfile!r}: {exc.strerror}") from None
        logging.basicConfig(level=level, format=LOG_FORMAT, handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    if pidfile:
        _take_pidfile(pidfile)
    node = app.Worker(
        pool=pool,
        concurrency=concurrency,
        queues=_split(queues),
        name=hostname,
        prefetch_multiplier=prefetch_multiplier,
    )
    if embed_beat:
        _embed_beat(app, node)
    click.echo(
        f"celeriac {node.hostname}: broker {app.conf.masked()['broker_url']}, pool {node.pool_name}, "
        f"queues {','.join(node.queues)}, tasks: {', '.join(_user_tasks(app.tasks)) or 'none'}",
        err=True,
    )
    try:
        code = node.run()
    finally:
        if pidfile:
            with contextlib.suppress(OSError):
                os.unlink(pidfile)
    sys.exit(code)


def _take_pidfile(path: str) -> None:
    """Write this process's pid to ``path``; a file naming a live process means another worker
    runs there: refuse (a stale file of a dead process is replaced)."""
    try:
        with open(path) as handle:
            other = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        other = 0
    if other and other != os.getpid():
        try:
            os.kill(other, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise HandledError(f"--pidfile {path}: process {other} is running; stop it or use another file") from None
        else:
            raise HandledError(f"--pidfile {path}: process {other} is running; stop it or use another file")
    try:
        with open(path, "w") as handle:
            handle.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise HandledError(f"--pidfile: cannot write {path!r}: {exc.strerror}") from None


def _embed_beat(app: Any, node: Any) -> None:
    """Run beat inside the worker (``--beat``): started with the worker, stopped with it."""
    from ._beat import embed_beat

    embed_beat(app, node)


# -- call / result --------------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments as a JSON list, e.g. '[2, 3]'.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as a JSON object, e.g. '{\"x\": 1}'.")
@click.option("--queue", help="Queue (default: routes, then the task's queue, then task_default_queue).")
@click.option("--countdown", type=float, help="Run no earlier than this many seconds from now.")
@click.option("--expires", type=float, help="Revoke if not started within this many seconds.")
@click.option("--priority", type=click.IntRange(0, 9), help="Priority 0-9, higher first.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it as JSON.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait with --wait (default: forever).")
def call(
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    countdown: float | None,
    expires: float | None,
    priority: int | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Send task NAME; print its id (or, with --wait, its result as JSON)."""
    args = _json_option(args_json, "--args", list, "'[2, 3]'")
    kwargs = _json_option(kwargs_json, "--kwargs", dict, "'{\"x\": 1}'")
    app = get_app()
    transport = app.transport
    if not transport.shared_between_processes and not app.running_workers():
        raise HandledError(
            f"broker_url {app.conf.broker_url} only reaches workers inside this process and none runs here; "
            "point broker_url at a broker other processes share (e.g. redis://127.0.0.1:6379/0)"
        )
    result = app.send_task(name, args, kwargs, queue=queue, countdown=countdown, expires=expires, priority=priority)
    if not wait:
        click.echo(result.id)
        return
    click.echo(result.id, err=True)
    try:
        value = result.get(timeout=timeout)
    except TimeoutError as exc:
        raise HandledError(str(exc)) from None
    except Exception as exc:
        raise HandledError(f"task {name}[{result.id}] failed: {type(exc).__name__}: {exc}") from None
    click.echo(_to_json(value))


@cli.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is done.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait with --wait.")
def result(task_id: str, wait: bool, timeout: float | None) -> None:
    """Print the state and result of TASK_ID as JSON."""
    app = get_app()
    if app.result_store.reply_to is not None:
        app.close()  # its connection to the broker is of no use here
        raise HandledError(
            f"result_store {app.conf.masked()['result_store']} sends each result only to the client that sent "
            "the task, so no other process can read it; use a result store such as redis:// or sqlite:// "
            "to read results here"
        )
    handle = app.AsyncResult(task_id)
    if wait:
        record = app.result_store.wait(task_id, states=states.READY_STATES, timeout=timeout)
        if record is None or record.state not in states.READY_STATES:
            raise HandledError(f"task {task_id} did not finish within {timeout}s")
    record = app.result_store.get(task_id)
    if record is None:
        click.echo(_to_json({"id": task_id, "state": states.PENDING, "result": None}))
        return
    meta = app.decode_result(record)
    click.echo(
        _to_json(
            {
                "id": task_id,
                "state": meta.get("status"),
                "result": meta.get("result"),
                "traceback": meta.get("traceback"),
                "date_done": meta.get("date_done"),
            }
        )
    )
    if handle.failed():
        sys.exit(1)


# -- purge ----------------------------------------------------------------------------------


@cli.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the worker's queues).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def purge(queues: str | None, force: bool) -> None:
    """Delete all waiting messages from queues."""
    app = get_app()
    names = _split(queues) or app.conf.worker_queues or [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete every waiting message in {', '.join(names)}?", abort=True, err=True)
    for name in names:
        count = app.transport.purge(name)
        click.echo(f"purged {count} message{'s' if count != 1 else ''} from {name}")


@cli.command("dead-letter")
@click.argument("queue")
@click.option("--requeue", is_flag=True, help="Move the messages back to QUEUE (fresh delivery counts).")
@click.option("--purge", "drop", is_flag=True, help="Delete the dead-lettered messages.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
def dead_letter(queue: str, requeue: bool, drop: bool, limit: int, as_json: bool) -> None:
    """List the dead-lettered messages of QUEUE (and why), or --requeue / --purge them."""
    if requeue and drop:
        raise HandledError("dead-letter: --requeue and --purge exclude each other; pick one")
    app = get_app()
    transport = app.transport
    dead = transport.dead_letter_queue(queue)
    if drop:
        count = transport.purge(dead)
        click.echo(f"purged {count} message{'s' if count != 1 else ''} from {dead}")
        return
    deliveries: list[Any] = []
    while len(deliveries) < limit:
        batch = transport.fetch([dead], limit=limit - len(deliveries), timeout=0.2)
        if not batch:
            break
        deliveries += batch
    for delivery in deliveries:
        headers = delivery.envelope.headers
        entry = {
            "id": headers.get("id"),
            "task": headers.get("task"),
            "queue": headers.get("x-death-queue") or queue,
            "reason": headers.get("x-death-reason"),
            "args": headers.get("argsrepr"),
            "kwargs": headers.get("kwargsrepr"),
        }
        click.echo(_to_json(entry) if as_json else f"{entry['task']}[{entry['id']}] {entry['reason']}")
    if requeue:
        for delivery in deliveries:
            envelope = delivery.envelope
            clean = {k: v for k, v in envelope.headers.items() if not str(k).startswith("x-death")}
            back = Envelope(envelope.body, envelope.content_type, envelope.content_encoding, clean, envelope.properties)
            transport.publish(back, str(envelope.headers.get("x-death-queue") or queue))
            transport.ack(delivery)  # only once it is back on its queue: nothing is lost
        click.echo(f"requeued {len(deliveries)} message{'s' if len(deliveries) != 1 else ''} to {queue}", err=True)
    else:
        for delivery in deliveries:  # listing leaves them where they are
            transport.reject(delivery, requeue=True)
        if not deliveries:
            click.echo(f"no dead-lettered messages in {dead}", err=True)


# -- plugins / config -----------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List registered plugins: name, version, source and the hooks each implements."""
    app = get_app()
    found = app.plugins.plugins()
    if as_json:
        click.echo(
            json.dumps(
                [{"name": p.name, "version": p.version, "source": p.source, "hooks": list(p.hooks)} for p in found],
                indent=2,
            )
        )
        return
    width = max((len(p.name) for p in found), default=4)
    for info in found:
        version = info.version or "-"
        click.echo(f"{info.name:<{width}}  {version:<8}  {info.source}")
        click.echo(f"{'':<{width}}  hooks: {', '.join(info.hooks) or '-'}")
    click.echo(f"\npools: {', '.join(app.plugins.pool_names())}; serializers: {', '.join(app.serializers.names)}")


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also describe every setting.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config(show_all: bool, as_json: bool) -> None:
    """Print the effective configuration and where each value came from (secrets masked)."""
    app = get_app()
    values = app.conf.masked()
    if as_json:
        click.echo(json.dumps(values, indent=2, default=repr))
        return
    click.echo(f"# config file: {app.conf.source}")
    for setting in app.conf.settings():
        origin = app.conf.origin(setting.name)
        click.echo(f"{setting.location} = {_to_json(values[setting.name])}  # {origin}")
        if show_all and setting.doc:
            click.echo(f"    {setting.doc} (env: {setting.env_var})")


# -- demo ---------------------------------------------------------------------------------


@cli.command()
@click.option("-n", "--count", type=click.IntRange(1, 100_000), default=20, help="How many add tasks to send.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), default=2, help="Worker threads.")
def demo(count: int, concurrency: int) -> None:
    """Start a worker process and send it tasks through an SQLite file; print the results."""
    import os
    import signal
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="celeriac-demo-") as directory:
        url = f"sqlite:///{directory}/demo.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env |= {"CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_STORE": url}
        os.environ.update({"CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_STORE": url})
        from .. import demo as tasks

        click.echo(f"broker and results: {url}")
        command = [
            sys.executable,
            "-m",
            "celeriac",
            "-A",
            "celeriac.demo:app",
            "worker",
            "-c",
            str(concurrency),
            "-l",
            "WARNING",
        ]
        click.echo(f"worker process: celeriac -A celeriac.demo:app worker -c {concurrency}")
        worker = subprocess.Popen(command, env=env, cwd=directory, stdin=subprocess.DEVNULL)
        try:
            started = time.perf_counter()
            results = [tasks.add.delay(i, i) for i in range(count)]
            values = [r.get(timeout=60) for r in results]
            elapsed = time.perf_counter() - started
            click.echo(f"client: sent {count} add tasks; results {values[:10]}{' ...' if count > 10 else ''}")
            click.echo(f"client: all {count} results back in {elapsed * 1000:.0f} ms (including worker start-up)")
            failing = tasks.divide.delay(1, 0)
            try:
                failing.get(timeout=60)
            except ZeroDivisionError as exc:
                click.echo(f"client: divide(1, 0) failed in the worker and re-raised here: ZeroDivisionError: {exc}")
            delayed = tasks.add.apply_async((40, 2), countdown=0.5)
            click.echo(f"client: add(40, 2) with countdown=0.5s -> {delayed.get(timeout=60)} ({delayed.state})")
            squares = [tasks.slow_square.delay(i) for i in range(4)]
            click.echo(
                f"client: slow_square x4 on {concurrency} worker threads -> {[r.get(timeout=60) for r in squares]}"
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
            tasks.app.close()
            for key in ("CELERIAC_BROKER_URL", "CELERIAC_RESULT_STORE"):
                os.environ.pop(key, None)
        click.echo(f"worker process stopped (exit code {code})")
