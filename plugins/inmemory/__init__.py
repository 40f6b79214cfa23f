"""``memory://`` — the in-memory transport (``MemoryTransport``).

Features: priorities (0-9, higher first, then first in first out), delayed messages (ETA)
held in the broker, blocking fetch woken by publish (never polling), round-robin fetching
across queues, acks, rejects with or without requeue, atomic dead-lettering, leases with a
visibility timeout (at-least-once redelivery when a consumer never settles), and broadcast
channels. Unsettled deliveries go back to their queues when their transport is closed.
Queues live in this process only (``shared_between_processes = False``), so it suits tests,
development and single-process apps; it doubles as the transport of celeriac's own tests.

Connection string: ``memory://`` (the default broker) or ``memory://NAME``. Every transport
with the same NAME shares one broker, so a client and a worker in one process talk to each
other, while tests isolate themselves with unique names (``memory://test-<uuid>``). A broker
lives as long as some transport of that name does; then its messages are gone.

Options (``broker_transport_options``):

* ``visibility_timeout`` — seconds a fetched delivery stays invisible to other consumers
  unless its lease is extended; then it is redelivered. Default ``None``: never expires
  (it returns only when rejected with requeue or when its transport is closed).

The transport class lives in a private module imported only when ``memory://`` is selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import celeriac

__all__ = ["celeriac_transport", "celeriac_transport_schemes"]


@celeriac.hookimpl
def celeriac_transport(url: str, scheme: str, options: Mapping[str, Any]) -> celeriac.Transport | None:
    """Create a :class:`MemoryTransport` for ``memory://`` URLs; ``None`` for other schemes."""
    if scheme == "memory":
        from celeriac.plugins.inmemory._transport import MemoryTransport

        return MemoryTransport(url, options)
    return None


@celeriac.hookimpl
def celeriac_transport_schemes() -> Sequence[str]:
    """The URL schemes served here."""
    return ["memory"]
