"""Fixtures for the pool tests: ``make_app`` builds fresh apps on the in-memory transport and on
real Redis (database 11, a key prefix per test, deleted afterwards; under ``CI=true`` a missing
Redis fails the test) and on SQLite (a file per test)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import Celeriac

REDIS_DB = 11


@pytest.fixture(params=["memory", "redis", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Broker and result-store URLs of a fresh, isolated backend."""
    name = uuid.uuid4().hex[:12]
    if request.param == "memory":
        yield {"broker_url": f"memory://{name}", "result_store": f"memory://{name}"}
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        yield {"broker_url": url, "result_store": url}
        return
    from celeriac.plugins.redis import _testing

    server = _testing.server_url(REDIS_DB)
    _testing.require_server(server)
    url = f"{server}?global_keyprefix=pools-{name}:"
    yield {"broker_url": url, "result_store": url}
    _testing.delete_keys(server, f"pools-{name}:")


@pytest.fixture
def make_app(backend: dict[str, str]) -> Iterator[Callable[..., Celeriac]]:
    """Build apps on ``backend`` with extra settings (environment variables ignored); all are
    closed afterwards."""
    apps: list[Celeriac] = []

    def make(**settings: Any) -> Celeriac:
        application = Celeriac("tests", environ={}, **backend, **settings)
        apps.append(application)
        return application

    yield make
    for application in apps:
        application.close()


class Outcomes:
    """What the pool hands to ``on_done`` / ``on_error``, waitable."""

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.errors: list[BaseException] = []
        self._changed = threading.Condition()

    def on_done(self, value: Any) -> None:
        with self._changed:
            self.done.append(value)
            self._changed.notify_all()

    def on_error(self, exc: BaseException) -> None:
        with self._changed:
            self.errors.append(exc)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        with self._changed:
            finished = self._changed.wait_for(lambda: len(self.done) + len(self.errors) >= count, timeout)
        assert finished, f"only {len(self.done)} done and {len(self.errors)} failed of {count}"
