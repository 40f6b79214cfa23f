"""Envelopes to py-amqp messages and back.

The body travels as raw bytes, content type and encoding as the AMQP properties of those names,
headers as the application headers table, and the envelope properties that AMQP has slots for
(``correlation_id``, ``reply_to``, ``priority``, ``delivery_mode``, ``expiration``,
``message_id``, ``timestamp``, ``type``, ``user_id``, ``app_id``) in those slots -- exactly as
Celery puts a task on the wire. Any other property (or one of a type AMQP cannot carry) rides
in the ``x-celeriac-properties`` header and is restored on receipt.

On receipt the delay bookkeeping is removed (the ``celeriac-delay-<k>`` headers and the
``x-death`` entries that the delay levels added), quorum queues' ``x-delivery-count`` becomes
``Delivery.delivery_count``, and timestamps RabbitMQ put in ``x-death`` become ISO-8601 text,
so headers stay plain data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import amqp
import celeriac

from ._topology import DELAY_HEADER_PREFIX, DELAY_PREFIX

__all__ = ["EXTRA_PROPERTIES_HEADER", "envelope_from_message", "message_from_envelope"]

EXTRA_PROPERTIES_HEADER = "x-celeriac-properties"
_STRING_PROPERTIES = ("correlation_id", "reply_to", "expiration", "message_id", "type", "user_id", "app_id")
_OCTET_PROPERTIES = ("priority", "delivery_mode")
_ALL_PROPERTIES = (*_STRING_PROPERTIES, *_OCTET_PROPERTIES, "timestamp")


def message_from_envelope(
    envelope: celeriac.Envelope, *, persistent: bool, extra_headers: dict[str, Any] | None = None
) -> amqp.Message:
    """An AMQP message carrying ``envelope``; persistent unless the envelope says otherwise."""
    properties: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in envelope.properties.items():
        if value is None:
            continue
        if _fits_amqp(key, value):
            properties[key] = value
        else:
            extra[key] = value
    headers = dict(envelope.headers)
    if extra:
        headers[EXTRA_PROPERTIES_HEADER] = extra
    if extra_headers:
        headers.update(extra_headers)
    properties.setdefault("delivery_mode", 2 if persistent else 1)
    return amqp.Message(
        envelope.body,
        content_type=envelope.content_type,
        content_encoding=envelope.content_encoding,
        application_headers=headers,
        **properties,
    )


def _fits_amqp(key: str, value: Any) -> bool:
    """True when ``value`` can travel in the AMQP property ``key``."""
    if key in _STRING_PROPERTIES:
        return isinstance(value, str)
    if key in _OCTET_PROPERTIES:
        return type(value) is int and 0 <= value <= 255
    return key == "timestamp" and type(value) is int and value >= 0


def envelope_from_message(message: amqp.Message) -> tuple[celeriac.Envelope, int]:
    """The envelope ``message`` carries, and how often it was delivered (1 when unknown)."""
    received = message.properties
    # the table was decoded for this message alone: it becomes the envelope's headers
    headers = received.get("application_headers")
    headers = {} if headers is None else headers
    if "x-death" in headers:
        _strip_delay_bookkeeping(headers)
    delivery_count = 1
    count = headers.pop("x-delivery-count", None)
    if type(count) is int:
        delivery_count = count + 1
    properties = {key: received[key] for key in _ALL_PROPERTIES if key in received}
    extra = headers.pop(EXTRA_PROPERTIES_HEADER, None)
    if isinstance(extra, dict):
        properties.update(extra)
    body = message.body
    envelope = celeriac.Envelope(
        body=body if isinstance(body, bytes) else str(body).encode(),
        content_type=received.get("content_type") or "application/octet-stream",
        content_encoding=received.get("content_encoding") or "binary",
        headers=headers,
        properties=properties,
    )
    return envelope, delivery_count


def _strip_delay_bookkeeping(headers: dict[str, Any]) -> None:
    """Drop what the delay levels added; make RabbitMQ's remaining death records plain data."""
    for key in [key for key in headers if key.startswith(DELAY_HEADER_PREFIX)]:
        del headers[key]
    deaths = [
        _plain(death)
        for death in headers.get("x-death") or ()
        if not (isinstance(death, dict) and str(death.get("queue", "")).startswith(DELAY_PREFIX))
    ]
    if deaths:
        headers["x-death"] = deaths
    else:
        headers.pop("x-death", None)
    for which in ("first", "last"):
        if str(headers.get(f"x-{which}-death-queue", "")).startswith(DELAY_PREFIX):
            for part in ("queue", "reason", "exchange"):
                headers.pop(f"x-{which}-death-{part}", None)


def _plain(value: Any) -> Any:
    """``value`` with timestamps as ISO-8601 text and decimals as floats."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat() if value.tzinfo is None else value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
