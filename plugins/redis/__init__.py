"""``redis://`` — the Redis transport (``RedisTransport``), on Redis Streams.

Features: at-least-once delivery through consumer groups (a message is acked after its task
finished and its result was stored; a killed worker's messages go to another worker after the
visibility timeout), leases that the worker renews while a task runs (so a long task is never
run twice just because it is long), blocking fetches (``XREADGROUP BLOCK``, no polling),
delayed messages (ETA, countdown, retries) held in Redis, ten priority levels, a dead-letter
stream per queue, queue length and purge, broadcast over pub/sub, reconnection with backoff.
Needs Redis 6.2 or later (``XAUTOCLAIM``) and redis-py (``pip install 'celeriac[redis]'``);
hiredis is used when installed.

Connection strings::

    redis://[[username]:[password]@]host[:port][/db][?option=value&...]
    rediss://...                   TLS (redis-py's ssl_* query options apply)
    unix://[[username]:[password]@]/path/to/redis.sock[?db=N&...]

Query keys besides the options below: ``db``, ``client_name``, ``health_check_interval``
(and redis-py's ``ssl_*`` for ``rediss://``); any other key, a port or database that is not
a number fails at start with one line naming ``broker_url``.

Options (``broker_transport_options``, or the query string; the config wins):

* ``visibility_timeout`` (45) — seconds a fetched message may go without a lease renewal
  before another consumer claims it. The worker renews the leases of the messages it holds
  every third of this, so only a dead (or frozen) worker's messages are claimed: with the
  default, a killed worker's task runs again within 50 s (45 s plus a sweep period of at
  most 5 s).
* ``global_keyprefix`` ("") — put before every key and channel name (several apps or test
  runs in one database).
* ``publish_timeout`` (``broker_publish_timeout``, 10) — how long a publish, ack or other
  command keeps retrying while Redis is unreachable before it raises ``TransportError``.
* ``socket_timeout`` (5), ``socket_connect_timeout`` (2) — seconds; every command has one
  (blocking reads get ``socket_timeout`` plus their block time).
* ``socket_keepalive`` (true), ``max_connections`` (unbounded) — passed to redis-py.

Key layout (``P`` = ``global_keyprefix``; one consumer group ``celeriac`` per stream):

* ``Pceleriac:q<level>:<queue>`` — stream of ``<queue>``'s messages of priority ``<level>``
  (0-9, one stream per level; a fetch serves the highest level first, then first in first
  out). Entry fields: ``h`` (JSON content type, encoding, headers, properties), ``b`` (body
  bytes), ``n`` (earlier deliveries, after a requeue), ``x`` (dead-letter headers). Acked
  entries are deleted (``XDEL``), so a stream holds only ready and unsettled messages.
* ``Pceleriac:eta:<queue>`` — sorted set of delayed messages scored by due time (unix ms);
  the fetch script moves due ones into their streams atomically, and a fetch never blocks
  past the earliest due time.
* ``Pceleriac:wake:<queue>`` — a short capped stream whose entries only wake blocked
  fetches (a new earliest delayed message, a new priority level).
* ``Pceleriac:sweep:<queue>`` — a lock (``SET NX PX``) so one consumer per period claims the
  entries of dead consumers (``XAUTOCLAIM``, idle longer than ``visibility_timeout``) and
  deletes consumers that hold nothing and were idle that long (killed workers; a live one
  is created again by its next read).
* ``<queue>.dead-letter`` is an ordinary queue, so its streams are
  ``Pceleriac:q<level>:<queue>.dead-letter``; ``x-death-reason``/``-queue``/``-time``
  headers say why a message is there.
* Broadcast channels are pub/sub channels ``Pceleriac:broadcast:<db>:<channel>`` (pub/sub
  ignores database numbers, hence the ``<db>``).

A worker's transport is one consumer (``host:pid:random``). Its ``close()`` re-adds every
entry it still holds at the end of its stream (delivery count kept), so other workers get
them at once instead of after the visibility timeout; ``reject(requeue=True)`` does the same
for one entry. The transport class lives in a private module imported only when a Redis URL
is selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import celeriac

__all__ = ["celeriac_transport", "celeriac_transport_schemes"]

SCHEMES = ("redis", "rediss", "unix")


@celeriac.hookimpl
def celeriac_transport(
    url: str, scheme: str, options: Mapping[str, Any], app: celeriac.Celeriac | None
) -> celeriac.Transport | None:
    """Create a :class:`RedisTransport` for ``redis://``, ``rediss://`` and ``unix://`` URLs."""
    if scheme not in SCHEMES:
        return None
    try:
        import redis  # noqa: F401 - only to give a clear error when the extra is missing
    except ImportError:
        raise celeriac.PluginError(
            "the redis transport needs the 'redis' extra: pip install 'celeriac[redis]'"
        ) from None
    from celeriac.plugins.redis._transport import RedisTransport

    publish_timeout = None if app is None else float(app.conf.broker_publish_timeout)
    return RedisTransport(url, options, publish_timeout=publish_timeout)


@celeriac.hookimpl
def celeriac_transport_schemes() -> Sequence[str]:
    """The URL schemes served here."""
    return list(SCHEMES)
