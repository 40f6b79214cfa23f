"""How an :class:`~celeriac.Envelope` is stored in Redis.

A stream entry has the fields

* ``h`` — JSON ``[content_type, content_encoding, headers, properties]``;
* ``b`` — the body bytes, unchanged (no base64);
* ``n`` — optional: how many times the message was delivered before (set when it is handed
  back by ``reject(requeue=True)`` or ``close()``, which re-add it at the end of its stream);
* ``x`` — optional: JSON of headers added by dead-lettering (``x-death-reason`` ...), merged
  over ``headers`` when read.

Wake-up entries (field ``t``) carry no message. A delayed message is a sorted-set member
(:func:`delayed_member`) and a broadcast is one framed string (:func:`frame`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import celeriac

__all__ = ["decode", "delayed_member", "encode", "extra_headers", "frame", "unframe"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads


def encode(envelope: celeriac.Envelope) -> tuple[bytes, bytes]:
    """The ``h`` and ``b`` fields of ``envelope``."""
    try:
        head = _dumps([envelope.content_type, envelope.content_encoding, envelope.headers, envelope.properties])
    except (TypeError, ValueError) as exc:
        raise celeriac.TransportError(f"cannot store the message's headers or properties in redis: {exc}") from None
    return head.encode(), bytes(envelope.body)


def decode(head: bytes, body: bytes, extra: bytes | None = None) -> celeriac.Envelope:
    """The envelope stored as ``h`` / ``b`` (/ ``x``) fields."""
    content_type, content_encoding, headers, properties = _loads(head)
    if extra:
        headers.update(_loads(extra))
    return celeriac.Envelope(body, content_type, content_encoding, headers, properties)


def extra_headers(headers: dict[str, Any]) -> bytes:
    """The ``x`` field for ``headers``."""
    return _dumps(headers).encode()


def delayed_member(level: int, head: bytes, body: bytes) -> bytes:
    """A delayed-set member: priority level digit, 16 random hex chars (so equal messages stay
    distinct), the length of ``head`` in 8 hex digits, ``head``, ``body``. The promote script
    in :mod:`._scripts` takes it apart."""
    return b"%d%s%08x%s%s" % (level, os.urandom(8).hex().encode(), len(head), head, body)


def frame(head: bytes, body: bytes) -> bytes:
    """One string holding both fields (broadcasts): length of ``head`` in 8 hex digits first."""
    return b"%08x%s%s" % (len(head), head, body)


def unframe(data: bytes) -> celeriac.Envelope:
    """The envelope of a :func:`frame` string."""
    size = int(data[:8], 16)
    return decode(data[8 : 8 + size], data[8 + size :])
