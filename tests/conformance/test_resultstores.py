"""Every built-in result store runs the shared conformance suite.

Each ``STORES`` entry is a factory ``(request, unique) -> make(**options)``: ``unique`` is a
fresh name for this test, to use as the store's namespace (a ``memory://`` name, a key prefix,
a database file); ``request`` gives access to other fixtures (``tmp_path``) and lets a factory
skip when its server is not running. Stores backed by a server append their entry here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celeriac import ResultStore
from celeriac.plugins import resultstores
from celeriac.testing.conformance.resultstore import ResultStoreSuite

MakeStore = Callable[..., ResultStore]


def _via_plugin(url: str) -> MakeStore:
    """Open stores for ``url`` through the plugin's hook, as an app would."""
    scheme = url.partition("://")[0]

    def make(**options: Any) -> ResultStore:
        store = resultstores.celeriac_result_store(url=url, scheme=scheme, options=options)
        assert store is not None, f"no store for {url}"
        return store

    return make


def memory_store(request: pytest.FixtureRequest, unique: str) -> MakeStore:
    """``memory://rs-<unique>``: a named in-process store nobody else uses."""
    return _via_plugin(f"memory://rs-{unique}")


STORES = [
    pytest.param(memory_store, id="memory"),
]


class TestResultStoreConformance(ResultStoreSuite):
    @pytest.fixture(params=STORES)
    def make_store(self, request: pytest.FixtureRequest) -> MakeStore:
        factory: Callable[[pytest.FixtureRequest, str], MakeStore] = request.param
        return factory(request, uuid.uuid4().hex)
