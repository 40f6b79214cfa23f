"""Receiving events: :class:`EventReceiver`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._dispatcher import decode_events

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..transport import Subscription, Transport

__all__ = ["EventReceiver"]

logger = logging.getLogger("celeriac.events")
_SLICE = 0.25


class EventReceiver:
    """Receives events from the app's event channel.

    Subscribes when constructed (events sent from then on are seen). ``handlers`` map an event
    type, or ``"*"`` for every event, to a callable taking the event dict; every event gets
    ``local_received`` (unix time it arrived here)::

        with app.events.Receiver(handlers={"*": state.event}) as receiver:
            receiver.capture(timeout=5.0)
    """

    def __init__(
        self,
        app: Celeriac,
        handlers: Mapping[str, Callable[[dict[str, Any]], None]] | None = None,
        *,
        transport: Transport | None = None,
        channel: str | None = None,
    ) -> None:
        self.app = app
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = dict(handlers or {})
        self.channel: str = channel or app.conf.event_channel
        self.should_stop = False
        transport = transport if transport is not None else app.transport
        self._subscription: Subscription = transport.subscribe(self.channel)

    def __repr__(self) -> str:
        return f"<EventReceiver on {self.channel}>"

    def itercapture(self, limit: int | None = None, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield events as they arrive until ``limit`` events, ``timeout`` seconds (total), or
        :meth:`stop`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while not self.should_stop and (limit is None or seen < limit):
            wait = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if wait <= 0:
                return
            envelope = self._subscription.get(wait)
            if envelope is None:
                continue
            received = time.time()
            for item in decode_events(envelope):
                item["local_received"] = received
                seen += 1
                yield item
                if self.should_stop or (limit is not None and seen >= limit):
                    return

    def capture(self, limit: int | None = None, timeout: float | None = None) -> int:
        """Call the handlers for each event until ``limit``, ``timeout`` or :meth:`stop`;
        returns how many events were handled. A failing handler is logged and skipped."""
        count = 0
        for item in self.itercapture(limit=limit, timeout=timeout):
            count += 1
            self.process(item)
        return count

    def process(self, item: dict[str, Any]) -> None:
        """Call the handler of ``item``'s type and the ``"*"`` handler."""
        for key in (item["type"], "*"):
            handler = self.handlers.get(key)
            if handler is None:
                continue
            try:
                handler(item)
            except Exception:
                logger.exception("event handler for %s failed", key)

    def stop(self) -> None:
        """Make :meth:`capture` / :meth:`itercapture` return (within a quarter second)."""
        self.should_stop = True

    def close(self) -> None:
        """Stop and unsubscribe; idempotent."""
        self.should_stop = True
        self._subscription.close()

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
