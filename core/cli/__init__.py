"""The ``celeriac`` command line (click).

``celeriac [--config FILE] [-A module:app] COMMAND``; built-in commands are in
:mod:`celeriac.cli._commands`, plugins add more through the ``celeriac_cli_commands`` hook.
User errors print one line (``celeriac: ...``) and exit non-zero, never a traceback.
"""

from __future__ import annotations

from ._main import cli, get_app, main

__all__ = ["cli", "get_app", "main"]
