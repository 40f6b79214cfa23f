"""Sending events: :class:`EventDispatcher` batches them off the caller's hot path."""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._envelope import Envelope

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..transport import Transport

__all__ = ["CONTENT_TYPE", "EventDispatcher", "decode_events", "encode_events", "event"]

logger = logging.getLogger("celeriac.events")

#: Content type of an event batch: a JSON list of event dicts.
CONTENT_TYPE = "application/x-celeriac-events+json"
_BATCH_HEADER = "celeriac-events"


def _utcoffset() -> int:
    """Hours west of UTC, as Celery's events carry it."""
    offset = time.altzone if time.daylight and time.localtime().tm_isdst > 0 else time.timezone
    return offset // 3600


def event(type: str, **fields: Any) -> dict[str, Any]:  # noqa: A002 - Celery's name
    """An event dict of ``type`` with ``timestamp`` (now) unless given, plus ``fields``."""
    fields.setdefault("timestamp", time.time())
    return {"type": type, **fields}


def encode_events(events: Sequence[dict[str, Any]]) -> Envelope:
    """One broadcast envelope carrying ``events`` (values that JSON cannot carry become reprs)."""
    body = json.dumps(list(events), default=repr, ensure_ascii=False, separators=(",", ":")).encode()
    return Envelope(body, CONTENT_TYPE, "utf-8", {_BATCH_HEADER: len(events)})


def decode_events(envelope: Envelope) -> list[dict[str, Any]]:
    """The events in a broadcast envelope; ``[]`` for anything that is not an event batch."""
    if envelope.content_type != CONTENT_TYPE:
        return []
    try:
        events = json.loads(envelope.body)
    except (ValueError, UnicodeDecodeError):
        logger.warning("ignored a malformed event batch (%d bytes)", len(envelope.body))
        return []
    if not isinstance(events, list):
        return []
    return [item for item in events if isinstance(item, dict) and isinstance(item.get("type"), str)]


class EventDispatcher:
    """Sends events on the app's event channel (``event_channel``, default ``celeriac.events``).

    :meth:`send` only appends to a buffer; a background thread broadcasts the buffer as one
    message every ``flush_interval`` seconds (or sooner once ``batch_size`` events wait), so
    the caller never waits for the broker. With ``enabled=False`` :meth:`send` returns at once.
    Every event gets ``hostname``, ``timestamp``, ``utcoffset``, ``pid`` and ``clock``.
    """

    def __init__(
        self,
        app: Celeriac,
        hostname: str | None = None,
        enabled: bool = True,
        *,
        transport: Transport | None = None,
        channel: str | None = None,
        flush_interval: float = 0.1,
        batch_size: int = 200,
    ) -> None:
        import socket

        self.app = app
        self.hostname = hostname or f"celeriac@{socket.gethostname()}"
        self.enabled = enabled
        self.channel: str = channel or app.conf.event_channel
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._transport = transport
        self._clock = itertools.count(1)
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._utcoffset = _utcoffset()

    def __repr__(self) -> str:
        return f"<EventDispatcher {self.hostname} on {self.channel} enabled={self.enabled}>"

    @property
    def transport(self) -> Transport:
        return self._transport if self._transport is not None else self.app.transport

    def send(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        """Queue event ``type`` with ``fields`` for the next batch (a no-op when disabled)."""
        if not self.enabled or self._closed:
            return
        fields.setdefault("hostname", self.hostname)
        fields.setdefault("timestamp", time.time())
        fields.setdefault("pid", self._pid)
        fields["utcoffset"] = self._utcoffset
        fields["clock"] = next(self._clock)
        fields["type"] = type
        with self._lock:
            self._buffer.append(fields)
            size = len(self._buffer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._flush_loop, name="celeriac-events", daemon=True)
                self._thread.start()
        if size >= self.batch_size:
            self._wake.set()

    def flush(self) -> None:
        """Broadcast what waits in the buffer now (one message); errors are logged, not raised."""
        with self._send_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                self.transport.broadcast(self.channel, encode_events(batch))
            except Exception as exc:  # monitoring must never break the worker or the client
                logger.warning("could not send %d event(s) on %s: %s", len(batch), self.channel, exc)

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Send what is buffered and stop the background thread; later sends are dropped."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
