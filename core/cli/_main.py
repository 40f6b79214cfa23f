"""The CLI group, app loading and error handling."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from ..exceptions import ConfigError, HandledError, TransportError

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["cli", "get_app", "main"]


@dataclass
class CliState:
    config_path: str | None
    app_spec: str | None
    app: Celeriac | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def load_app_spec(spec: str, origin: str) -> Celeriac:
    """Import ``module:attribute`` (or ``module``, taking its ``app``) and check it is an app."""
    from ..app import Celeriac

    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{origin}: cannot import {module_name!r}: {exc}") from exc
    attribute = attribute or "app"
    app = getattr(module, attribute, None)
    if not isinstance(app, Celeriac):
        raise ConfigError(f"{origin}: {spec!r} is not a Celeriac app (expected module:attribute)")
    return app


def get_app(ctx: click.Context | None = None) -> Celeriac:
    """The app for this CLI invocation: ``-A``, else the config's ``app`` key, else built from the config."""
    from ..app import Celeriac
    from ..config import discover_config_file, read_config_file

    ctx = ctx or click.get_current_context()
    state = _state(ctx.find_root())
    if state.app is None:
        if state.app_spec:
            if state.config_path:  # the app built in code discovers its config: point it at --config
                discover_config_file(state.config_path)  # a missing file is the same one-line error
                os.environ["CELERIAC_CONFIG"] = state.config_path
            app = load_app_spec(state.app_spec, "-A/--app")
        else:
            source = discover_config_file(state.config_path)
            spec = read_config_file(source).get("app")
            if isinstance(spec, str) and spec:
                app = load_app_spec(spec, f"{source}: [celeriac] app")
            else:
                app = Celeriac(config_source=source)
        app.set_current()
        app.import_modules()
        state.app = app
    return state.app


def _state(root: click.Context) -> CliState:
    if root.obj is None:
        root.obj = CliState(config_path=root.params.get("config_path"), app_spec=root.params.get("app_spec"))
    state: CliState = root.obj
    return state


class CeleriacGroup(click.Group):
    """A group that also offers the commands plugins register."""

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        try:
            app = get_app(ctx)
        except (HandledError, AttributeError):
            return {}
        return {command.name: command for command in app.plugins.cli_commands() if command.name}

    def list_commands(self, ctx: click.Context) -> list[str]:
        # ``--help`` is eager: it lists commands before ``--config``/``-A`` are parsed, so the
        # plugin commands then come from the discovered config (or the defaults).
        names = set(super().list_commands(ctx)) | set(self._plugin_commands(ctx))
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            command = self._plugin_commands(ctx).get(cmd_name)
        return command


@click.group(cls=CeleriacGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Config file (default: $CELERIAC_CONFIG, ./celeriac.toml, or [tool.celeriac] in ./pyproject.toml).",
)
@click.option("-A", "--app", "app_spec", metavar="MODULE:APP", help="Use an app built in code instead of the config.")
@click.version_option(package_name="celeriac", prog_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, app_spec: str | None) -> None:
    """celeriac: a distributed task queue assembled from plugins."""
    _state(ctx)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``celeriac`` script: one-line errors, meaningful exit codes."""
    from . import _beat, _commands, _monitor  # noqa: F401 - registers the built-in commands

    try:
        code = cli.main(args=argv, prog_name="celeriac", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HandledError as exc:
        click.echo(f"celeriac: {exc}", err=True)
        sys.exit(exc.exit_code)
    except TransportError as exc:  # the broker is unreachable: say so in one line
        click.echo(f"celeriac: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
