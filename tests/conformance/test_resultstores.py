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


def sqlite_store(request: pytest.FixtureRequest, unique: str) -> MakeStore:
    """``sqlite:///<tmp_path>/results-<unique>.db``: a fresh file per test."""
    tmp_path = request.getfixturevalue("tmp_path")
    return _via_plugin(f"sqlite:///{tmp_path / f'results-{unique}.db'}")


def redis_store(request: pytest.FixtureRequest, unique: str) -> MakeStore:
    """``redis://127.0.0.1:6379/14`` with key prefix ``rs-<unique>:``, deleted afterwards."""
    import functools

    from celeriac.plugins.redis import _testing

    url, prefix = _testing.server_url(14), f"rs-{unique}:"
    _testing.require_server(url)
    request.addfinalizer(functools.partial(_testing.delete_keys, url, prefix))
    return _via_plugin(f"{url}?global_keyprefix={prefix}")


STORES = [
    pytest.param(memory_store, id="memory"),
    pytest.param(redis_store, id="redis"),
    pytest.param(sqlite_store, id="sqlite"),
]


class TestResultStoreConformance(ResultStoreSuite):
    @pytest.fixture(params=STORES)
    def make_store(self, request: pytest.FixtureRequest) -> MakeStore:
        factory: Callable[[pytest.FixtureRequest, str], MakeStore] = request.param
        return factory(request, uuid.uuid4().hex)
