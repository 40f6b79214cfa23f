"""What the AMQP plugin declares on RabbitMQ, and how delayed messages travel.

Work queues
    ``<queue>``: durable, ``x-max-priority`` (unless quorum), dead-letters through the direct
    exchange ``celeriac.dead-letter`` with routing key ``<queue>.dead-letter`` into the durable
    queue of that name. Tasks are published to the default exchange with the queue's name as
    routing key (as Celery does), ``mandatory`` so a missing queue is noticed.

Delayed delivery: binary TTL levels
    Level ``k`` (0-31) is a headers exchange and a durable queue, both ``celeriac.delay.<k>``
    (``celeriac.delay.quorum.<k>``, quorum queues, with ``queue_type = "quorum"``).
    The queue holds messages for exactly ``2**k`` ms (``x-message-ttl``) and then dead-letters
    them to exchange ``celeriac.delay.<k-1>``; level 0 dead-letters to the default exchange,
    which delivers by routing key -- the target queue's name, kept from the original publish.
    Exchange ``k`` routes a message into queue ``k`` when it carries header
    ``celeriac-delay-<k>``, and otherwise (its ``alternate-exchange``) on to exchange ``k-1``.

    A delay of ``d`` ms is rounded up to an odd number (the last hop is always the 1 ms level:
    only a queue can hand a message to the default exchange), the message gets one header per
    set bit of ``d`` and is published to the exchange of its highest bit. It then waits in the
    level queues of its set bits, one after the other, ``d`` ms in all. Every level queue holds
    messages of a single TTL, so they expire in order at the head of the queue -- no message
    waits behind a longer one. Nothing waits in a worker: delayed messages survive worker and
    broker restarts (durable queues, persistent messages) and never meet ``consumer_timeout``.
    A message is never early and late by about a millisecond per level it passes (RabbitMQ's
    expiry timers and dead-lettering; 4-12 ms measured here); the longest delay is ``2**32 - 1`` ms
    (49.7 days) -- a longer one arrives then, and the worker delays it again from its ``eta``
    header. The level topology is declared once per connection, on the first delayed publish.

Broadcast
    A fanout exchange named after the channel (non-durable, as kombu's ``celery.pidbox``); each
    subscription is an exclusive, auto-deleted, server-named queue bound to it.
"""

from __future__ import annotations

from typing import Any

from ._link import Declarer
from ._options import AMQPOptions

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DELAY_HEADER_PREFIX",
    "DELAY_LEVELS",
    "DELAY_PREFIX",
    "Topology",
]

DEAD_LETTER_EXCHANGE = "celeriac.dead-letter"
DELAY_PREFIX = "celeriac.delay."
DELAY_HEADER_PREFIX = "celeriac-delay-"
DELAY_LEVELS = 32
MAX_DELAY_MS = 2**DELAY_LEVELS - 1


class Topology:
    """Names and arguments of everything the plugin declares, from the options."""

    def __init__(self, options: AMQPOptions, dead_letter_suffix: str) -> None:
        self.options = options
        self.dead_letter_suffix = dead_letter_suffix
        #: Quorum delay levels have names of their own, so both kinds can share a vhost.
        self.delay_prefix = f"{DELAY_PREFIX}quorum." if options.quorum else DELAY_PREFIX

    def delay_name(self, level: int) -> str:
        """Exchange and queue name of delay level ``level`` (``""`` below level 0: the default
        exchange)."""
        return f"{self.delay_prefix}{level}" if level >= 0 else ""

    # -- names -------------------------------------------------------------------------------

    def dead_letter_queue(self, queue: str) -> str:
        return queue + self.dead_letter_suffix

    def is_dead_letter_queue(self, queue: str) -> bool:
        return queue.endswith(self.dead_letter_suffix)

    # -- arguments ---------------------------------------------------------------------------

    def _type_arguments(self) -> dict[str, Any]:
        if self.options.quorum:
            # at-least-once dead-lettering (RabbitMQ >= 3.10) needs reject-publish overflow
            return {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        return {}

    def work_queue_arguments(self, queue: str) -> dict[str, Any]:
        arguments = {
            **self._type_arguments(),
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.dead_letter_queue(queue),
        }
        if self.options.priority_levels:
            arguments["x-max-priority"] = self.options.priority_levels
        return arguments

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.options.quorum else {}

    # -- declarations ------------------------------------------------------------------------

    def declare_queue(self, declarer: Declarer, queue: str) -> None:
        """A work queue with its dead-letter queue (or, for a ``.dead-letter`` name, a
        dead-letter queue)."""
        if ("work", queue) in declarer.done:
            return
        durable = self.options.durable
        if self.is_dead_letter_queue(queue):
            declarer.queue(queue, durable=durable, arguments=self.dead_letter_queue_arguments())
        else:
            dead_letter_queue = self.dead_letter_queue(queue)
            declarer.exchange(DEAD_LETTER_EXCHANGE, "direct", durable=True)
            declarer.queue(dead_letter_queue, durable=durable, arguments=self.dead_letter_queue_arguments())
            declarer.bind(dead_letter_queue, DEAD_LETTER_EXCHANGE, dead_letter_queue)
            declarer.queue(queue, durable=durable, arguments=self.work_queue_arguments(queue))
        declarer.done.add(("work", queue))

    def declare_dead_letter_route(self, declarer: Declarer, queue: str) -> None:
        """The dead-letter exchange and the dead-letter queue of ``queue``."""
        dead_letter_queue = self.dead_letter_queue(queue)
        declarer.exchange(DEAD_LETTER_EXCHANGE, "direct", durable=True)
        self.declare_queue(declarer, dead_letter_queue)
        declarer.bind(dead_letter_queue, DEAD_LETTER_EXCHANGE, dead_letter_queue)

    def declare_delay_levels(self, declarer: Declarer) -> None:
        """Every delay level (exchange, queue, binding), once per connection."""
        if ("delay-levels",) in declarer.done:
            return
        channel = declarer.channel
        type_arguments = self._type_arguments()
        for level in range(DELAY_LEVELS):
            name, lower = self.delay_name(level), self.delay_name(level - 1)
            exchange_arguments = {"alternate-exchange": lower} if level else {}
            queue_arguments = {**type_arguments, "x-message-ttl": 2**level, "x-dead-letter-exchange": lower}
            try:
                # Pipelined (nowait); an existing entity with other settings closes the channel
                # and the careful path below finds out which.
                channel.exchange_declare(
                    name, "headers", durable=True, auto_delete=False, nowait=True, arguments=exchange_arguments
                )
                channel.queue_declare(
                    name, durable=True, exclusive=False, auto_delete=False, nowait=True, arguments=queue_arguments
                )
                channel.queue_bind(name, name, "", nowait=True, arguments=self._level_binding(level))
            except Exception:
                break
        try:
            channel.queue_declare(self.delay_name(DELAY_LEVELS - 1), passive=True)  # waits for all of the above
        except Exception:
            for level in range(DELAY_LEVELS):
                name, lower = self.delay_name(level), self.delay_name(level - 1)
                exchange_arguments = {"alternate-exchange": lower} if level else {}
                declarer.exchange(name, "headers", durable=True, arguments=exchange_arguments)
                declarer.queue(
                    name,
                    durable=True,
                    arguments={**type_arguments, "x-message-ttl": 2**level, "x-dead-letter-exchange": lower},
                )
                declarer.bind(name, name, "", self._level_binding(level))
        declarer.done.add(("delay-levels",))

    @staticmethod
    def _level_binding(level: int) -> dict[str, Any]:
        return {"x-match": "all", f"{DELAY_HEADER_PREFIX}{level}": "1"}

    def declare_fanout(self, declarer: Declarer, exchange: str) -> None:
        declarer.exchange(exchange, "fanout", durable=False)

    # -- delays ------------------------------------------------------------------------------

    def delay_route(self, delay_ms: int) -> tuple[str, dict[str, str]]:
        """The exchange to publish a message delayed by ``delay_ms`` to, and its extra headers."""
        delay = min(max(delay_ms, 1) | 1, MAX_DELAY_MS)
        headers = {f"{DELAY_HEADER_PREFIX}{level}": "1" for level in range(delay.bit_length()) if delay >> level & 1}
        return self.delay_name(delay.bit_length() - 1), headers
