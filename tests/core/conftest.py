"""Fixtures for the workflow tests (canvas, retries, rate limits).

``workflow_app`` is parametrized over :data:`WORKFLOW_BACKENDS`: each entry builds the settings
of a fresh, isolated app: memory, Redis (real server, database 15, a key prefix per test) and
SQLite (a file per test). Every test that takes ``workflow_app`` runs on each. Entries that need
a server skip (or, under ``CI=true``, fail) when it is not reachable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celeriac import Celeriac


def _memory(name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"broker_url": f"memory://{name}", "result_store": f"memory://{name}"}


def _sqlite(name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    url = f"sqlite:///{request.getfixturevalue('tmp_path') / f'{name}.db'}"
    return {"broker_url": url, "result_store": url}


def _redis(name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Database 15 with a key prefix per test, deleted afterwards (fails under CI=true without Redis)."""
    import functools

    from celeriac.plugins.redis import _testing

    server = _testing.server_url(15)
    _testing.require_server(server)
    request.addfinalizer(functools.partial(_testing.delete_keys, server, f"{name}:"))
    url = f"{server}?global_keyprefix={name}:"
    return {"broker_url": url, "result_store": url}


#: Broker/result-store combinations the workflow tests run on.
WORKFLOW_BACKENDS: dict[str, Callable[[str, pytest.FixtureRequest], dict[str, Any]]] = {
    "memory": _memory,
    "redis": _redis,
    "sqlite": _sqlite,
}


@pytest.fixture(params=sorted(WORKFLOW_BACKENDS))
def workflow_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of an isolated app on one of :data:`WORKFLOW_BACKENDS`."""
    settings: dict[str, Any] = WORKFLOW_BACKENDS[request.param](uuid.uuid4().hex, request)
    return settings


@pytest.fixture
def workflow_app(workflow_settings: dict[str, Any]) -> Iterator[Celeriac]:
    """A fresh app on each workflow backend (environment variables ignored)."""
    application = Celeriac("tests", environ={}, **workflow_settings)
    try:
        yield application
    finally:
        application.close()
