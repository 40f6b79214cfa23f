"""Built-in result stores.

* ``memory://`` or ``memory://NAME`` — ``MemoryResultStore``:
  this process only; every instance with the same NAME shares one state.
* ``redis://``, ``rediss://``, ``unix://`` — ``RedisResultStore`` (extra ``redis``).
* ``sqlite:///path/to/file.db`` — ``SQLiteResultStore`` (stdlib ``sqlite3``).

Each store lives in a private module that is imported only when its scheme is selected, so a
store's third-party library (``redis``, ...) is never imported by a deployment that does not
use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import celeriac

__all__ = ["celeriac_result_store", "celeriac_result_store_schemes"]

REDIS_SCHEMES = ("redis", "rediss", "unix")


@celeriac.hookimpl
def celeriac_result_store(url: str, scheme: str, options: Mapping[str, Any]) -> celeriac.ResultStore | None:
    """Create the store for ``url`` when this plugin serves ``scheme``."""
    if scheme == "memory":
        from celeriac.plugins.resultstores._memory import MemoryResultStore

        return MemoryResultStore(url, options)
    if scheme in REDIS_SCHEMES:
        from celeriac.plugins.resultstores._redis import RedisResultStore

        return RedisResultStore(url, options)
    if scheme == "sqlite":
        from celeriac.plugins.resultstores._sqlite import SQLiteResultStore

        return SQLiteResultStore(url, options)
    return None


@celeriac.hookimpl
def celeriac_result_store_schemes() -> Sequence[str]:
    """The URL schemes served here."""
    return ["memory", *REDIS_SCHEMES, "sqlite"]
