"""pytest plugin shipped with celeriac (registered through the ``pytest11`` entry point).

Fixtures:

* ``celeriac_config`` — override to return settings for the app (default: an isolated
  in-memory broker and result store);
* ``celeriac_app`` — a fresh :class:`~celeriac.Celeriac` per test, closed afterwards;
* ``celeriac_worker`` — a worker running ``celeriac_app`` in this process (threads pool).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celeriac import Celeriac
    from celeriac.worker import Worker


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``timeout`` mark the conformance suites use, for projects without
    pytest-timeout (there it is a no-op; with pytest-timeout it bounds each test)."""
    config.addinivalue_line("markers", "timeout(seconds): fail the test after this many seconds (pytest-timeout)")


@pytest.fixture
def celeriac_config() -> dict[str, Any]:
    """Settings for ``celeriac_app``; override in your conftest to use another broker."""
    name = uuid.uuid4().hex
    return {"broker_url": f"memory://{name}", "result_store": f"memory://{name}"}


@pytest.fixture
def celeriac_app(celeriac_config: dict[str, Any]) -> Iterator[Celeriac]:
    """A fresh app per test, built from ``celeriac_config`` (environment variables ignored)."""
    from celeriac import Celeriac

    app = Celeriac("tests", environ={}, **celeriac_config)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def celeriac_worker(celeriac_app: Celeriac) -> Iterator[Worker]:
    """A worker for ``celeriac_app`` running in this process for the duration of the test."""
    from celeriac.testing import start_worker

    with start_worker(celeriac_app, pool="threads", concurrency=2) as worker:
        yield worker
