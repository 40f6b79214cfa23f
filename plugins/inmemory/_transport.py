"""The ``memory://`` transport: queues in this process's memory, shared by name.

Every :class:`MemoryTransport` with the same URL name talks to one :class:`_Broker`, held in a
:class:`weakref.WeakValueDictionary`: it lives as long as some transport (or subscription) of
that name does, so nothing leaks between tests that use unique names. One lock guards a
broker; one condition variable on it wakes blocked fetches on publish, requeue, ``wake`` and
``close``, and a blocked fetch also times its wait to the earliest ETA or lease deadline, so
nothing polls.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import celeriac

__all__ = ["MemoryTransport", "broker_name"]

#: Identifies the transport that holds a lease, so ``close`` returns only its own deliveries.
_owner_ids = itertools.count(1)


def broker_name(url: str) -> str:
    """The broker name of a ``memory://`` URL: ``memory://NAME/`` -> ``NAME``, ``memory://`` -> ``""``."""
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def _copy_data(value: Any) -> Any:
    """A deep copy of plain data: dicts, lists and tuples are rebuilt, other values are immutable."""
    if isinstance(value, dict):
        return {key: _copy_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_copy_data(item) for item in value)
    return value


def _copy_envelope(envelope: celeriac.Envelope, extra_headers: Mapping[str, Any] | None = None) -> celeriac.Envelope:
    """An envelope nobody else holds a reference into, with ``extra_headers`` added."""
    headers = _copy_data(envelope.headers)
    if extra_headers:
        headers.update(extra_headers)
    return celeriac.Envelope(
        body=bytes(envelope.body),
        content_type=envelope.content_type,
        content_encoding=envelope.content_encoding,
        headers=headers,
        properties=_copy_data(envelope.properties),
    )


class _Message:
    """A message owned by the broker; ``deliveries`` counts how often it was fetched."""

    __slots__ = ("deliveries", "envelope", "priority", "ready_at", "sequence")

    def __init__(self, envelope: celeriac.Envelope, sequence: int, ready_at: float) -> None:
        self.envelope = envelope
        self.priority = envelope.priority
        self.sequence = sequence
        self.deliveries = 0
        #: Unix time the message became (or becomes, when delayed) ready: for its age.
        self.ready_at = ready_at


class _Lease:
    """An unsettled delivery: which message, from which queue, held by whom, until when."""

    __slots__ = ("deadline", "message", "owner", "queue")

    def __init__(self, message: _Message, queue: str, owner: int, deadline: float | None) -> None:
        self.message = message
        self.queue = queue
        self.owner = owner
        #: ``time.monotonic()`` after which the message goes back to its queue; None = never.
        self.deadline = deadline


class _Queue:
    """Ready messages by (priority desc, sequence) and delayed ones by ETA, both heaps."""

    __slots__ = ("delayed", "ready")

    def __init__(self) -> None:
        self.ready: list[tuple[int, int, _Message]] = []
        self.delayed: list[tuple[float, int, _Message]] = []

    def push_ready(self, message: _Message) -> None:
        heapq.heappush(self.ready, (-message.priority, message.sequence, message))

    def promote_due(self, now: float) -> None:
        """Move delayed messages whose ETA (unix time) is ``now`` or earlier to ready."""
        while self.delayed and self.delayed[0][0] <= now:
            self.push_ready(heapq.heappop(self.delayed)[2])


class _Broker:
    """The queues, leases and broadcast channels of one name; every method needs ``lock`` held."""

    __slots__ = ("__weakref__", "changed", "channels", "lease_deadlines", "leases", "lock", "queues", "sequence")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Notified whenever a fetch may find something new (or should give up).
        self.changed = threading.Condition(self.lock)
        self.queues: dict[str, _Queue] = {}
        #: delivery tag -> lease; tags and message sequence numbers share one counter.
        self.leases: dict[int, _Lease] = {}
        #: (deadline, tag) heap; an entry is stale when its lease is gone or was extended.
        self.lease_deadlines: list[tuple[float, int]] = []
        self.channels: dict[str, set[_MemorySubscription]] = {}
        self.sequence = itertools.count(1)

    def queue(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue()
        return queue

    def put(self, envelope: celeriac.Envelope, queue_name: str, eta: float | None) -> None:
        now = time.time()
        message = _Message(envelope, next(self.sequence), now if eta is None else max(eta, now))
        queue = self.queue(queue_name)
        if eta is None or eta <= now:
            queue.push_ready(message)
        else:
            heapq.heappush(queue.delayed, (eta, message.sequence, message))

    def requeue(self, lease: _Lease) -> None:
        """Put a leased message back in its original place in its queue."""
        self.queue(lease.queue).push_ready(lease.message)
        self.changed.notify_all()

    def settle(self, tag: object) -> _Lease | None:
        """End the lease of ``tag``; None when it is unknown or already settled."""
        return self.leases.pop(tag, None) if isinstance(tag, int) else None

    def current_lease_deadline(self) -> float | None:
        """The earliest live lease deadline, dropping stale heap entries on the way."""
        heap = self.lease_deadlines
        while heap:
            deadline, tag = heap[0]
            lease = self.leases.get(tag)
            if lease is not None and lease.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def expire_leases(self, now: float) -> None:
        """Return every message whose lease ended at or before ``now`` (monotonic) to its queue."""
        while (deadline := self.current_lease_deadline()) is not None and deadline <= now:
            _, tag = heapq.heappop(self.lease_deadlines)
            self.requeue(self.leases.pop(tag))

    def take(
        self, names: Sequence[str], limit: int, owner: int, lease_seconds: float | None
    ) -> list[celeriac.Delivery]:
        """Lease up to ``limit`` ready messages, one queue after another in turn."""
        now = time.monotonic()
        self.expire_leases(now)
        wall_now = time.time()
        queues = [(name, self.queues[name]) for name in names if name in self.queues]
        for _, queue in queues:
            queue.promote_due(wall_now)
        deadline = None if lease_seconds is None else now + lease_seconds
        deliveries: list[celeriac.Delivery] = []
        while queues and len(deliveries) < limit:
            queues = [(name, queue) for name, queue in queues if queue.ready]
            for name, queue in queues[: limit - len(deliveries)]:
                message = heapq.heappop(queue.ready)[2]
                message.deliveries += 1
                tag = next(self.sequence)
                self.leases[tag] = _Lease(message, name, owner, deadline)
                if deadline is not None:
                    heapq.heappush(self.lease_deadlines, (deadline, tag))
                envelope = _copy_envelope(message.envelope)
                redelivered = message.deliveries > 1
                deliveries.append(celeriac.Delivery(envelope, name, tag, redelivered, message.deliveries))
        return deliveries

    def seconds_until_due(self, names: Sequence[str]) -> float | None:
        """Seconds until the earliest ETA on ``names`` or lease deadline; None when none."""
        candidates = [
            queue.delayed[0][0] - time.time() for name in names if (queue := self.queues.get(name)) and queue.delayed
        ]
        lease_deadline = self.current_lease_deadline()
        if lease_deadline is not None:
            candidates.append(lease_deadline - time.monotonic())
        return max(min(candidates), 0.0) if candidates else None


_brokers: weakref.WeakValueDictionary[str, _Broker] = weakref.WeakValueDictionary()
_brokers_lock = threading.Lock()


def _shared_broker(name: str) -> _Broker:
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = _Broker()
        return broker


class _MemorySubscription(celeriac.Subscription):
    """One subscriber of a broadcast channel, with its own queue of envelopes."""

    def __init__(self, broker: _Broker, channel: str) -> None:
        self._broker = broker
        self._channel = channel
        self._envelopes: deque[celeriac.Envelope] = deque()
        self._arrived = threading.Condition(broker.lock)
        self._closed = False

    def deliver(self, envelope: celeriac.Envelope) -> None:
        """Queue ``envelope`` for this subscriber; the caller holds the broker lock."""
        self._envelopes.append(envelope)
        self._arrived.notify()

    def get(self, timeout: float) -> celeriac.Envelope | None:
        """Wait up to ``timeout`` seconds for the next broadcast; None when none came or closed."""
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self._envelopes) or self._closed, timeout=max(timeout, 0.0))
            return None if self._closed or not self._envelopes else self._envelopes.popleft()

    def close(self) -> None:
        """Stop receiving and drop what was not read; idempotent."""
        with self._arrived:
            if self._closed:
                return
            self._closed = True
            self._envelopes.clear()
            subscribers = self._broker.channels.get(self._channel, set())
            subscribers.discard(self)
            if not subscribers:
                self._broker.channels.pop(self._channel, None)
            self._arrived.notify_all()


class MemoryTransport(celeriac.Transport):
    """Queues in this process's memory, shared by every transport with the same URL name.

    Settling (ack, reject, dead-letter) a delivery that is unknown or already settled -- for
    example one whose lease expired and which went back to its queue -- does nothing.
    After :meth:`close`, publishing, fetching and subscribing raise
    :class:`~celeriac.TransportError`; a fetch blocked at that moment returns ``[]``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    shared_between_processes: ClassVar[bool] = False

    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.name = broker_name(url)
        self.visibility_timeout = _visibility_timeout(self.options)
        # The strong reference that keeps the named broker alive while this transport is.
        self._broker = _shared_broker(self.name)
        self._owner = next(_owner_ids)
        self._wake_generation = 0
        self._rotation = 0
        self._closed = False
        self._subscriptions: weakref.WeakSet[_MemorySubscription] = weakref.WeakSet()

    # The base declares a ClassVar; here the answer depends on the options.
    @property
    def needs_lease_extension(self) -> bool:
        """True when ``visibility_timeout`` is set: unsettled deliveries then expire."""
        return self.visibility_timeout is not None

    def _check_open(self) -> None:
        if self._closed:
            raise celeriac.TransportError(f"the memory transport {self.url!r} is closed")

    def publish(self, envelope: celeriac.Envelope, queue: str, *, eta: float | None = None) -> None:
        """Put a copy of ``envelope`` on ``queue`` (delayed until ``eta``) and wake fetchers."""
        copy = _copy_envelope(envelope)
        with self._broker.changed:
            self._check_open()
            self._broker.put(copy, queue, eta)
            self._broker.changed.notify_all()

    def publish_many(self, items: Iterable[tuple[celeriac.Envelope, str]]) -> None:
        """Publish several envelopes under one lock."""
        copies = [(_copy_envelope(envelope), queue) for envelope, queue in items]
        with self._broker.changed:
            self._check_open()
            for copy, queue in copies:
                self._broker.put(copy, queue, None)
            self._broker.changed.notify_all()

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[celeriac.Delivery]:
        """Lease up to ``limit`` messages, taking from ``queues`` in turn; blocks up to ``timeout``.

        The first queue served rotates from call to call, so a busy queue cannot starve the
        others even with ``limit=1``. Returns ``[]`` early after :meth:`wake` or :meth:`close`.
        """
        if limit < 1:
            raise ValueError(f"fetch limit must be at least 1, got {limit}")
        names = list(dict.fromkeys(queues))
        if names:
            start = self._rotation % len(names)
            self._rotation += 1
            names = names[start:] + names[:start]
        deadline = time.monotonic() + max(timeout, 0.0)
        broker = self._broker
        with broker.changed:
            self._check_open()
            generation = self._wake_generation
            while generation == self._wake_generation:  # changed by wake() and close()
                deliveries = broker.take(names, limit, self._owner, self.visibility_timeout)
                remaining = deadline - time.monotonic()
                if deliveries or remaining <= 0:
                    return deliveries
                due = broker.seconds_until_due(names)
                broker.changed.wait(remaining if due is None else min(remaining, due))
            return []

    def ack(self, delivery: celeriac.Delivery) -> None:
        """Forget ``delivery``; a no-op when it is unknown or already settled."""
        with self._broker.lock:
            self._broker.settle(delivery.tag)

    def ack_many(self, deliveries: Iterable[celeriac.Delivery]) -> None:
        """Ack several deliveries under one lock."""
        with self._broker.lock:
            for delivery in deliveries:
                self._broker.settle(delivery.tag)

    def reject(self, delivery: celeriac.Delivery, *, requeue: bool) -> None:
        """Put ``delivery`` back where it was (redelivered next time) or drop it."""
        with self._broker.lock:
            lease = self._broker.settle(delivery.tag)
            if lease is not None and requeue:
                self._broker.requeue(lease)

    def dead_letter(self, delivery: celeriac.Delivery, reason: str) -> None:
        """Atomically move ``delivery`` to its dead-letter queue with ``x-death-*`` headers."""
        with self._broker.changed:
            lease = self._broker.settle(delivery.tag)
            if lease is None:
                return
            headers = {"x-death-reason": reason, "x-death-queue": lease.queue, "x-death-time": time.time()}
            copy = _copy_envelope(lease.message.envelope, headers)
            self._broker.put(copy, self.dead_letter_queue(lease.queue), None)
            self._broker.changed.notify_all()

    def extend_lease(self, deliveries: Sequence[celeriac.Delivery], seconds: float) -> None:
        """Keep ``deliveries`` invisible for at least ``seconds`` from now (never shortens)."""
        broker = self._broker
        with broker.lock:
            new_deadline = time.monotonic() + seconds
            for delivery in deliveries:
                lease = broker.leases.get(delivery.tag) if isinstance(delivery.tag, int) else None
                if lease is not None and lease.deadline is not None and lease.deadline < new_deadline:
                    lease.deadline = new_deadline
                    heapq.heappush(broker.lease_deadlines, (new_deadline, delivery.tag))

    def queue_length(self, queue: str) -> int:
        """Ready messages on ``queue`` (due delayed and expired leased ones included)."""
        broker = self._broker
        with broker.lock:
            broker.expire_leases(time.monotonic())
            found = broker.queues.get(queue)
            if found is None:
                return 0
            found.promote_due(time.time())
            return len(found.ready)

    def scheduled(self, queue: str, limit: int = 100) -> list[tuple[float, celeriac.Envelope]]:
        """Delayed messages of ``queue`` not yet due, soonest first."""
        broker = self._broker
        with broker.lock:
            found = broker.queues.get(queue)
            if found is None:
                return []
            found.promote_due(time.time())
            soonest = heapq.nsmallest(limit, found.delayed)
        return [(eta, message.envelope) for eta, _, message in soonest]

    def oldest_message_age(self, queue: str) -> float | None:
        """Seconds since the oldest ready message of ``queue`` became ready (0.0 when none is)."""
        broker = self._broker
        with broker.lock:
            broker.expire_leases(time.monotonic())
            found = broker.queues.get(queue)
            if found is None:
                return 0.0
            now = time.time()
            found.promote_due(now)
            oldest = min((message.ready_at for _, _, message in found.ready), default=now)
            return max(0.0, now - oldest)

    def purge(self, queue: str) -> int:
        """Drop every ready message on ``queue``; delayed and unsettled ones stay."""
        with self._broker.lock:
            found = self._broker.queues.get(queue)
            if found is None:
                return 0
            found.promote_due(time.time())
            count = len(found.ready)
            found.ready.clear()
            return count

    def broadcast(self, channel: str, envelope: celeriac.Envelope) -> None:
        """Give every current subscriber of ``channel`` its own copy of ``envelope``."""
        with self._broker.lock:
            self._check_open()
            for subscription in self._broker.channels.get(channel, ()):
                subscription.deliver(_copy_envelope(envelope))

    def subscribe(self, channel: str) -> celeriac.Subscription:
        """Receive broadcasts on ``channel`` from now on, until the subscription is closed."""
        subscription = _MemorySubscription(self._broker, channel)
        with self._broker.lock:
            self._check_open()
            self._broker.channels.setdefault(channel, set()).add(subscription)
        self._subscriptions.add(subscription)
        return subscription

    def wake(self) -> None:
        """Make fetches blocked on this transport return ``[]`` now."""
        with self._broker.changed:
            self._wake_generation += 1
            self._broker.changed.notify_all()

    def close(self) -> None:
        """Return this transport's unsettled deliveries to their queues, end its subscriptions."""
        with self._broker.changed:
            if self._closed:
                return
            self._closed = True
            self._wake_generation += 1
            for tag, lease in list(self._broker.leases.items()):
                if lease.owner == self._owner:
                    del self._broker.leases[tag]
                    self._broker.requeue(lease)
            self._broker.changed.notify_all()
        for subscription in list(self._subscriptions):
            subscription.close()

    def info(self) -> dict[str, Any]:
        """The transport class, broker name and visibility timeout."""
        return {**super().info(), "broker": self.name, "visibility_timeout": self.visibility_timeout}


def _visibility_timeout(options: Mapping[str, Any]) -> float | None:
    value = options.get("visibility_timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise celeriac.ConfigError(
            f"broker_transport_options.visibility_timeout: expected a positive number of seconds, got {value!r}"
        )
    return float(value)
