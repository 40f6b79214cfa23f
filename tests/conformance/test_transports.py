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


TRANSPORTS = [
    pytest.param(memory_transport, id="memory"),
]


class TestTransportConformance(TransportSuite):
    @pytest.fixture(params=TRANSPORTS)
    def make_transport(self, request: pytest.FixtureRequest) -> MakeTransport:
        factory: Callable[[pytest.FixtureRequest, str], MakeTransport] = request.param
        return factory(request, uuid.uuid4().hex)
