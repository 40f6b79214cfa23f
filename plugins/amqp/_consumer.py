"""The consuming connection: consumers that survive reconnects, QoS, and waiting for messages.

Two channels: the **task channel** carries consumers with manual acks, limited by QoS
(``basic.qos``); the **no-ack channel** carries broadcast subscriptions and reply queues, which
QoS must not throttle. Every consumer is a :class:`ConsumerSpec` -- how to declare its queue
and what to do with a message -- so after a reconnect the link declares and consumes them all
again, in order.

QoS: on classic queues the prefetch is a channel-wide limit (``global=True``: one limit over
every queue the worker consumes) that can change at any time. Once the worker has called
``set_prefetch``, the transport moves it with every fetch to *the deliveries the worker holds
unsettled + the free slots it asks for* (:meth:`Consumer.set_window_locked`, a ``basic.qos``
sent without waiting for its reply): messages whose tasks finished but whose results are still
being stored and acked do not hold up the next ones, while RabbitMQ never pushes more than the
pool can start. Quorum queues refuse global QoS, so there the prefetch applies per consumer, stays
at the worker's prefetch, and a change restarts the consumers (cancel, then consume again;
messages already delivered stay unacked and valid -- and RabbitMQ does not count them against
the new consumer, so right after a change up to the old plus the new count may be unacked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import amqp
from amqp import spec as amqp_spec

from ._link import IO_ERRORS, Declarer, Link, open_channel
from ._options import AMQPOptions

__all__ = ["DEFAULT_PREFETCH", "Consumer", "ConsumerSpec"]

#: Prefetch until someone calls ``set_prefetch`` (the worker always does).
DEFAULT_PREFETCH = 100
_MAX_PREFETCH = 65535  # basic.qos prefetch-count is an unsigned short


@dataclass(eq=False)
class ConsumerSpec:
    """A consumer the link starts on every connection.

    ``setup`` declares what is needed and returns the queue to consume (it gets the link's
    declarer and the channel the consumer will use, for exclusive queues); ``on_message`` runs
    with the link's lock held, while the link reads.
    """

    setup: Callable[[Declarer, amqp.Channel], str]
    on_message: Callable[[amqp.Message], None]
    #: Manual acks on the task channel (QoS applies) or no-ack on the other channel.
    acks: bool
    queue: str | None = None
    tag: str | None = None
    channel: amqp.Channel | None = None


class Consumer(Link):
    """A link that consumes; ``wait_for_locked`` is how callers wait for what they consume."""

    role = "consumer"

    def __init__(self, url: str, options: AMQPOptions) -> None:
        super().__init__(url, options)
        self.task_channel: amqp.Channel | None = None
        self._other_channel: amqp.Channel | None = None
        self._specs: list[ConsumerSpec] = []
        self.prefetch = DEFAULT_PREFETCH
        #: The QoS prefetch count in force on the task channel.
        self.window = DEFAULT_PREFETCH
        self._per_consumer_qos = options.quorum
        self._cancelled_by_server = False
        #: Called (lock held) when the connection is lost: deliveries of it are void.
        self.on_lost_hooks: list[Callable[[], None]] = []

    # -- connection lifecycle (lock held) ----------------------------------------------------

    def on_connected_locked(self) -> None:
        assert self.connection is not None
        self.task_channel = open_channel(self.connection)
        self.task_channel.basic_qos(0, self.prefetch, not self._per_consumer_qos)
        self.window = self.prefetch
        self._other_channel = open_channel(self.connection)
        self._cancelled_by_server = False
        for spec in self._specs:
            self._start_locked(spec)

    def on_lost_locked(self) -> None:
        self.task_channel = self._other_channel = None
        for spec in self._specs:
            spec.tag = spec.channel = None
        for hook in self.on_lost_hooks:
            hook()

    def _start_locked(self, spec: ConsumerSpec) -> None:
        channel = self.task_channel if spec.acks else self._other_channel
        assert channel is not None
        assert self.declarer is not None
        spec.queue = spec.setup(self.declarer, channel)
        spec.channel = channel
        spec.tag = channel.basic_consume(
            spec.queue, no_ack=not spec.acks, callback=spec.on_message, on_cancel=self._on_server_cancel
        )

    def _on_server_cancel(self, consumer_tag: str) -> None:
        # RabbitMQ cancelled a consumer (its queue was deleted): reconnect after this read,
        # which declares the queue again.
        self._cancelled_by_server = True

    # -- consumers (lock held) ---------------------------------------------------------------

    def add_locked(self, spec: ConsumerSpec) -> None:
        """Start consuming per ``spec`` now if connected, and after every reconnect."""
        self._specs.append(spec)
        if self.connection is not None:
            try:
                self._start_locked(spec)
            except IO_ERRORS as exc:
                self.lost_locked(exc)

    def remove_locked(self, spec: ConsumerSpec) -> None:
        """Stop consuming per ``spec``."""
        if spec in self._specs:
            self._specs.remove(spec)
        if spec.tag is not None and spec.channel is not None and self.connection is not None:
            try:
                spec.channel.basic_cancel(spec.tag)
            except IO_ERRORS as exc:
                self.lost_locked(exc)
        spec.tag = spec.channel = None

    def set_prefetch_locked(self, count: int) -> None:
        """The most unacked messages on the task channel (per consumer on quorum queues)."""
        count = min(max(int(count), 1), _MAX_PREFETCH)
        if count == self.prefetch:
            return
        self.prefetch = count
        channel = self.task_channel
        if channel is None:
            return
        try:
            channel.basic_qos(0, count, not self._per_consumer_qos)
            self.window = count
            if self._per_consumer_qos:  # per-consumer QoS only applies to new consumers
                for spec in self._specs:
                    if spec.acks and spec.tag is not None:
                        channel.basic_cancel(spec.tag)
                        self._start_locked(spec)
        except IO_ERRORS as exc:
            self.lost_locked(exc)

    def set_window_locked(self, count: int) -> None:
        """Move the channel-wide QoS to ``count`` without waiting for RabbitMQ's reply (its
        ``qos-ok`` is ignored when it arrives). Only for global QoS (classic queues)."""
        count = min(max(count, 1), _MAX_PREFETCH)
        channel = self.task_channel
        if count == self.window or channel is None or self._per_consumer_qos:
            return
        try:
            channel.send_method(amqp_spec.Basic.Qos, "lBb", (0, count, True))
            self.window = count
        except IO_ERRORS as exc:
            self.lost_locked(exc)

    # -- waiting (lock held) -------------------------------------------------------------------

    def pump_locked(self) -> None:
        """Connect if it is time to (re)try, then dispatch what arrived."""
        if self.connection is None and not self.closed:
            self.try_connect_locked()
        self.read_available_locked()
        if self._cancelled_by_server:
            self.lost_locked(amqp.exceptions.ConsumerCancelled("RabbitMQ cancelled a consumer (queue deleted?)"))

    def wait_for_locked(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Read and wait until ``ready()`` (checked with the lock held) is true; False when
        ``timeout`` passed, or the link was woken or closed first."""
        deadline = time.monotonic() + max(timeout, 0.0)
        generation = self.wake_generation
        while True:
            self.pump_locked()
            if ready():
                return True
            if self.closed or self.wake_generation != generation:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.wait_locked(remaining)
