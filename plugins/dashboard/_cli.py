"""``celeriac dashboard``: serve the dashboard with uvicorn."""

from __future__ import annotations

import getpass
import importlib
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
@click.option("--port", type=int, default=None, help="Port to listen on (default 5555).")
@click.option("--read-only", is_flag=True, default=None, help="Show the cluster but refuse every action.")
@click.option("--history-db", metavar="FILE", default=None, help="SQLite file that keeps task history across restarts.")
@click.option(
    "--hash-password",
    is_flag=True,
    help="Ask for a password, print its hash for [celeriac.dashboard] password_hash, and exit.",
)
def dashboard_command(
    host: str | None, port: int | None, read_only: bool | None, history_db: str | None, hash_password: bool
) -> None:
    """Serve the web dashboard: live workers, tasks, queues and graphs, with remote control."""
    from ._security import check_bind
    from ._security import hash_password as make_hash
    from ._settings import DashboardConfig

    if hash_password:
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            raise click.UsageError("the passwords differ")
        click.echo(make_hash(password))
        return
    _require_extra()
    import uvicorn

    from ._web import create_app

    app: celeriac.Celeriac = importlib.import_module("celeriac.cli").get_app()  # documented for plugin commands
    config = DashboardConfig.from_conf(app.conf, host=host, port=port, read_only=read_only, history_db=history_db)
    check_bind(config)
    web = create_app(app, config)
    click.echo(f"celeriac dashboard: http://{_url_host(config.host)}:{config.port}/ (ctrl-c to stop)", err=True)
    options: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 2, "proxy_headers": False}
    uvicorn.run(web, host=config.host, port=config.port, **options)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
