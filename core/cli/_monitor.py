"""Monitoring commands: status, inspect, control, events."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from ..control import INSPECT_COMMANDS
from ..exceptions import HandledError
from ._main import cli, get_app

if TYPE_CHECKING:
    from ..events import State

#: control command -> (usage of its arguments, how many positional arguments it needs (min, max)).
CONTROL_COMMANDS: dict[str, tuple[str, int, int]] = {
    "revoke": ("TASK_ID... [--terminate] [--signal SIGTERM]", 1, 10_000),
    "terminate": ("TASK_ID... [--signal SIGTERM]", 1, 10_000),
    "shutdown": ("", 0, 0),
    "pool_grow": ("[N]", 0, 1),
    "pool_shrink": ("[N]", 0, 1),
    "autoscale": ("MAX MIN", 2, 2),
    "add_consumer": ("QUEUE", 1, 1),
    "cancel_consumer": ("QUEUE", 1, 1),
    "rate_limit": ("TASK_NAME RATE (e.g. 10/m; 0 removes the limit)", 2, 2),
    "time_limit": ("TASK_NAME SOFT [HARD] (seconds)", 2, 3),
    "enable_events": ("", 0, 0),
    "disable_events": ("", 0, 0),
}
_OPTIONS_HELP = "Comma-separated worker names (default: every worker)."


def _destination(value: str | None) -> list[str] | None:
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return names or None


def _to_json(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False, indent=2)


def _no_reply(timeout: float) -> HandledError:
    return HandledError(
        f"no worker replied within {timeout}s; are workers running on this broker? (try a longer --timeout)"
    )


def _print_replies(replies: dict[str, Any]) -> bool:
    """Celery-style human output; True when every reply is OK (no ``{"error": ...}``)."""
    all_ok = True
    for hostname in sorted(replies):
        reply = replies[hostname]
        failed = isinstance(reply, dict) and set(reply) == {"error"}
        all_ok = all_ok and not failed
        if isinstance(reply, dict) and len(reply) == 1 and ("ok" in reply or "error" in reply):
            label = "OK" if "ok" in reply else "ERROR"
            click.echo(f"-> {hostname}: {label} {next(iter(reply.values()))}")
            continue
        click.echo(f"-> {hostname}: OK")
        if isinstance(reply, list):
            if not reply:
                click.echo("    - empty -")
            for item in reply:
                text = item if isinstance(item, str) else json.dumps(item, default=repr, ensure_ascii=False)
                click.echo(f"    * {text}")
        else:
            for line in _to_json(reply).splitlines():
                click.echo(f"    {line}")
    return all_ok


# -- status ---------------------------------------------------------------------------------


@cli.command()
@click.option("-d", "--destination", help=_OPTIONS_HELP)
@click.option("-t", "--timeout", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(destination: str | None, timeout: float, as_json: bool) -> None:
    """Ping the workers and list those that answered."""
    app = get_app()
    replies = app.control.inspect(destination=_destination(destination), timeout=timeout).ping()
    if not replies:
        raise _no_reply(timeout)
    if as_json:
        click.echo(_to_json(replies))
        return
    for hostname in sorted(replies):
        click.echo(f"{hostname}: OK")
    count = len(replies)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")


# -- inspect --------------------------------------------------------------------------------


@cli.command()
@click.argument("command")
@click.argument("arguments", nargs=-1)
@click.option("-d", "--destination", help=_OPTIONS_HELP)
@click.option("-t", "--timeout", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(command: str, arguments: tuple[str, ...], destination: str | None, timeout: float, as_json: bool) -> None:
    """Ask the workers: ping, stats, active, reserved, scheduled, revoked, registered,
    active_queues, query_task TASK_ID..., conf."""
    app = get_app()
    plugin_commands = sorted(app.plugins.control_commands())
    known = [*INSPECT_COMMANDS, *plugin_commands]
    if command not in known:
        raise HandledError(f"inspect: unknown command {command!r}; choose from {', '.join(known)}")
    inspector = app.control.inspect(destination=_destination(destination), timeout=timeout)
    if command == "query_task":
        if not arguments:
            raise HandledError("inspect query_task: give one or more task ids")
        replies = inspector.query_task(*arguments)
    elif command == "registered" and arguments:
        replies = inspector.call("registered", taskinfoitems=list(arguments))
    elif arguments:
        raise HandledError(f"inspect {command}: takes no arguments, got {' '.join(arguments)}")
    else:
        replies = inspector.call(command)
    if not replies:
        raise _no_reply(timeout)
    if as_json:
        click.echo(_to_json(replies))
        return
    if not _print_replies(replies):
        sys.exit(1)


# -- control --------------------------------------------------------------------------------


def _number(value: str, what: str, kind: type[int] | type[float] = int) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise HandledError(f"control: {what} must be a number, got {value!r}") from None
    return number


def _control_arguments(command: str, arguments: tuple[str, ...], terminate: bool, signal: str) -> dict[str, Any]:
    if command not in CONTROL_COMMANDS:
        return {}
    usage, low, high = CONTROL_COMMANDS[command]
    if not low <= len(arguments) <= high:
        raise HandledError(f"control {command}: usage: celeriac control {command} {usage}".rstrip())
    if command in ("revoke", "terminate"):
        return {"task_id": list(arguments), "terminate": terminate or command == "terminate", "signal": signal}
    if command in ("pool_grow", "pool_shrink"):
        n = _number(arguments[0], "N") if arguments else 1
        if n < 1:
            raise HandledError(f"control {command}: N must be at least 1, got {n}")
        return {"n": n}
    if command == "autoscale":
        return {"max": _number(arguments[0], "MAX"), "min": _number(arguments[1], "MIN")}
    if command in ("add_consumer", "cancel_consumer"):
        return {"queue": arguments[0]}
    if command == "rate_limit":
        rate: str | None = arguments[1]
        if rate in ("0", "none", "None", ""):
            rate = None
        return {"task_name": arguments[0], "rate_limit": rate}
    if command == "time_limit":
        soft = _number(arguments[1], "SOFT", float)
        hard = _number(arguments[2], "HARD", float) if len(arguments) > 2 else None
        return {"task_name": arguments[0], "soft": soft, "hard": hard}
    return {}


@cli.command()
@click.argument("command")
@click.argument("arguments", nargs=-1)
@click.option("--terminate", is_flag=True, help="revoke: also stop the task where it runs (processes pool).")
@click.option("--signal", "signal_name", default="SIGTERM", show_default=True, help="revoke --terminate: signal.")
@click.option("--args", "args_json", metavar="JSON", help="Arguments of a plugin's command as a JSON object.")
@click.option("-d", "--destination", help=_OPTIONS_HELP)
@click.option("-t", "--timeout", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def control(
    command: str,
    arguments: tuple[str, ...],
    terminate: bool,
    signal_name: str,
    args_json: str | None,
    destination: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Change the workers: revoke, terminate, shutdown, pool_grow, pool_shrink, autoscale,
    add_consumer, cancel_consumer, rate_limit, time_limit, enable_events, disable_events."""
    app = get_app()
    plugin_commands = sorted(set(app.plugins.control_commands()) - set(CONTROL_COMMANDS) - set(INSPECT_COMMANDS))
    if command not in CONTROL_COMMANDS and command not in plugin_commands:
        known = [*CONTROL_COMMANDS, *plugin_commands]
        raise HandledError(f"control: unknown command {command!r}; choose from {', '.join(known)}")
    if command in CONTROL_COMMANDS:
        if args_json is not None:
            usage = f"celeriac control {command} {CONTROL_COMMANDS[command][0]}".rstrip()
            raise HandledError(f"control {command}: --args is for plugin commands only; usage: {usage}")
        payload = _control_arguments(command, arguments, terminate, signal_name)
    else:
        if arguments:
            raise HandledError(f"control {command}: pass its arguments with --args JSON")
        payload = {}
        if args_json:
            try:
                payload = json.loads(args_json)
            except ValueError as exc:
                raise HandledError(f"--args: not valid JSON ({exc}); expected e.g. '{{\"n\": 1}}'") from None
            if not isinstance(payload, dict):
                raise HandledError("--args: expected a JSON object, e.g. '{\"n\": 1}'")
    method = "revoke" if command == "terminate" else command
    replies_list = app.control.broadcast(
        method, payload, destination=_destination(destination), reply=True, timeout=timeout
    )
    replies: dict[str, Any] = {}
    for item in replies_list:
        replies.update(item)
    if not replies:
        raise _no_reply(timeout)
    if as_json:
        click.echo(_to_json(replies))
        return
    if not _print_replies(replies):
        sys.exit(1)


# -- events ---------------------------------------------------------------------------------

_TASK_FIELDS = ("name", "args", "kwargs", "result", "exception", "runtime", "retries", "queue")


def format_event(event: dict[str, Any]) -> str:
    """One line per event: time, type, hostname, then the event's notable fields."""
    stamp = event.get("timestamp")
    when = datetime.fromtimestamp(stamp).strftime("%H:%M:%S.%f")[:-3] if isinstance(stamp, int | float) else "?"
    kind = event.get("type", "?")
    parts = [when, str(kind), str(event.get("hostname", "?"))]
    if "uuid" in event:
        parts.append(f"uuid={event['uuid']}")
        for name in _TASK_FIELDS:
            if event.get(name) is not None:
                parts.append(f"{name}={event[name]}")
        if kind == "task-revoked":
            parts.append(f"terminated={event.get('terminated')} expired={event.get('expired')}")
    elif str(kind).startswith("worker-"):
        parts.append(f"active={event.get('active')} processed={event.get('processed')} freq={event.get('freq')}")
    return " ".join(parts)


@cli.command()
@click.option("--dump", is_flag=True, help="Print one line per event instead of the live view.")
@click.option("--json", "as_json", is_flag=True, help="With --dump: one JSON object per line.")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=None, help="Stop after this many seconds.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --dump: stop after this many events.")
@click.option("--tasks", "task_rows", type=click.IntRange(1, 500), default=20, show_default=True, help="Tasks shown.")
def events(dump: bool, as_json: bool, timeout: float | None, limit: int | None, task_rows: int) -> None:
    """Watch the cluster: a live view of workers and recent tasks (or --dump every event).

    Task events need workers started with -E (or `celeriac control enable_events`)."""
    app = get_app()
    if not dump and not sys.stdout.isatty():
        click.echo("-> celeriac events: stdout is not a terminal, so one line per event (as --dump)", err=True)
        dump = True
    if dump:
        with app.events.Receiver() as receiver:
            click.echo(f"-> celeriac events: listening on {receiver.channel}", err=True)
            for event in receiver.itercapture(limit=limit, timeout=timeout):
                click.echo(json.dumps(event, default=repr) if as_json else format_event(event))
        return
    try:
        import rich  # noqa: F401
    except ImportError:
        raise HandledError("the live events view needs the 'monitor' extra: pip install 'celeriac[monitor]'") from None
    _live_view(app, timeout, task_rows)


def render_view(state: State, task_rows: int = 20, now: float | None = None) -> Any:
    """One frame of the live view (a ``rich`` renderable): the workers, then the newest tasks."""
    from rich.console import Group
    from rich.table import Table

    workers = Table(title=f"Workers ({len(state.alive_workers())} alive)", expand=True)
    for column in ("worker", "status", "active", "processed", "load", "last heartbeat"):
        workers.add_column(column)
    now = time.time() if now is None else now
    for worker in list(state.workers.values()):
        beat = worker.last_heartbeat
        workers.add_row(
            worker.hostname,
            "[green]online[/]" if worker.alive else "[red]offline[/]",
            str(worker.active if worker.active is not None else "-"),
            str(worker.processed if worker.processed is not None else "-"),
            " ".join(f"{value:.2f}" for value in worker.loadavg or []) or "-",
            f"{now - beat:.1f}s ago" if beat else "-",
        )
    tasks = Table(title=f"Recent tasks ({state.task_count} seen, {state.event_count} events)", expand=True)
    for column in ("uuid", "name", "state", "worker", "args", "result / exception", "runtime"):
        tasks.add_column(column, overflow="fold")
    colors = {"SUCCESS": "green", "FAILURE": "red", "REVOKED": "magenta", "RETRY": "yellow", "STARTED": "cyan"}
    for task in state.tasks_by_time(limit=task_rows):
        color = colors.get(task.state, "white")
        tasks.add_row(
            task.uuid,
            task.name or "?",
            f"[{color}]{task.state}[/]",
            task.worker or "-",
            f"{task.args or ''} {task.kwargs or ''}".strip() or "-",
            task.exception or task.result or "-",
            f"{task.runtime:.3f}s" if task.runtime is not None else "-",
        )
    return Group(workers, tasks)


def _live_view(app: Any, timeout: float | None, task_rows: int) -> None:
    import threading

    from rich.live import Live

    state: State = app.events.State()
    receiver = app.events.Receiver(handlers={"*": state.event})
    thread = threading.Thread(target=receiver.capture, kwargs={"timeout": timeout}, daemon=True)
    thread.start()
    try:
        with Live(render_view(state, task_rows), refresh_per_second=4, screen=False) as live:
            while thread.is_alive():
                thread.join(0.25)
                live.update(render_view(state, task_rows))
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()
