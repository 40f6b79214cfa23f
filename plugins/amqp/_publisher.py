"""The publishing connection: one channel in confirm mode, plus declarations and queue queries.

A publish returns only once RabbitMQ confirmed every message of the batch (``basic.ack``; for
a persistent message to a durable queue that means it is on disk). Batches are pipelined:
all messages are written, then the confirms are awaited together. Messages are published
``mandatory``: one that no queue takes comes back (``basic.return``, always before its
confirm) and the caller decides -- declare the queue and publish again, or drop it.

Everything is bounded by ``confirm_timeout``: reconnecting (with backoff), writing and waiting
for the confirms. A connection that breaks mid-batch is replaced and the whole batch published
again (at-least-once: a message may then exist twice, never zero times). Past the deadline the
publish raises :class:`~celeriac.TransportError`, naming RabbitMQ's flow-control alarm when
one is the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import amqp
import celeriac

from ._link import IO_ERRORS, Declarer, Link, describe, open_channel

__all__ = ["Outgoing", "Publisher", "Returned"]

T = TypeVar("T")

#: Errors that publishing again cannot fix.
_PERMANENT = (amqp.exceptions.AccessRefused, amqp.exceptions.PreconditionFailed, amqp.exceptions.ContentTooLarge)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish."""

    exchange: str
    routing_key: str
    message: amqp.Message
    mandatory: bool = True


@dataclass(frozen=True, slots=True)
class Returned:
    """A message RabbitMQ could not route (no such queue)."""

    exchange: str
    routing_key: str
    message: amqp.Message
    reason: str


class Publisher(Link):
    """Publishes with confirms; also runs declarations and queue queries (``run``)."""

    role = "publisher"

    def __init__(self, url: str, options: Any) -> None:
        super().__init__(url, options)
        self._channel: amqp.Channel | None = None
        self._sequence = 0
        self._unconfirmed: set[int] = set()
        self._nacked = 0
        self._returned: list[Returned] = []

    def on_connected_locked(self) -> None:
        assert self.connection is not None
        channel = open_channel(self.connection)
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._channel = channel
        self._sequence = 0
        self._unconfirmed.clear()

    def on_lost_locked(self) -> None:
        self._channel = None
        self._unconfirmed.clear()

    # -- confirms (called while draining, lock held) ----------------------------------------

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._unconfirmed = {tag for tag in self._unconfirmed if tag > delivery_tag}
        else:
            self._unconfirmed.discard(delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool, requeue: bool = False) -> None:
        before = len(self._unconfirmed)
        self._on_ack(delivery_tag, multiple)
        self._nacked += before - len(self._unconfirmed)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: amqp.Message) -> None:
        self._returned.append(Returned(exchange, routing_key, message, describe(exc)))

    # -- API -----------------------------------------------------------------------------------

    def publish(
        self, batch: Sequence[Outgoing], *, prepare: Callable[[Declarer], None] | None = None
    ) -> list[Returned]:
        """Publish ``batch`` and wait for RabbitMQ's confirms; returns the unroutable messages.

        ``prepare`` runs (with the connection's declarer) before publishing, again after a
        reconnect. Raises :class:`~celeriac.TransportError` when RabbitMQ cannot be reached, or
        refuses or does not confirm the messages, within ``confirm_timeout``.
        """
        if not batch:
            return []
        deadline = time.monotonic() + self.options.confirm_timeout
        with self.cond:
            while True:
                self.check_open()
                self.connect_before_locked(deadline)
                try:
                    if prepare is not None:
                        assert self.declarer is not None
                        prepare(self.declarer)
                    return self._publish_locked(batch, deadline)
                except TimeoutError:
                    self.lost_locked(TimeoutError("no confirm"), quiet=True)
                    blocked = f" (RabbitMQ blocks publishing: {self.blocked_reason})" if self.blocked_reason else ""
                    raise celeriac.TransportError(
                        f"RabbitMQ at {self.address} did not confirm {len(batch)} message(s) within "
                        f"{self.options.confirm_timeout:g}s{blocked}"
                    ) from None
                except _PERMANENT as exc:
                    raise celeriac.TransportError(f"RabbitMQ at {self.address} refused: {describe(exc)}") from exc
                except IO_ERRORS as exc:
                    self.lost_locked(exc)
                    if time.monotonic() >= deadline:
                        raise celeriac.TransportError(
                            f"cannot publish to RabbitMQ at {self.address}: {describe(exc)}"
                        ) from exc

    def _publish_locked(self, batch: Sequence[Outgoing], deadline: float) -> list[Returned]:
        channel, connection = self._channel, self.connection
        assert channel is not None
        assert connection is not None
        self._returned = []
        self._nacked = 0
        for item in batch:
            channel.basic_publish(item.message, item.exchange, item.routing_key, mandatory=item.mandatory)
            self._sequence += 1
            self._unconfirmed.add(self._sequence)
        while self._unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            connection.drain_events(timeout=remaining)
        if self._nacked:
            raise celeriac.TransportError(f"RabbitMQ at {self.address} refused {self._nacked} message(s) (nack)")
        returned, self._returned = self._returned, []
        return returned

    def run(self, operation: Callable[[Declarer], T]) -> T:
        """Run ``operation`` (declarations, queue queries) with the declarer, reconnecting as
        needed within ``confirm_timeout``."""
        deadline = time.monotonic() + self.options.confirm_timeout
        with self.cond:
            while True:
                self.check_open()
                self.connect_before_locked(deadline)
                assert self.declarer is not None
                try:
                    return operation(self.declarer)
                except _PERMANENT as exc:
                    raise celeriac.TransportError(f"RabbitMQ at {self.address} refused: {describe(exc)}") from exc
                except IO_ERRORS as exc:
                    self.lost_locked(exc)
                    if time.monotonic() >= deadline:
                        raise celeriac.TransportError(f"RabbitMQ at {self.address}: {describe(exc)}") from exc
