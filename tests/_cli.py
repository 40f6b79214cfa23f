"""Shared helpers for tests that run the ``celeriac`` CLI as a subprocess.

Import as ``from tests._cli import CELERIAC, FIXTURES, Process, cli_env`` (pytest's importlib mode
resolves ``tests`` from the rootdir)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from celeriac.testing import wait_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The installed console script (tests the entry point, not just the module).
CELERIAC = str(Path(sys.executable).with_name("celeriac"))


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without ``CELERIAC_*`` variables, with tests/fixtures on ``PYTHONPATH``,
    unbuffered output, and ``extra`` added."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Process:
    """A running CLI process (``args`` after ``celeriac``) whose stderr lines (the log) are
    collected by a reader thread into ``lines``; stdout and stdin go to ``/dev/null``."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [CELERIAC, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr so far (all of it once it has exited and been closed)."""
        return "\n".join(self.lines)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 30) -> str:
        """The first stderr line containing ``pattern`` (a string, or a regex searched for);
        ``AssertionError`` with the log if none comes within ``timeout`` or the process exits first."""

        def found() -> str | None:
            for line in list(self.lines):
                if (pattern in line) if isinstance(pattern, str) else pattern.search(line):
                    return line
            return None

        def found_or_exited() -> bool:
            return found() is not None or (self.proc.poll() is not None and not self._reader.is_alive())

        with contextlib.suppress(AssertionError):  # reported below, with the log
            wait_for(found_or_exited, timeout=timeout, interval=0.02)
        line = found()
        if line is None:
            raise AssertionError(f"no log line with {pattern!r}; got:\n{self.stderr}")
        return line

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (warm shutdown) unless it has exited; wait, close, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        """Kill it if still running, read its stderr to the end and close the pipe."""
        self.kill()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
