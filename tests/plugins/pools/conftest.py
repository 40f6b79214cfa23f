"""Fixtures for the pool tests: ``make_app`` builds fresh apps on the in-memory transport and on
real Redis (database 11, a key prefix per test, deleted afterwards; under ``CI=true`` a missing
Redis fails the test) and on SQLite (a file per test)."""

from __future__ import annotations

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
