"""Blocking reads (``XREADGROUP ... BLOCK``) for fetches that found nothing ready.

They use their own connection pool, whose socket timeout is longer than the longest block, and
remember the server-side client id of every connection so :meth:`BlockingReader.unblock_all`
can end the blocked reads with ``CLIENT UNBLOCK`` (used by ``wake`` and ``close``).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from celeriac.plugins.redis._connection import command_errors, connection_errors

__all__ = ["BlockingReader", "Entry", "Stream"]


class Stream(NamedTuple):
    """A stream to block on: the queue it belongs to, its priority level (-1: the queue's wake
    stream, whose entries only end the wait) and its key."""

    queue: str
    level: int
    key: str


class Entry(NamedTuple):
    """A message read by a blocking read (delivered for the first time from this entry)."""

    stream: Stream
    id: bytes
    head: bytes
    body: bytes
    extra: bytes | None
    earlier_deliveries: int


def _fields(values: Sequence[bytes]) -> tuple[bytes | None, bytes, int, bytes | None]:
    head: bytes | None = None
    body, earlier, extra = b"", 0, None
    for index in range(0, len(values) - 1, 2):
        name = values[index]
        if name == b"h":
            head = values[index + 1]
        elif name == b"b":
            body = values[index + 1]
        elif name == b"n":
            earlier = int(values[index + 1])
        elif name == b"x":
            extra = values[index + 1]
    return head, body, earlier, extra


class BlockingReader:
    """Runs blocking group reads on a dedicated pool; thread-safe."""

    def __init__(self, client: Any, control: Any) -> None:
        self._client = client
        self._control = control
        self._lock = threading.Lock()
        self._ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._blocked: dict[Any, int] = {}

    def _on_connect(self, connection: Any) -> None:
        """redis-py connect callback: the server gave the connection a new client id."""
        connection.send_command("CLIENT", "ID", check_health=False)
        self._ids[connection] = int(connection.read_response())

    def _client_id(self, connection: Any) -> int:
        client_id = self._ids.get(connection)
        if client_id is None:
            connection.register_connect_callback(self._on_connect)
            self._on_connect(connection)
            client_id = self._ids[connection]
        return client_id

    def read(
        self,
        streams: Sequence[Stream],
        group: str,
        consumer: str,
        limit: int,
        seconds: float,
        cancelled: Callable[[], bool],
    ) -> list[Entry]:
        """Block up to ``seconds`` for new entries on ``streams``; ``[]`` on timeout or when
        ``cancelled()`` (checked once the read is registered for :meth:`unblock_all`)."""
        keys = [stream.key for stream in streams]
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            client_id = self._client_id(connection)
            with self._lock:
                self._blocked[connection] = client_id
            try:
                if cancelled():
                    return []
                connection.send_command(
                    "XREADGROUP",
                    "GROUP",
                    group,
                    consumer,
                    "COUNT",
                    limit,
                    "BLOCK",
                    max(int(seconds * 1000), 1),
                    "STREAMS",
                    *keys,
                    *([">"] * len(keys)),
                )
                reply = connection.read_response()
            finally:
                with self._lock:
                    self._blocked.pop(connection, None)
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)
        return self._entries(streams, group, reply) if reply else []

    def _entries(self, streams: Sequence[Stream], group: str, reply: list[Any]) -> list[Entry]:
        by_key = {stream.key.encode(): stream for stream in streams}
        entries: list[Entry] = []
        ticks: list[tuple[str, bytes]] = []
        for key, items in reply:
            stream = by_key[key]
            for entry_id, values in items:
                head, body, earlier, extra = _fields(values or ())
                if stream.level < 0 or head is None:
                    ticks.append((stream.key, entry_id))
                else:
                    entries.append(Entry(stream, entry_id, head, body, extra, earlier))
        if ticks:
            try:
                pipeline = self._control.pipeline(transaction=False)
                for key, entry_id in ticks:
                    pipeline.execute_command("XACK", key, group, entry_id)
                    pipeline.execute_command("XDEL", key, entry_id)
                pipeline.execute()
            except connection_errors:
                pass  # a tick left pending is harmless: the wake stream is capped
        return entries

    def unblock_all(self) -> None:
        """End every blocked read now (they return as if timed out)."""
        with self._lock:
            client_ids = list(self._blocked.values())
        for client_id in client_ids:
            with contextlib.suppress(*command_errors):
                self._control.execute_command("CLIENT", "UNBLOCK", client_id)

    def close(self) -> None:
        """Disconnect the pool."""
        self._client.close()
