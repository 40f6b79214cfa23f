"""The ``amqp://`` transport: RabbitMQ through py-amqp, connections opened with kombu.

Two connections per transport: the **publisher** (confirm-mode channel; also declarations and
queue queries) and the **consumer** (push consumers with manual acks, broadcast subscriptions).
RabbitMQ pushes as many messages as the QoS window allows -- once the worker set its prefetch,
what it holds unsettled plus the free slots of its last fetch (see :mod:`._consumer`);
:meth:`AMQPTransport.fetch` hands out what arrived (per queue, higher priority first, then in
order of arrival; queues served in turn). A message pushed but not yet fetched counts as ready
(``queue_length``, ``purge``).

Thread model: ``fetch`` runs in the worker's consumer thread and acks come from its settler
thread; both use the consumer connection under its lock, which nobody holds while waiting (see
:mod:`._link`). Acks are batched: ``ack_many`` sends one ``basic.ack`` with ``multiple`` for
the longest run of the oldest unsettled deliveries, and single acks for the rest.

Delivery tags are only valid on the channel that delivered them, so a delivery's tag is
``(connection generation, delivery tag)``; settling a delivery of a connection that broke does
nothing -- RabbitMQ has already put the message back in its queue.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import amqp
import celeriac

from ._consumer import Consumer, ConsumerSpec
from ._link import IO_ERRORS, Declarer, Keeper
from ._message import envelope_from_message, message_from_envelope
from ._options import AMQPOptions, parse_options
from ._publisher import Outgoing, Publisher, Returned
from ._topology import DEAD_LETTER_EXCHANGE, DELAY_PREFIX, Topology

__all__ = ["AMQPTransport"]

logger = logging.getLogger("celeriac.amqp")

_Buffered = tuple[int, int, celeriac.Delivery]  # (-priority, arrival, delivery)


class AMQPTransport(celeriac.Transport):
    """RabbitMQ transport; see the plugin's module docstring for URL forms and options."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")

    def __init__(self, url: str = "amqp://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings: AMQPOptions = parse_options(self.options)
        if self.settings.quorum and "max_priority" in self.settings.given and self.settings.max_priority:
            logger.warning("amqp option max_priority has no effect with queue_type = 'quorum'")
        self.topology = Topology(self.settings, self.dead_letter_suffix)
        self._publisher = Publisher(url, self.settings)
        self._consumer = Consumer(url, self.settings)
        self._consumer.on_lost_hooks.append(self._forget_deliveries_locked)
        # consumer-link state, guarded by self._consumer.cond:
        self._consumed: dict[str, ConsumerSpec] = {}
        self._buffers: dict[str, list[_Buffered]] = {}
        self._unsettled: dict[int, None] = {}  # delivery tags of this connection, oldest first
        self._arrivals = itertools.count()
        self._rotation = 0
        #: True once the worker called set_prefetch: QoS then follows its free capacity.
        self._windowed = False
        self._subscriptions: weakref.WeakSet[_AMQPSubscription] = weakref.WeakSet()
        self._closed = False
        self._keeper = (
            Keeper([self._consumer, self._publisher], self._consumer.tick, "celeriac-amqp-heartbeat")
            if self.settings.heartbeat
            else None
        )

    def _check_open(self) -> None:
        if self._closed:
            raise celeriac.TransportError(f"the AMQP transport {self._publisher.address} is closed")

    # -- publishing --------------------------------------------------------------------------

    def publish(self, envelope: celeriac.Envelope, queue: str, *, eta: float | None = None) -> None:
        """Publish to ``queue`` (declared on first use), through the delay levels when ``eta``
        is ahead; returns once RabbitMQ confirmed."""
        self._check_open()
        delay_ms = 0
        if eta is not None and eta > time.time():
            # declare the delay levels first (once per connection) so that does not delay it
            self._publisher.run(self.topology.declare_delay_levels)
            delay_ms = math.ceil((eta - time.time()) * 1000)
        if delay_ms <= 0:
            message = message_from_envelope(envelope, persistent=self.settings.persistent)
            self._publish([Outgoing("", queue, message)], [queue])
        else:
            exchange, headers = self.topology.delay_route(delay_ms)
            message = message_from_envelope(envelope, persistent=self.settings.persistent, extra_headers=headers)
            self._publish([Outgoing(exchange, queue, message)], [queue], delayed=True)

    def publish_many(self, items: Iterable[tuple[celeriac.Envelope, str]]) -> None:
        """Publish several envelopes in one pipelined batch (one wait for all confirms)."""
        self._check_open()
        persistent = self.settings.persistent
        batch = [
            Outgoing("", queue, message_from_envelope(envelope, persistent=persistent)) for envelope, queue in items
        ]
        self._publish(batch, list(dict.fromkeys(item.routing_key for item in batch)))

    def _publish(self, batch: list[Outgoing], queues: Sequence[str], *, delayed: bool = False) -> None:
        def prepare(declarer: Declarer) -> None:
            for queue in queues:
                self.topology.declare_queue(declarer, queue)
            if delayed:
                self.topology.declare_delay_levels(declarer)

        returned = self._publisher.publish(batch, prepare=prepare)
        if returned:
            # A queue was deleted since this connection declared it: declare again, once.
            def redeclare(declarer: Declarer) -> None:
                for item in returned:
                    declarer.done.difference_update({("work", item.routing_key), ("queue", item.routing_key)})
                    if item.exchange.startswith(DELAY_PREFIX):
                        declarer.done.discard(("delay-levels",))
                prepare(declarer)

            again = [Outgoing(item.exchange, item.routing_key, item.message) for item in returned]
            _raise_returned(self._publisher.publish(again, prepare=redeclare))

    # -- consuming ---------------------------------------------------------------------------

    def set_prefetch(self, count: int) -> None:
        """The most deliveries the worker holds reserved or running: RabbitMQ's QoS prefetch
        count, which from now on follows the worker's free capacity (see :mod:`._consumer`)."""
        with self._consumer.cond:
            self._consumer.set_prefetch_locked(count)
            self._windowed = True

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[celeriac.Delivery]:
        """Up to ``limit`` deliveries pushed by RabbitMQ, waiting up to ``timeout`` for one.

        Consuming a queue starts at its first fetch and lasts until :meth:`close`. While the
        connection is down, fetch keeps reconnecting (with backoff) until its timeout passes.
        """
        if limit < 1:
            raise ValueError(f"fetch limit must be at least 1, got {limit}")
        self._check_open()
        names = list(dict.fromkeys(queues))
        link = self._consumer
        taken: list[celeriac.Delivery] = []
        with link.cond:
            for name in names:
                if name not in self._consumed:
                    self._consume_locked(name)
            if self._windowed:
                # what the worker holds unsettled (running, or finished and being settled) plus
                # the free slots it asks for: finished tasks do not hold up the next messages
                buffered = sum(len(buffer) for buffer in self._buffers.values())
                link.set_window_locked(len(self._unsettled) - buffered + limit)

            def ready() -> bool:
                taken.extend(self._take_locked(names, limit))
                return bool(taken)

            link.wait_for_locked(ready, timeout)
        return taken

    def _consume_locked(self, queue: str) -> None:
        spec = ConsumerSpec(
            setup=lambda declarer, channel: self._declared(declarer, queue),
            on_message=functools.partial(self._on_message, queue),
            acks=True,
        )
        self._consumed[queue] = spec
        self._buffers[queue] = []
        self._consumer.add_locked(spec)

    def _declared(self, declarer: Declarer, queue: str) -> str:
        self.topology.declare_queue(declarer, queue)
        return queue

    def _on_message(self, queue: str, message: amqp.Message) -> None:
        """A delivery arrived (consumer lock held, while reading)."""
        info = message.delivery_info
        tag = info["delivery_tag"]
        try:
            envelope, count = envelope_from_message(message)
        except Exception as exc:  # malformed headers: let the worker dead-letter it
            body = message.body if isinstance(message.body, bytes) else b""
            headers = {"x-celeriac-error": str(exc)}
            envelope, count = celeriac.Envelope(body, "application/octet-stream", "binary", headers), 1
        tag_of_connection = (self._consumer.generation, tag)
        delivery = celeriac.Delivery(envelope, queue, tag_of_connection, bool(info["redelivered"]), count)
        self._unsettled[tag] = None
        heapq.heappush(self._buffers[queue], (-envelope.priority, next(self._arrivals), delivery))

    def _take_locked(self, names: Sequence[str], limit: int) -> list[celeriac.Delivery]:
        """Up to ``limit`` buffered deliveries, one queue after another in turn."""
        if len(names) > 1:
            start = self._rotation % len(names)
            self._rotation += 1
            names = [*names[start:], *names[:start]]
        buffers = [self._buffers[name] for name in names if self._buffers.get(name)]
        taken: list[celeriac.Delivery] = []
        while buffers and len(taken) < limit:
            for buffer in buffers:
                if len(taken) >= limit:
                    break
                taken.append(heapq.heappop(buffer)[2])
            buffers = [buffer for buffer in buffers if buffer]
        return taken

    def _forget_deliveries_locked(self) -> None:
        held = len(self._unsettled)
        for buffer in self._buffers.values():
            buffer.clear()
        self._unsettled.clear()
        if held and not self._closed:
            logger.warning("%d unacked message(s) go back to their queues and will be redelivered", held)

    # -- settling ----------------------------------------------------------------------------

    def _live_tags_locked(self, deliveries: Iterable[celeriac.Delivery]) -> list[int]:
        generation = self._consumer.generation
        tags = []
        for delivery in deliveries:
            tag = delivery.tag
            if isinstance(tag, tuple) and len(tag) == 2 and tag[0] == generation and tag[1] in self._unsettled:
                tags.append(tag[1])
        return tags

    def ack(self, delivery: celeriac.Delivery) -> None:
        """Ack ``delivery``; a no-op when it is settled already or its connection broke."""
        self.ack_many((delivery,))

    def ack_many(self, deliveries: Iterable[celeriac.Delivery]) -> None:
        """Ack several deliveries: one ``multiple`` ack for the run of the oldest, then singles."""
        link = self._consumer
        with link.cond:
            tags = set(self._live_tags_locked(deliveries))
            channel = link.task_channel
            if not tags or channel is None:
                return
            run_end, run_length = 0, 0
            for tag in self._unsettled:  # oldest first
                if tag not in tags:
                    break
                run_end, run_length = tag, run_length + 1
            try:
                if run_length > 1:
                    channel.basic_ack(run_end, multiple=True)
                    for tag in itertools.islice(list(self._unsettled), run_length):
                        del self._unsettled[tag]
                        tags.discard(tag)
                for tag in sorted(tags):
                    channel.basic_ack(tag)
                    del self._unsettled[tag]
            except IO_ERRORS as exc:
                link.lost_locked(exc)

    def reject(self, delivery: celeriac.Delivery, *, requeue: bool) -> None:
        """Requeue ``delivery`` (``requeue=True``) or reject it without requeue, which RabbitMQ
        dead-letters to the queue's dead-letter queue (``x-death`` reason ``rejected``)."""
        link = self._consumer
        with link.cond:
            tags = self._live_tags_locked((delivery,))
            if not tags or link.task_channel is None:
                return
            try:
                link.task_channel.basic_reject(tags[0], requeue=requeue)
                del self._unsettled[tags[0]]
            except IO_ERRORS as exc:
                link.lost_locked(exc)

    def dead_letter(self, delivery: celeriac.Delivery, reason: str) -> None:
        """Publish a copy with ``x-death-reason``/``-queue``/``-time`` to the dead-letter queue
        (through ``celeriac.dead-letter``), then ack the original."""
        with self._consumer.cond:
            if not self._live_tags_locked((delivery,)):
                return
        envelope = delivery.envelope
        headers = {**envelope.headers, "x-death-reason": reason, "x-death-queue": delivery.queue}
        headers["x-death-time"] = time.time()
        copy = celeriac.Envelope(
            envelope.body, envelope.content_type, envelope.content_encoding, headers, dict(envelope.properties)
        )
        dead_letter_queue = self.dead_letter_queue(delivery.queue)
        message = message_from_envelope(copy, persistent=self.settings.persistent)
        returned = self._publisher.publish(
            [Outgoing(DEAD_LETTER_EXCHANGE, dead_letter_queue, message)],
            prepare=lambda declarer: self.topology.declare_dead_letter_route(declarer, delivery.queue),
        )
        _raise_returned(returned)
        self.ack(delivery)

    # -- queues ------------------------------------------------------------------------------

    def declare_queue(self, queue: str) -> None:
        """Declare ``queue`` with its dead-letter queue (durable, priorities, DLX)."""
        self._check_open()
        self._publisher.run(lambda declarer: self.topology.declare_queue(declarer, queue))

    def declare_delay_levels(self) -> None:
        """Declare the delay levels now (otherwise the first delayed publish does)."""
        self._check_open()
        self._publisher.run(self.topology.declare_delay_levels)

    def queue_length(self, queue: str) -> int:
        """Ready messages in RabbitMQ plus those pushed here and not fetched yet."""
        ready = self._publisher.run(lambda declarer: declarer.message_count(queue))
        with self._consumer.cond:
            return ready + len(self._buffers.get(queue, ()))

    def purge(self, queue: str) -> int:
        """Delete the ready messages (RabbitMQ's and those pushed here but not fetched)."""
        purged = self._publisher.run(lambda declarer: declarer.purge(queue))
        with self._consumer.cond:
            buffer = self._buffers.get(queue)
            if not buffer:
                return purged
            dropped = [entry[2] for entry in buffer]
            buffer.clear()
        self.ack_many(dropped)
        return purged + len(dropped)

    # -- broadcast ---------------------------------------------------------------------------

    def broadcast(self, channel: str, envelope: celeriac.Envelope) -> None:
        """Publish ``envelope`` to the fanout exchange ``channel`` (transient, confirmed)."""
        self._check_open()
        message = message_from_envelope(envelope, persistent=False)
        self._publisher.publish(
            [Outgoing(channel, "", message, mandatory=False)],
            prepare=lambda declarer: self.topology.declare_fanout(declarer, channel),
        )

    def subscribe(self, channel: str) -> celeriac.Subscription:
        """Bind a new exclusive queue to the fanout exchange ``channel``; active on return."""
        self._check_open()
        subscription = _AMQPSubscription(self, channel)
        link = self._consumer
        with link.cond:
            link.connect_before_locked(time.monotonic() + self.settings.confirm_timeout)
            link.add_locked(subscription.spec)
            if subscription.spec.tag is None:
                link.remove_locked(subscription.spec)
                raise celeriac.TransportError(f"cannot subscribe to {channel!r} at {link.address}: {link.last_error}")
        self._subscriptions.add(subscription)
        return subscription

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Make fetches blocked right now return ``[]``."""
        self._consumer.wake()

    def close(self) -> None:
        """Close both connections; RabbitMQ returns unacked deliveries to their queues."""
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.stop()
        for subscription in list(self._subscriptions):
            subscription.closed = True
        self._consumer.close()
        self._publisher.close()

    def info(self) -> dict[str, Any]:
        """Broker address (password masked) and the options in effect."""
        settings = self.settings
        return {
            **super().info(),
            "broker": self._publisher.address,
            "queue_type": settings.queue_type,
            "max_priority": settings.priority_levels,
            "heartbeat": settings.heartbeat,
            "confirm_timeout": settings.confirm_timeout,
            "prefetch_count": self._consumer.prefetch,
            "qos_window": self._consumer.window,
        }


def _raise_returned(returned: Sequence[Returned]) -> None:
    if returned:
        first = returned[0]
        raise celeriac.TransportError(f"RabbitMQ could not route a message to {first.routing_key!r}: {first.reason}")


class _AMQPSubscription(celeriac.Subscription):
    """A broadcast subscriber: an exclusive queue bound to the channel's fanout exchange."""

    def __init__(self, transport: AMQPTransport, channel: str) -> None:
        self._transport = transport
        self._exchange = channel
        self._envelopes: deque[celeriac.Envelope] = deque()
        self.closed = False
        self.spec = ConsumerSpec(setup=self._setup, on_message=self._on_message, acks=False)

    def _setup(self, declarer: Declarer, channel: amqp.Channel) -> str:
        self._transport.topology.declare_fanout(declarer, self._exchange)
        queue = str(channel.queue_declare("", durable=False, exclusive=True, auto_delete=True).queue)
        channel.queue_bind(queue, self._exchange, "")
        return queue

    def _on_message(self, message: amqp.Message) -> None:
        if not self.closed:
            self._envelopes.append(envelope_from_message(message)[0])

    def get(self, timeout: float) -> celeriac.Envelope | None:
        """The next broadcast, waiting up to ``timeout``; None when none came (or closed)."""
        link = self._transport._consumer
        with link.cond:
            if not self.closed:
                link.wait_for_locked(lambda: bool(self._envelopes) or self.closed, timeout)
            if self.closed or not self._envelopes:
                return None
            return self._envelopes.popleft()

    def close(self) -> None:
        """Cancel the consumer (RabbitMQ deletes the exclusive queue); idempotent."""
        link = self._transport._consumer
        with link.cond:
            if self.closed:
                return
            self.closed = True
            self._envelopes.clear()
            if not link.closed:
                link.remove_locked(self.spec)
            link.cond.notify_all()
