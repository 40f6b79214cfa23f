"""Fixtures for the workflow tests (canvas, retries, rate limits).

``workflow_app`` is parametrized over :data:`WORKFLOW_BACKENDS`: each entry builds the settings
of a fresh, isolated app. Only the in-memory broker and store are listed today; when the Redis
and RabbitMQ plugins land, add their entries here (for example
``"redis": lambda name: {"broker_url": "redis://127.0.0.1:6379/0", "result_store": "redis://127.0.0.1:6379/1",
"broker_transport_options": {"global_keyprefix": name}}``) and every test that takes
``workflow_app`` runs on them too. Entries that need a server should skip (or, under
``CI=true``, fail) when it is not reachable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celeriac import Celeriac


def _memory(name: str) -> dict[str, Any]:
    return {"broker_url": f"memory://{name}", "result_store": f"memory://{name}"}


#: Broker/result-store combinations the workflow tests run on (the hook for Redis and AMQP).
WORKFLOW_BACKENDS: dict[str, Callable[[str], dict[str, Any]]] = {"memory": _memory}


@pytest.fixture(params=sorted(WORKFLOW_BACKENDS))
def workflow_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of an isolated app on one of :data:`WORKFLOW_BACKENDS`."""
    settings: dict[str, Any] = WORKFLOW_BACKENDS[request.param](uuid.uuid4().hex)
    return settings


@pytest.fixture
def workflow_app(workflow_settings: dict[str, Any]) -> Iterator[Celeriac]:
    """A fresh app on each workflow backend (environment variables ignored)."""
    application = Celeriac("tests", environ={}, **workflow_settings)
    try:
        yield application
    finally:
        application.close()
