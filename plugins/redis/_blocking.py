"""Blocking reads (``XREADGROUP ... BLOCK``) for fetches that found nothing ready.

They use their own connections (made by a redis-py pool whose socket timeout is longer than the
longest block, then read with :mod:`._wire`'s lean RESP path) and remember the server-side client
id of every connection so :meth:`BlockingReader.unblock_all` can end the blocked reads with
``CLIENT UNBLOCK`` (used by ``wake`` and ``close``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis
from celeriac.plugins.redis._connection import command_errors, connection_errors
from celeriac.plugins.redis._wire import Connection

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
    """Runs blocking group reads on connections of a dedicated pool; thread-safe.

    The reads go through :mod:`._wire`'s lean RESP path (redis-py opens the connections);
    each connection's server-side client id is asked once, when it is opened.
    """

    def __init__(self, client: Any, control: Any) -> None:
        self._client = client
        self._control = control
        self._lock = threading.Lock()
        self._idle: list[tuple[Connection, int]] = []
        self._blocked: dict[Connection, int] = {}
        self._closed = False

    def _take(self) -> tuple[Connection, int]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        connection = Connection(self._client.connection_pool.make_connection())
        try:
            client_id = connection.request(["CLIENT", "ID"])
            if not isinstance(client_id, int):
                raise redis.exceptions.ResponseError(f"CLIENT ID answered {client_id!r}")
        except BaseException:
            connection.close()
            raise
        return connection, client_id

    def read(
        self,
        streams: Sequence[Stream],
        group: str,
        consumer: str,
        limit: int,
        seconds: float,
        cancelled: Callable[[], bool],
        *,
        precise: bool = False,
    ) -> tuple[list[Entry], bool]:
        """Block up to ``seconds`` for new entries on ``streams``; ``[]`` on timeout or when
        ``cancelled()`` (checked once the read is registered for :meth:`unblock_all`). The
        flag says whether a wake-up entry was read.

        Redis ends a ``BLOCK`` that timed out only at its next cron tick (every 100 ms with the
        default ``hz 10``), so a block can return up to 100 ms late. With ``precise`` this
        side keeps the time: when nothing came in ``seconds``, ``CLIENT UNBLOCK`` ends the
        read (used when the block ends at a delayed message's due time).
        """
        keys = [stream.key for stream in streams]
        connection, client_id = self._take()
        reusable = False
        try:
            with self._lock:
                self._blocked[connection] = client_id
            if cancelled():
                reusable = True
                return [], False
            command = ["XREADGROUP", "GROUP", group, consumer, "COUNT", limit, "BLOCK", max(int(seconds * 1000), 1)]
            connection.send_command([*command, "STREAMS", *keys, *([">"] * len(keys))])
            if precise and not connection.wait_readable(seconds):
                self._control.execute_command("CLIENT", "UNBLOCK", client_id)  # the reply follows
            reply = connection.read()
            reusable = True
        finally:
            with self._lock:
                self._blocked.pop(connection, None)
                kept = reusable and not self._closed
                if kept:
                    self._idle.append((connection, client_id))
            if not kept:
                connection.close()
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return self._entries(streams, group, reply) if reply else ([], False)

    def _entries(self, streams: Sequence[Stream], group: str, reply: list[Any]) -> tuple[list[Entry], bool]:
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
        return entries, bool(ticks)

    def unblock_all(self) -> None:
        """End every blocked read now (they return as if timed out)."""
        with self._lock:
            client_ids = list(self._blocked.values())
        for client_id in client_ids:
            with contextlib.suppress(*command_errors):
                self._control.execute_command("CLIENT", "UNBLOCK", client_id)

    def close(self) -> None:
        """Disconnect every connection."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()
        self._client.close()
