"""The transport interface: how the kernel talks to a broker.

A transport moves :class:`~celeriac.Envelope` objects between named queues. It is created by
the ``celeriac_transport`` hook from a URL and options (``broker_transport_options``) and is
shared by every thread of one app, so every method must be thread-safe.

What a transport must provide (checked by :mod:`celeriac.testing.conformance`):

* **publish** an envelope to a queue, optionally **delayed** until a unix time (ETA,
  countdown and retries wait in the broker, not in a worker's memory);
* **fetch** up to ``limit`` deliveries from several queues, **blocking** until at least one is
  available or the timeout passes (no busy polling), higher priority first within a queue;
* settle a delivery: **ack**, **reject** (``requeue=True`` puts it back, ``False`` drops it),
  **dead_letter** (moves it to :meth:`Transport.dead_letter_queue` with the reason); settling
  a delivery that is already settled (or unknown) is a harmless no-op;
* at-least-once: an unsettled delivery is given to another consumer when its consumer dies;
  transports that detect death by a lease say so with :attr:`Transport.needs_lease_extension`
  and the worker keeps leases of running tasks alive with :meth:`Transport.extend_lease`;
* **queue_length** and **purge**;
* a **broadcast** channel (fan-out to every current subscriber, no persistence) for remote
  control and events; a subscription is active when :meth:`Transport.subscribe` returns.

After :meth:`Transport.close`, publish, fetch, broadcast and subscribe raise
:class:`~celeriac.TransportError`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from ._envelope import Delivery, Envelope

__all__ = ["Subscription", "Transport"]


class Subscription(ABC):
    """A subscriber's end of a broadcast channel, from :meth:`Transport.subscribe`."""

    @abstractmethod
    def get(self, timeout: float) -> Envelope | None:
        """Wait up to ``timeout`` seconds for the next broadcast; ``None`` when none came."""

    @abstractmethod
    def close(self) -> None:
        """Stop receiving; idempotent."""

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Transport(ABC):
    """Base class of every transport plugin.

    Subclasses implement the abstract methods; the others have working defaults built on them.
    """

    #: URL schemes this class serves (informational; the plugin hook decides).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: False when only the creating process can reach the queues (``memory://``); the CLI
    #: refuses to ``celeriac call`` through such a transport.
    shared_between_processes: ClassVar[bool] = True
    #: Suffix of dead-letter queue names.
    dead_letter_suffix: ClassVar[str] = ".dead-letter"

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options: dict[str, Any] = dict(options or {})

    @property
    def needs_lease_extension(self) -> bool:
        """True when an unsettled delivery returns to the queue after ``visibility_timeout``
        unless its lease is extended; the worker then calls :meth:`extend_lease` periodically
        (every ``visibility_timeout / 3`` by default). A property because it may depend on
        the options."""
        return False

    # -- publishing --------------------------------------------------------------------------

    @abstractmethod
    def publish(self, envelope: Envelope, queue: str, *, eta: float | None = None) -> None:
        """Put ``envelope`` on ``queue``; with ``eta`` (unix time) not before then.

        Returns once the broker has the message. Raises :class:`~celeriac.TransportError`
        within a bounded time when the broker cannot be reached; never drops silently.
        """

    def publish_many(self, items: Iterable[tuple[Envelope, str]]) -> None:
        """Publish several envelopes; transports override this to pipeline them."""
        for envelope, queue in items:
            self.publish(envelope, queue)

    # -- consuming ---------------------------------------------------------------------------

    @abstractmethod
    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Take up to ``limit`` deliveries from ``queues``.

        Blocks until at least one is available or ``timeout`` seconds pass (then returns an
        empty list). ``limit`` is at least 1. Within a queue, higher priority first, then first
        in first out; across queues, no queue is starved (round robin). Fetched deliveries are
        invisible to other consumers until settled (or their lease expires).
        """

    @abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Settle ``delivery`` as done; it is gone from the broker."""

    def ack_many(self, deliveries: Iterable[Delivery]) -> None:
        """Ack several deliveries; transports override this to batch."""
        for delivery in deliveries:
            self.ack(delivery)

    @abstractmethod
    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Give ``delivery`` back to its queue (``requeue=True``) or drop it."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move ``delivery`` to its queue's dead-letter queue, recording ``reason``.

        The default publishes a copy with the ``x-death-reason`` and ``x-death-queue`` headers,
        then acks the original (at-least-once: a crash in between leaves a duplicate, never a
        loss). Brokers with native dead-lettering override it.
        """
        envelope = delivery.envelope
        headers = dict(envelope.headers)
        headers["x-death-reason"] = reason
        headers["x-death-queue"] = delivery.queue
        headers["x-death-time"] = time.time()
        copy = Envelope(
            body=envelope.body,
            content_type=envelope.content_type,
            content_encoding=envelope.content_encoding,
            headers=headers,
            properties=dict(envelope.properties),
        )
        self.publish(copy, self.dead_letter_queue(delivery.queue))
        self.ack(delivery)

    def dead_letter_queue(self, queue: str) -> str:
        """The name of the dead-letter queue of ``queue``."""
        return queue + self.dead_letter_suffix

    def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:  # noqa: B027
        """Keep ``deliveries`` invisible to other consumers for at least ``seconds`` from now
        (never shortening a lease).

        Called periodically by the worker for messages whose tasks are still running, when
        :attr:`needs_lease_extension` is true. The default does nothing.
        """

    def set_prefetch(self, count: int) -> None:  # noqa: B027
        """The most deliveries this consumer will hold unsettled (reserved + running).

        Called by the worker at start and whenever its pool grows or shrinks; push-based
        brokers map it to their QoS (AMQP ``basic.qos``). ``fetch`` never asks for more.
        The default does nothing.
        """

    # -- queues ------------------------------------------------------------------------------

    def declare_queue(self, queue: str) -> None:  # noqa: B027
        """Make sure ``queue`` exists; a no-op for brokers that create queues on demand."""

    @abstractmethod
    def queue_length(self, queue: str) -> int:
        """Messages ready on ``queue`` (not counting delayed or unsettled ones)."""

    def scheduled(self, queue: str, limit: int = 100) -> list[tuple[float, Envelope]] | None:
        """Delayed messages of ``queue`` (countdown, ETA, retries, rate-limit slots) that wait
        in the broker, soonest first, at most ``limit``: ``(eta as unix time, envelope)``.
        ``None`` when this broker cannot list them (``inspect scheduled`` then says so)."""
        return None

    def oldest_message_age(self, queue: str) -> float | None:
        """Seconds the oldest ready message of ``queue`` has waited (0.0 when it is empty), or
        ``None`` when this broker cannot tell. Monitors use it as the autoscaling signal."""
        return None

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every ready message on ``queue`` (delayed ones stay); returns how many."""

    # -- broadcast ---------------------------------------------------------------------------

    @abstractmethod
    def broadcast(self, channel: str, envelope: Envelope) -> None:
        """Send ``envelope`` to every current subscriber of ``channel`` (none stored)."""

    @abstractmethod
    def subscribe(self, channel: str) -> Subscription:
        """Start receiving broadcasts on ``channel``."""

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:  # noqa: B027
        """Make fetches blocked right now return early (used at shutdown); optional, since
        the worker's fetch timeout bounds the wait anyway."""

    def close(self) -> None:  # noqa: B027
        """Release connections. Unsettled deliveries go back to their queues (at-least-once)."""

    def info(self) -> dict[str, Any]:
        """Facts for ``celeriac config`` / inspection; secrets must not appear."""
        return {"transport": type(self).__name__}
