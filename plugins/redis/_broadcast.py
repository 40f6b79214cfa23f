"""Broadcast subscriptions of the Redis transport: one pub/sub connection each."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import celeriac
from celeriac.plugins.redis._codec import unframe
from celeriac.plugins.redis._connection import connection_errors

__all__ = ["RedisSubscription"]

#: Longest single read, so ``close`` from another thread never waits long for the lock.
_READ_SLICE = 0.25


class RedisSubscription(celeriac.Subscription):
    """A subscriber of one pub/sub channel; active (confirmed by Redis) once constructed.

    After a lost connection the next :meth:`get` reconnects and subscribes again (redis-py
    does that on connect); broadcasts sent meanwhile are lost, as pub/sub is not durable.
    """

    def __init__(self, client: Any, channel: str, *, timeout: float, where: str) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._closed = False
        self._pubsub: Any = client.pubsub(ignore_subscribe_messages=False)
        deadline = time.monotonic() + timeout
        try:
            self._pubsub.subscribe(channel)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise celeriac.TransportError(f"redis at {where} did not confirm the subscription to {channel!r}")
                message = self._pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    return
        except connection_errors as exc:
            self._pubsub.close()
            raise celeriac.TransportError(f"cannot subscribe to broadcasts on redis at {where}: {exc}") from None
        except BaseException:
            self._pubsub.close()
            raise

    def get(self, timeout: float) -> celeriac.Envelope | None:
        """Wait up to ``timeout`` seconds for the next broadcast; ``None`` when none came."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            with self._lock:
                if self._closed:
                    return None
                try:
                    message = self._pubsub.get_message(timeout=max(0.0, min(remaining, _READ_SLICE)))
                except connection_errors:
                    message = None
                    failed = True
                else:
                    failed = False
            if message is not None and message["type"] == "message":
                return unframe(message["data"])
            if remaining <= 0:
                return None
            if failed:  # reconnects on the next read; do not spin meanwhile
                time.sleep(min(0.1, max(remaining, 0.0)))

    def close(self) -> None:
        """Stop receiving; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(*connection_errors):
                self._pubsub.close()
