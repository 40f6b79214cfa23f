"""The unit a transport carries (:class:`Envelope`) and what a consumer receives (:class:`Delivery`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Delivery", "Envelope"]


@dataclass(slots=True)
class Envelope:
    """A message as a transport sees it: opaque body bytes plus headers and properties.

    ``headers`` hold the protocol-v2 task headers (``task``, ``id``, ``eta``, ...) and any user
    headers; ``properties`` hold AMQP-style properties (``correlation_id``, ``reply_to``,
    ``priority``, ``delivery_mode``). Header and property values are plain data (str, int,
    float, bool, None, lists and dicts of those), so every transport can carry them.
    """

    body: bytes
    content_type: str
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        """Message priority 0-9, higher first (AMQP semantics); 0 when unset or malformed."""
        value = self.properties.get("priority")
        if isinstance(value, int) and not isinstance(value, bool):
            return min(max(value, 0), 9)
        return 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (body as latin-1 text is avoided: callers base64 it themselves)."""
        return {
            "body": self.body,
            "content-type": self.content_type,
            "content-encoding": self.content_encoding,
            "headers": self.headers,
            "properties": self.properties,
        }


@dataclass(slots=True, eq=False)
class Delivery:
    """An envelope fetched from a queue and not yet settled (acked, rejected or dead-lettered).

    ``tag`` is whatever the transport needs to settle it (a stream id, a delivery tag, a row
    id). ``delivery_count`` counts deliveries of this message including this one, where the
    transport can tell (1 otherwise); ``redelivered`` is true when it came back after a
    consumer died or rejected it with requeue.
    """

    envelope: Envelope
    queue: str
    tag: Any
    redelivered: bool = False
    delivery_count: int = 1
