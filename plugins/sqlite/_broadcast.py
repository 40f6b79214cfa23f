"""Broadcast channels emulated in the file: a table of recent broadcasts.

``broadcast`` inserts a row into ``celeriac_broadcasts`` (and, now and then, deletes rows older
than ``broadcast_ttl``). A subscription starts at the table's last id
(``sqlite_sequence``, so deleted rows do not matter) and reads the rows of its channel with
higher ids, in order: every broadcast committed after :meth:`SQLiteTransport.subscribe`
returned is seen, none from before. Like a fetch, ``get`` waits 1 ms, 2 ms ... up to
``polling_interval`` and starts again at 1 ms when the file changed or a transport of this
process wrote. Nothing is kept for subscribers that come later, and one that does not read for
longer than ``broadcast_ttl`` misses what was swept meanwhile.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable

import celeriac
from celeriac.plugins.sqlite._database import MIN_WAIT, Database, Notifier, decode_envelope, dumps_data

__all__ = ["SQLiteSubscription", "insert_broadcast", "last_broadcast_id"]

_INSERT = (
    "INSERT INTO celeriac_broadcasts (channel, created_at, body, content_type, content_encoding, headers, properties)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_AFTER = (
    "SELECT id, body, content_type, content_encoding, headers, properties FROM celeriac_broadcasts"
    " WHERE channel = ? AND id > ? ORDER BY id LIMIT 100"
)


def insert_broadcast(
    connection: sqlite3.Connection, channel: str, envelope: celeriac.Envelope, now: float, sweep_ttl: float | None
) -> None:
    """Record a broadcast; with ``sweep_ttl``, also delete broadcasts older than that (seconds)."""
    connection.execute(
        _INSERT,
        (
            channel,
            now,
            bytes(envelope.body),
            envelope.content_type,
            envelope.content_encoding,
            dumps_data(envelope.headers),
            dumps_data(envelope.properties),
        ),
    )
    if sweep_ttl is not None:
        connection.execute("DELETE FROM celeriac_broadcasts WHERE created_at < ?", (now - sweep_ttl,))


def last_broadcast_id(connection: sqlite3.Connection) -> int:
    """The highest broadcast id ever committed (0 when none was)."""
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'celeriac_broadcasts'").fetchone()
    return 0 if row is None else int(row[0])


class SQLiteSubscription(celeriac.Subscription):
    """Reads the ``celeriac_broadcasts`` rows of one channel with ids above the last one it saw."""

    def __init__(
        self,
        database: Database,
        notifier: Notifier,
        channel: str,
        last_id: int,
        polling_interval: float,
        transport_closed: Callable[[], bool],
    ) -> None:
        self._database = database
        self._notifier = notifier
        self._channel = channel
        self._last_id = last_id
        self._polling_interval = polling_interval
        self._transport_closed = transport_closed
        self._buffer: deque[celeriac.Envelope] = deque()
        self._closed = False

    def get(self, timeout: float) -> celeriac.Envelope | None:
        """Wait up to ``timeout`` seconds for the next broadcast; None when none came or closed."""
        try:
            return self._get(time.monotonic() + max(timeout, 0.0))
        except celeriac.TransportError:
            if self._closed or self._transport_closed():
                return None
            raise

    def _get(self, deadline: float) -> celeriac.Envelope | None:
        notifier, database = self._notifier, self._database
        wait = MIN_WAIT
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            seen_local, seen_version = notifier.generation, database.data_version()
            self._read()
            while not self._buffer and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                notifier.wait(seen_local, min(wait, remaining))
                if notifier.generation != seen_local or database.data_version() != seen_version:
                    wait = MIN_WAIT
                    break
                wait = min(wait * 2, self._polling_interval)
        return None

    def _read(self) -> None:
        """Buffer the channel's broadcasts committed after the last one seen."""
        with self._database.connection("receive broadcasts") as connection:
            rows = connection.execute(_AFTER, (self._channel, self._last_id)).fetchall()
        for row_id, *columns in rows:
            self._last_id = row_id
            self._buffer.append(decode_envelope(*columns))

    def close(self) -> None:
        """Stop receiving and drop what was not read; idempotent."""
        self._closed = True
        self._buffer.clear()
