"""``sqlite://`` — a durable broker in one SQLite file (``SQLiteTransport``), no server needed.

Features: every worker and client process on one machine shares the queues through the file
(stdlib ``sqlite3``, WAL mode, a busy timeout); at-least-once delivery with leases (a fetched
message is invisible until acked, rejected or its lease expires; the worker extends the leases
of tasks it is still running, and a killed worker's messages come back after
``visibility_timeout`` with ``redelivered`` set and ``delivery_count`` incremented);
priorities 0-9 (higher first, then first in first out); delayed messages (ETA, countdown,
retries) wait in the file; atomic dead-lettering to ``<queue>.dead-letter``; purge and queue
length; broadcast channels (remote control, events) emulated by a table of recent broadcasts.
Unsettled deliveries go back to their queues when their transport is closed.

Connection string: ``sqlite:///relative/path.db`` (relative to the current directory of each
process, so start workers and clients in the same directory), ``sqlite:////absolute/path.db``,
or ``sqlite://`` for ``./celeriac.db``. The directory must exist; the file and its tables are
created on first use. The file must be on a local file system (WAL needs shared memory, so not
NFS), and every process must run on this machine. The ``sqlite://`` result store can use the
same file (its tables do not clash) or another one (no measurable difference in the benchmark).

Options (``broker_transport_options``):

* ``visibility_timeout`` — seconds a fetched message stays invisible unless its lease is
  extended (default 60); then it is delivered again. The worker extends leases every third of
  it, so only a dead or frozen worker loses its messages.
* ``busy_timeout`` — seconds to wait for another process's write lock before raising a one-line
  :class:`~celeriac.TransportError` naming the file (default 5).
* ``polling_interval`` — the longest idle wait between polls (default 0.05 s). An idle fetch
  polls after 1 ms, 2 ms, 4 ms ... up to this; any commit to the file restarts at 1 ms, and a
  publish in the same process wakes a fetch at once.
* ``broadcast_ttl`` — seconds broadcasts are kept for slow subscribers (default 60).
* ``synchronous`` — ``NORMAL`` (default: a process crash loses nothing, a power cut may lose
  the last commits) or ``FULL`` (fsync on every commit).

Measured on the 2-core development machine (Python 3.11, SQLite 3.40; broker and results in one
file; ``python benchmarks/sqlite_multiprocess.py``):

* drain of 5,000 queued no-op tasks by two worker processes (``threads`` x4 each):
  4,500-5,400 tasks/s (one worker process with the ``solo`` pool each: ~3,000/s); a second file
  for results makes no measurable difference;
* publish from one client thread: 10,000-12,500 messages/s (one commit each; ``publish_many``
  commits once);
* round trip ``send_task(...).get()`` from a client process through a busy worker process:
  p50 1.3-1.5 ms, p90 2.5-3.7 ms, p99 3.6-5.6 ms; client and worker in one process
  (``benchmarks/throughput.py``): p50 0.7 ms;
* the first task after a worker sat idle waits for its next poll: 33-89 ms (p50 65 ms) with the
  defaults, since both the worker's fetch and the client's result wait have backed off to
  ``polling_interval``; an idle worker or waiting client thread costs ~0.5 % of a core (1.2 %
  with ``polling_interval = 0.02``, 1.5 % with 0.01).

Times in the file are unix time, so a large jump of the system clock can end leases early or late.

The transport class lives in a private module imported only when ``sqlite://`` is selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import celeriac

__all__ = ["celeriac_transport", "celeriac_transport_schemes"]


@celeriac.hookimpl
def celeriac_transport(url: str, scheme: str, options: Mapping[str, Any]) -> celeriac.Transport | None:
    """Create a :class:`SQLiteTransport` for ``sqlite://`` URLs; ``None`` for other schemes."""
    if scheme == "sqlite":
        from celeriac.plugins.sqlite._transport import SQLiteTransport

        return SQLiteTransport(url, options)
    return None


@celeriac.hookimpl
def celeriac_transport_schemes() -> Sequence[str]:
    """The URL schemes served here."""
    return ["sqlite"]
