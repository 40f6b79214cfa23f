"""Helpers for tests that need a real Redis (celeriac's own and the conformance entries).

The server is ``$CELERIAC_TEST_REDIS`` (default ``redis://127.0.0.1:6379``); each test picks a
database number and a key prefix of its own and deletes its keys afterwards. When the server
is not running, tests skip with a message saying how to start it -- except under ``CI=true``,
where they fail, so a CI machine without Redis cannot pass by skipping.
"""

from __future__ import annotations

import os

import redis

__all__ = ["delete_keys", "require_server", "server_url"]


def server_url(database: int) -> str:
    """The test server's URL for ``database``."""
    base = os.environ.get("CELERIAC_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")
    return f"{base}/{database}"


def require_server(url: str) -> None:
    """Skip the calling test (fail it under ``CI=true``) when no Redis answers at ``url``."""
    import pytest

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        message = (
            f"no Redis at {url} ({exc}); start one with `redis-server --daemonize yes --port 6379` "
            f"or point CELERIAC_TEST_REDIS at one"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    finally:
        client.close()


def delete_keys(url: str, prefix: str) -> int:
    """Delete every key of ``url``'s database that starts with ``prefix``; returns how many."""
    if not prefix:
        raise ValueError("refusing to delete every key: give a prefix")
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    except (redis.exceptions.RedisError, OSError):
        return 0
    finally:
        client.close()
