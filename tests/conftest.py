"""Shared fixtures. Each test gets fresh apps on uniquely named in-memory brokers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celeriac import Celeriac

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put tests/fixtures on sys.path so config files can name the fixture modules."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    return FIXTURES


@pytest.fixture
def app() -> Iterator[Celeriac]:
    """A fresh app on its own memory broker and result store, ignoring CELERIAC_* variables."""
    name = uuid.uuid4().hex
    application = Celeriac("tests", broker_url=f"memory://{name}", result_store=f"memory://{name}", environ={})
    try:
        yield application
    finally:
        application.close()


@pytest.fixture(autouse=True)
def _quiet_worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac")


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default broker is ``sqlite:///celeriac.db`` in the working directory: keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)
