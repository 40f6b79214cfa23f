"""Every built-in transport runs the shared conformance suite.

Each ``TRANSPORTS`` entry is a factory ``(request, unique) -> make(**options)``: ``unique`` is a
fresh name for this test, to use as the transport's namespace (a ``memory://`` name, a key
prefix, a database file); ``request`` gives access to other fixtures (``tmp_path``) and lets a
factory skip when its server is not running. Transports backed by a server append their entry
here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celeriac import Transport
from celeriac.plugins import inmemory
from celeriac.testing.conformance.transport import TransportSuite

MakeTransport = Callable[..., Transport]


def _via_plugin(url: str, hook: Callable[..., Transport | None]) -> MakeTransport:
    """Open transports for ``url`` through a plugin's ``celeriac_transport`` hook, as an app would."""
    scheme = url.partition("://")[0]

    def make(**options: Any) -> Transport:
        transport = hook(url=url, scheme=scheme, options=options)
        assert transport is not None, f"no transport for {url}"
        return transport

    return make


def memory_transport(request: pytest.FixtureRequest, unique: str) -> MakeTransport:
    """``memory://conformance-<unique>``: a named in-process broker nobody else uses."""
    return _via_plugin(f"memory://conformance-{unique}", inmemory.celeriac_transport)


def sqlite_transport(request: pytest.FixtureRequest, unique: str) -> MakeTransport:
    """``sqlite:///<tmp_path>/broker-<unique>.db``: a fresh file per test."""
    from celeriac.plugins import sqlite

    tmp_path = request.getfixturevalue("tmp_path")
    return _via_plugin(f"sqlite:///{tmp_path / f'broker-{unique}.db'}", sqlite.celeriac_transport)


def redis_transport(request: pytest.FixtureRequest, unique: str) -> MakeTransport:
    """``redis://127.0.0.1:6379/13`` with key prefix ``conformance-<unique>:``, deleted afterwards."""
    import functools

    from celeriac.plugins import redis
    from celeriac.plugins.redis import _testing

    url, prefix = _testing.server_url(13), f"conformance-{unique}:"
    _testing.require_server(url)
    request.addfinalizer(functools.partial(_testing.delete_keys, url, prefix))
    return _via_plugin(f"{url}?global_keyprefix={prefix}", functools.partial(redis.celeriac_transport, app=None))


def amqp_transport(request: pytest.FixtureRequest, unique: str) -> MakeTransport:
    """RabbitMQ at 127.0.0.1:5672, in a virtual host of this test process (deleted at exit)."""
    from celeriac.plugins import amqp
    from celeriac.plugins.amqp import _testing

    _testing.require_server()
    lock = _testing.broker_lock()  # shared: no other process restarts RabbitMQ meanwhile
    lock.__enter__()
    request.addfinalizer(lambda: lock.__exit__(None, None, None))
    return _via_plugin(_testing.server_url(), amqp.celeriac_transport)


TRANSPORTS = [
    pytest.param(memory_transport, id="memory"),
    pytest.param(amqp_transport, id="amqp"),
    pytest.param(redis_transport, id="redis"),
    pytest.param(sqlite_transport, id="sqlite"),
]


class TestTransportConformance(TransportSuite):
    @pytest.fixture(params=TRANSPORTS)
    def make_transport(self, request: pytest.FixtureRequest) -> MakeTransport:
        factory: Callable[[pytest.FixtureRequest, str], MakeTransport] = request.param
        return factory(request, uuid.uuid4().hex)
