"""The wire form of remote-control requests and replies (JSON on the broadcast channel).

Request (on ``control_channel``)::

    {"method": "ping", "arguments": {}, "destination": ["w1@host"] | null,
     "reply_to": "celeriac.control.reply" | null, "ticket": "<uuid>"}

Reply (on the request's ``reply_to`` channel)::

    {"ticket": "<uuid>", "hostname": "w1@host", "reply": {...}}
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .._envelope import Envelope

__all__ = ["REPLY_TYPE", "REQUEST_TYPE", "decode", "encode"]

logger = logging.getLogger("celeriac.control")

REQUEST_TYPE = "application/x-celeriac-control+json"
REPLY_TYPE = "application/x-celeriac-control-reply+json"


def encode(content_type: str, payload: dict[str, Any]) -> Envelope:
    body = json.dumps(payload, default=repr, ensure_ascii=False, separators=(",", ":")).encode()
    return Envelope(body, content_type, "utf-8")


def decode(envelope: Envelope, content_type: str) -> dict[str, Any] | None:
    """The payload of ``envelope`` if it is a well-formed message of ``content_type``."""
    if envelope.content_type != content_type:
        return None
    try:
        payload = json.loads(envelope.body)
    except (ValueError, UnicodeDecodeError):
        logger.warning("ignored a malformed remote-control message (%d bytes)", len(envelope.body))
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("ticket"), str):
        return None
    return payload
