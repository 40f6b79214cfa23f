"""Fixtures for the AMQP plugin's tests: a real RabbitMQ, in a virtual host of this test process."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celeriac.plugins.amqp import _testing
from celeriac.plugins.amqp._transport import AMQPTransport


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "exclusive_rabbitmq: changes RabbitMQ for everyone (restart, alarm); holds the test lock exclusively"
    )


@pytest.fixture(autouse=True)
def _broker_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests here use RabbitMQ: hold the machine-wide test lock shared; tests marked
    ``exclusive_rabbitmq`` hold it exclusively (see ``_testing.broker_lock``)."""
    with _testing.broker_lock(exclusive=request.node.get_closest_marker("exclusive_rabbitmq") is not None):
        yield


@pytest.fixture
def amqp_url() -> str:
    """The test server's URL (skips, or fails under CI=true, when RabbitMQ is not running)."""
    _testing.require_server()
    return _testing.server_url()


@pytest.fixture
def open_transport(amqp_url: str) -> Iterator[Callable[..., AMQPTransport]]:
    """``open(**options)`` -> a new transport on the test vhost, closed when the test ends."""
    opened: list[AMQPTransport] = []

    def open_(**options: Any) -> AMQPTransport:
        transport = AMQPTransport(options.pop("url", amqp_url), options)
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    """A unique queue name; the queue and its dead-letter queue are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    _testing.delete_queues(amqp_url, name)
