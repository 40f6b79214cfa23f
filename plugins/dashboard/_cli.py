"""``celeriac dashboard``: serve the dashboard with uvicorn."""

from __future__ import annotations

import errno
import getpass
import importlib
import socket
import sys
from typing import Any

import celeriac
import click

__all__ = ["dashboard_command"]


def _require_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        from celeriac import ConfigError

        raise ConfigError("the dashboard needs the 'dashboard' extra: pip install 'celeriac[dashboard]'") from None


@click.command("dashboard")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1; others need authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port to listen on (default 5555).")
@click.option("--read-only", is_flag=True, default=None, help="Show the cluster but refuse every action.")
@click.option("--history-db", metavar="FILE", default=None, help="SQLite file that keeps task history across restarts.")
@click.option(
    "--hash-password",
    is_flag=True,
    help="Ask for a password, print its hash for [celeriac.dashboard] password_hash, and exit.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="With --hash-password: read the password from the first line of standard input (no prompt).",
)
def dashboard_command(
    host: str | None,
    port: int | None,
    read_only: bool | None,
    history_db: str | None,
    hash_password: bool,
    password_stdin: bool,
) -> None:
    """Serve the web dashboard: live workers, tasks, queues and graphs, with remote control."""
    from ._security import check_bind
    from ._security import hash_password as make_hash
    from ._settings import DashboardConfig

    if password_stdin and not hash_password:
        raise click.UsageError("--password-stdin goes with --hash-password")
    if hash_password:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("password: ")
            if password != getpass.getpass("again: "):
                raise click.UsageError("the passwords differ")
        if not password:
            raise click.UsageError("the password is empty")
        click.echo(make_hash(password))
        return
    _require_extra()
    import uvicorn

    from ._web import create_app

    app: celeriac.Celeriac = importlib.import_module("celeriac.cli").get_app()  # documented for plugin commands
    config = DashboardConfig.from_conf(app.conf, host=host, port=port, read_only=read_only, history_db=history_db)
    check_bind(config)
    listener = bind(config.host, config.port)  # before anything is printed: a busy port is a one-line error
    try:
        web = create_app(app, config)
        click.echo(f"celeriac dashboard: http://{_url_host(config.host)}:{config.port}/ (ctrl-c to stop)", err=True)
        options: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 2, "proxy_headers": False}
        server = uvicorn.Server(uvicorn.Config(web, host=config.host, port=config.port, **options))
        server.run(sockets=[listener])
    finally:
        listener.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line :class:`celeriac.ConfigError`."""
    from celeriac import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"dashboard: port {port} is out of range; use 1-65535 (--port or [celeriac.dashboard] port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"dashboard: cannot resolve host {host!r}: {exc.strerror}; check --host") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"dashboard: port {port} on {host} is in use; stop what listens there or pick another with --port"
            ) from None
        raise ConfigError(f"dashboard: cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
