"""Task states, as Celery names them."""

from __future__ import annotations

__all__ = [
    "EXCEPTION_STATES",
    "FAILURE",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
]

#: Unknown to the result store: not sent yet, still queued, or the result expired.
PENDING = "PENDING"
#: A worker received the message.
RECEIVED = "RECEIVED"
#: A worker started running it (stored only with ``track_started``).
STARTED = "STARTED"
#: It returned; the result is its return value.
SUCCESS = "SUCCESS"
#: It raised; the result is the exception.
FAILURE = "FAILURE"
#: It will run again later; the result is the reason.
RETRY = "RETRY"
#: It was revoked or expired and did not run.
REVOKED = "REVOKED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
