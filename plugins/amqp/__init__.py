"""``amqp://`` / ``amqps://`` -- the RabbitMQ transport (``AMQPTransport``), and the ``rpc://``
result store (``RPCResultStore``), through kombu and py-amqp (extra ``amqp``).

Features: manual acks (the worker acks after the result is stored; acks are batched into one
``basic.ack`` with ``multiple`` where they can be); QoS prefetch tied to the worker's free pool
capacity -- it follows the pool as it grows or shrinks, and tasks that finished but are still
being settled do not hold up the next messages; **publisher confirms** (a publish returns
once RabbitMQ has the message, and raises ``TransportError`` when it cannot get there within
``confirm_timeout``); durable queues and persistent messages; optional quorum queues; a
dead-letter queue per queue; priorities 0-9 (``x-max-priority``); delayed delivery (ETA,
countdown, retries) held in RabbitMQ, never in a worker; broadcast over fanout exchanges;
heartbeats; reconnection with backoff that declares everything again and resumes consuming.

Connection string (kombu's)::

    amqp://USER:PASSWORD@HOST:PORT/VHOST     e.g. amqp://guest:guest@127.0.0.1:5672//  (vhost "/")
    amqps://USER:PASSWORD@HOST:5671/VHOST    TLS; options in ``ssl`` (see below)
    amqp://host-a//;amqp://host-b//          failover: the next URL after a failed attempt

Topology (see :mod:`celeriac.plugins.amqp._topology`): tasks go to the default exchange with
the queue's name as routing key, as Celery sends them. Each queue ``Q`` is declared durable
with ``x-max-priority`` and ``x-dead-letter-exchange = celeriac.dead-letter``,
``x-dead-letter-routing-key = Q.dead-letter``; the durable queue ``Q.dead-letter`` receives
what the worker dead-letters (a copy with headers ``x-death-reason``, ``x-death-queue``,
``x-death-time``; then the original is acked) and what RabbitMQ dead-letters itself (rejected
without requeue, expired ``expiration``, quorum delivery limit; RabbitMQ's ``x-death`` header
says why). A queue that already exists with other arguments is used as it is, with a warning.

Delayed delivery: binary TTL levels -- 32 pairs of a headers exchange and a queue
``celeriac.delay.<k>`` holding messages for ``2**k`` ms, dead-lettering to the next level and
finally, through the default exchange, into the target queue. Never early; late by about a
millisecond per level passed (a few ms; 4-12 ms on the development machine), up to 49.7 days
per pass; survives worker and broker restarts; no message is ever held unacked by a worker, so
RabbitMQ's ``consumer_timeout`` (30 min by default) is never hit by an ETA. (It still applies to
a single task running longer than that: raise it in ``rabbitmq.conf`` for such tasks.)

Options (``broker_transport_options``):

* ``heartbeat`` -- seconds, default 60 (0: off). A background thread keeps idle connections
  alive, so a worker busy for longer than that keeps its messages.
* ``connect_timeout`` -- seconds per connection attempt, default 4.
* ``confirm_timeout`` -- seconds a publish may take in all (reconnecting, writing, waiting for
  the confirm) before it raises ``TransportError``, default 10.
* ``queue_type`` -- ``"classic"`` (default) or ``"quorum"`` (replicated; at-least-once
  dead-lettering; per-consumer QoS; no priorities on RabbitMQ < 3.13).
* ``max_priority`` -- ``x-max-priority`` of classic queues, default 9 (0: no priorities).
* ``durable`` -- declare queues durable, default true; ``persistent`` -- publish with
  ``delivery_mode = 2`` unless a message says otherwise, default true.
* ``ssl`` -- true, or a table of ``ssl`` options (``ca_certs``, ``certfile``, ``keyfile``,
  ``cert_reqs``, ``server_hostname``) as kombu takes them; ``login_method`` -- e.g. ``EXTERNAL``.
* ``visibility_timeout`` is accepted and ignored: RabbitMQ redelivers by itself when a consumer's
  connection dies, so there are no leases (``needs_lease_extension`` is false).

``rpc://`` (set ``result_store = "rpc://"`` with an ``amqp://`` broker): results travel back to
the caller's own reply queue, readable once, by the caller only; no chords. It shares the
connection options above and adds ``reply_queue_expires`` (seconds an abandoned reply queue
lives, default 3600), ``max_unread_results`` (results kept for reading, default 100,000) and
``persistent`` (default false for results) in ``result_store_options``.
See :mod:`celeriac.plugins.amqp._rpc`.

kombu is imported only when one of these schemes is selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import celeriac

if TYPE_CHECKING:
    from celeriac import Celeriac

__all__ = [
    "celeriac_result_store",
    "celeriac_result_store_schemes",
    "celeriac_transport",
    "celeriac_transport_schemes",
]

SCHEMES = ("amqp", "amqps")
_MISSING_EXTRA = "the amqp transport needs the 'amqp' extra: pip install 'celeriac[amqp]'"


def _require_kombu() -> None:
    try:
        import amqp  # noqa: F401
        import kombu  # noqa: F401
    except ImportError as exc:
        raise celeriac.PluginError(_MISSING_EXTRA) from exc


@celeriac.hookimpl
def celeriac_transport(url: str, scheme: str, options: Mapping[str, Any]) -> celeriac.Transport | None:
    """Create an :class:`AMQPTransport` for ``amqp://`` and ``amqps://`` URLs."""
    if scheme not in SCHEMES:
        return None
    _require_kombu()
    from celeriac.plugins.amqp._transport import AMQPTransport

    return AMQPTransport(url, options)


@celeriac.hookimpl
def celeriac_transport_schemes() -> Sequence[str]:
    """The URL schemes served here."""
    return list(SCHEMES)


@celeriac.hookimpl
def celeriac_result_store(
    url: str, scheme: str, options: Mapping[str, Any], app: Celeriac | None
) -> celeriac.ResultStore | None:
    """Create an :class:`RPCResultStore` for ``rpc://``; it connects to the app's AMQP broker."""
    if scheme != "rpc":
        return None
    broker_url = str(app.conf.broker_url) if app is not None else ""
    if broker_url.partition("://")[0].lower() not in SCHEMES:
        raise celeriac.PluginError(
            f"result_store rpc:// sends results over AMQP and needs an amqp:// broker_url, got {broker_url or 'none'!r}"
        )
    _require_kombu()
    from celeriac.plugins.amqp._rpc import RPCResultStore

    assert app is not None
    return RPCResultStore(url, options, broker_url=broker_url, broker_options=app.conf.broker_transport_options)


@celeriac.hookimpl
def celeriac_result_store_schemes() -> Sequence[str]:
    """The URL schemes served here."""
    return ["rpc"]
