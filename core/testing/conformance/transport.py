"""The conformance suite every transport must pass.

Subclass :class:`TransportSuite` in a test module (its name does not start with ``Test``, so
pytest collects only your subclass) and provide a ``make_transport`` fixture. It returns a
function ``make(**options) -> Transport`` that opens a **new transport instance connected to
the same broker namespace** on each call (same server, same database, same ``memory://`` name),
so a test can have one producer and several consumers. ``options`` are
``broker_transport_options`` (the suite passes ``visibility_timeout``). The suite uses unique
queue names itself and closes every transport it makes; the fixture isolates what else needs
isolating (a fresh ``memory://`` name, a temporary database) and skips when its server is not
running::

    class TestMyTransport(TransportSuite):
        @pytest.fixture
        def make_transport(self, tmp_path):
            url = f"mybroker://{tmp_path / 'broker.db'}"
            return lambda **options: MyTransport(url, options)

Beyond the :class:`~celeriac.Transport` docstrings, the suite expects: settling a delivery
twice is harmless; a multi-queue fetch does not starve a queue; subscriptions are active when
:meth:`~celeriac.Transport.subscribe` returns. Nothing here sleeps to paper over a race: waits
are blocking fetches with timeouts. Each test takes well under two seconds on a working
transport.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from celeriac import Delivery, Envelope, Transport
from celeriac.testing import wait_for

__all__ = ["TransportSuite"]

MakeTransport = Callable[..., Transport]

#: A wait that should end early is given this long, so a broken transport fails instead of hanging.
LONG_TIMEOUT = 5.0
#: How long a fetch waits when the test expects nothing to arrive.
SHORT_TIMEOUT = 0.1
#: Tolerated disagreement between the test's clock and the broker's when checking an ETA.
CLOCK_TOLERANCE = 0.05


def unique_queue(prefix: str = "conformance") -> str:
    """A queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def envelope(number: int = 0, *, priority: int | None = None, body: bytes | None = None) -> Envelope:
    """A small task-like envelope whose ``number`` header identifies it."""
    properties: dict[str, Any] = {"correlation_id": f"id-{number}"}
    if priority is not None:
        properties["priority"] = priority
    return Envelope(
        body=body if body is not None else b"[[%d], {}, {}]" % number,
        content_type="application/json",
        headers={"number": number, "task": "conformance.task"},
        properties=properties,
    )


def numbers(deliveries: Sequence[Delivery]) -> list[int]:
    """The ``number`` headers of ``deliveries``, in order."""
    return [delivery.envelope.headers["number"] for delivery in deliveries]


def _number(received: Envelope | None) -> int | None:
    """The ``number`` header of a broadcast ``received``, or None when nothing came."""
    return None if received is None else int(received.headers["number"])


def collect(
    transport: Transport, queues: Sequence[str], count: int, *, timeout: float = LONG_TIMEOUT
) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``timeout`` passed; returns what arrived."""
    deadline = time.monotonic() + timeout
    deliveries: list[Delivery] = []
    while len(deliveries) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        deliveries += transport.fetch(queues, limit=count - len(deliveries), timeout=remaining)
    return deliveries


def assert_empty(transport: Transport, queue: str) -> None:
    """``queue`` has no ready message, and a fetch finds none."""
    assert transport.queue_length(queue) == 0
    assert transport.fetch([queue], limit=10, timeout=SHORT_TIMEOUT) == []


def _run_threads(targets: Sequence[Callable[[], None]], *, timeout: float) -> None:
    """Run each target in its own thread; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # handed to the test thread below
                errors.append(error)

        return run

    threads = [threading.Thread(target=guarded(target), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
    if errors:
        raise errors[0]


@pytest.mark.timeout(30)
class TransportSuite:
    """Tests every :class:`~celeriac.Transport` must pass; subclass it and define ``make_transport``."""

    @pytest.fixture
    def make_transport(self) -> MakeTransport:
        """Overridden by the subclass: returns ``make(**options) -> Transport``."""
        pytest.fail("subclass TransportSuite and define a `make_transport` fixture returning make(**options)")

    @pytest.fixture
    def open_transport(self, make_transport: MakeTransport) -> Iterator[MakeTransport]:
        """Like ``make_transport``, but closes every transport it opened when the test ends."""
        opened: list[Transport] = []

        def open_(**options: Any) -> Transport:
            transport = make_transport(**options)
            opened.append(transport)
            return transport

        yield open_
        for transport in opened:
            transport.close()

    @pytest.fixture
    def transport(self, open_transport: MakeTransport) -> Transport:
        """One open transport."""
        return open_transport()

    @pytest.fixture
    def queue(self, transport: Transport) -> str:
        """A fresh queue, declared."""
        name = unique_queue()
        transport.declare_queue(name)
        return name

    # -- publish / fetch ---------------------------------------------------------------------

    def test_is_a_transport(self, transport: Transport) -> None:
        assert isinstance(transport, Transport)
        assert isinstance(transport.info(), dict)

    def test_round_trip_preserves_every_field(self, open_transport: MakeTransport, queue: str) -> None:
        producer, consumer = open_transport(), open_transport()
        sent = Envelope(
            body=bytes(range(256)) + b"\x00 end",
            content_type="application/x-conformance",
            content_encoding="binary",
            headers={
                "task": "proj.add",
                "id": "4b1c-…-ünïcode",
                "retries": 3,
                "eta": None,
                "timelimit": [10.5, None],
                "nested": {"list": [1, "two", {"three": 3.0}], "flag": True, "empty": {}},
            },
            properties={"correlation_id": "abc", "reply_to": "replies"},
        )
        producer.publish(sent, queue)

        [delivery] = collect(consumer, [queue], 1)

        received = delivery.envelope
        assert received.body == sent.body
        assert received.content_type == sent.content_type
        assert received.content_encoding == sent.content_encoding
        assert received.headers == sent.headers
        assert received.properties.items() >= sent.properties.items()
        assert delivery.queue == queue
        assert delivery.redelivered is False
        assert delivery.delivery_count == 1

    def test_first_in_first_out(self, transport: Transport, queue: str) -> None:
        for number in range(20):
            transport.publish(envelope(number), queue)

        assert numbers(collect(transport, [queue], 20)) == list(range(20))

    def test_higher_priority_first_then_first_in_first_out(self, transport: Transport, queue: str) -> None:
        priorities = [0, 5, 9, 1, 5, 0, 9, 3]
        for number, priority in enumerate(priorities):
            transport.publish(envelope(number, priority=priority), queue)

        received = numbers(collect(transport, [queue], len(priorities)))

        expected = sorted(range(len(priorities)), key=lambda number: (-priorities[number], number))
        assert received == expected

    def test_fetch_respects_limit(self, transport: Transport, queue: str) -> None:
        for number in range(10):
            transport.publish(envelope(number), queue)

        first = transport.fetch([queue], limit=3, timeout=LONG_TIMEOUT)

        assert 1 <= len(first) <= 3
        rest = collect(transport, [queue], 10 - len(first))
        assert sorted(numbers(first + rest)) == list(range(10))
        assert transport.fetch([queue], limit=10, timeout=SHORT_TIMEOUT) == []

    def test_delivery_tags_are_unique(self, transport: Transport, queue: str) -> None:
        transport.publish_many((envelope(number), queue) for number in range(30))

        deliveries = collect(transport, [queue], 30)

        assert len(deliveries) == 30
        assert len({repr(delivery.tag) for delivery in deliveries}) == 30

    def test_fetch_from_several_queues(self, transport: Transport) -> None:
        first, second = unique_queue(), unique_queue()
        for name in (first, second):
            transport.declare_queue(name)
        transport.publish(envelope(1), first)
        transport.publish(envelope(2), second)

        deliveries = collect(transport, [first, second], 2)

        received = {(delivery.queue, delivery.envelope.headers["number"]) for delivery in deliveries}
        assert received == {(first, 1), (second, 2)}

    def test_fetch_does_not_starve_a_queue(self, transport: Transport) -> None:
        busy, quiet = unique_queue(), unique_queue()
        for name in (busy, quiet):
            transport.declare_queue(name)
        transport.publish_many((envelope(number), busy) for number in range(20))
        transport.publish(envelope(99), quiet)

        served: list[str] = []
        for _ in range(4):
            deliveries = transport.fetch([busy, quiet], limit=1, timeout=LONG_TIMEOUT)
            served += [delivery.queue for delivery in deliveries]
            transport.ack_many(deliveries)

        assert quiet in served

    def test_blocking_fetch_returns_empty_after_timeout(self, transport: Transport, queue: str) -> None:
        started = time.monotonic()

        assert transport.fetch([queue], limit=1, timeout=0.2) == []

        assert 0.15 <= time.monotonic() - started < LONG_TIMEOUT

    def test_blocking_fetch_wakes_when_a_message_is_published(self, open_transport: MakeTransport, queue: str) -> None:
        producer, consumer = open_transport(), open_transport()
        timer = threading.Timer(0.1, lambda: producer.publish(envelope(7), queue))
        started = time.monotonic()
        timer.start()
        try:
            deliveries = consumer.fetch([queue], limit=1, timeout=LONG_TIMEOUT)
        finally:
            timer.join()

        assert numbers(deliveries) == [7]
        assert time.monotonic() - started < LONG_TIMEOUT / 2

    # -- settling ----------------------------------------------------------------------------

    def test_ack_removes_the_message(self, open_transport: MakeTransport, queue: str) -> None:
        producer, consumer = open_transport(), open_transport()
        producer.publish(envelope(1), queue)
        [delivery] = collect(consumer, [queue], 1)

        consumer.ack(delivery)
        consumer.close()

        assert_empty(producer, queue)

    def test_settling_twice_is_harmless(self, transport: Transport, queue: str) -> None:
        transport.publish_many([(envelope(1), queue), (envelope(2), queue)])
        first, second = collect(transport, [queue], 2)

        transport.ack(first)
        transport.ack(first)
        transport.reject(first, requeue=True)

        transport.reject(second, requeue=True)
        [again] = collect(transport, [queue], 1)
        assert numbers([again]) == [2]
        assert_empty(transport, queue)

    def test_reject_with_requeue_redelivers(self, open_transport: MakeTransport, queue: str) -> None:
        producer, consumer = open_transport(), open_transport()
        producer.publish(envelope(1, body=b"payload"), queue)
        [delivery] = collect(consumer, [queue], 1)

        consumer.reject(delivery, requeue=True)

        [again] = collect(consumer, [queue], 1)
        assert again.envelope.body == b"payload"
        assert numbers([again]) == [1]
        assert again.redelivered is True
        assert again.delivery_count in (1, 2)  # 1 where the transport cannot count

    def test_reject_without_requeue_drops(self, open_transport: MakeTransport, queue: str) -> None:
        producer, consumer = open_transport(), open_transport()
        producer.publish(envelope(1), queue)
        [delivery] = collect(consumer, [queue], 1)

        consumer.reject(delivery, requeue=False)
        consumer.close()

        assert_empty(producer, queue)

    def test_dead_letter_moves_to_the_dead_letter_queue(self, transport: Transport, queue: str) -> None:
        transport.publish(envelope(5, body=b"poison"), queue)
        [delivery] = collect(transport, [queue], 1)

        transport.dead_letter(delivery, "cannot decode")

        dead_letter_queue = transport.dead_letter_queue(queue)
        assert dead_letter_queue != queue
        [dead] = collect(transport, [dead_letter_queue], 1)
        assert dead.envelope.body == b"poison"
        assert dead.envelope.headers["x-death-reason"] == "cannot decode"
        assert dead.envelope.headers["number"] == 5
        assert dead.queue == dead_letter_queue
        assert_empty(transport, queue)

    def test_unsettled_deliveries_return_when_their_transport_closes(
        self, open_transport: MakeTransport, queue: str
    ) -> None:
        producer, consumer, successor = open_transport(), open_transport(), open_transport()
        producer.publish_many((envelope(number), queue) for number in range(3))
        held = collect(consumer, [queue], 3)
        assert len(held) == 3
        assert successor.fetch([queue], limit=3, timeout=SHORT_TIMEOUT) == []

        consumer.close()

        returned = collect(successor, [queue], 3)
        assert sorted(numbers(returned)) == [0, 1, 2]
        assert all(delivery.redelivered for delivery in returned)

    # -- leases ------------------------------------------------------------------------------

    def test_expired_lease_is_redelivered_to_another_consumer(self, open_transport: MakeTransport, queue: str) -> None:
        stuck, healthy = open_transport(visibility_timeout=0.5), open_transport(visibility_timeout=0.5)
        if not stuck.needs_lease_extension:
            pytest.skip(f"{type(stuck).__name__} does not use leases (needs_lease_extension is false)")
        stuck.publish(envelope(1), queue)
        [held] = collect(stuck, [queue], 1)
        fetched_at = time.monotonic()

        assert healthy.fetch([queue], limit=1, timeout=SHORT_TIMEOUT) == []
        deliveries = healthy.fetch([queue], limit=1, timeout=LONG_TIMEOUT)

        assert numbers(deliveries) == [1]
        assert deliveries[0].redelivered is True
        assert time.monotonic() - fetched_at >= 0.5 - CLOCK_TOLERANCE
        stuck.ack(held)  # too late: the lease is gone; must not disturb the redelivered copy
        healthy.ack(deliveries[0])
        assert_empty(healthy, queue)

    def test_extended_lease_is_not_redelivered(self, open_transport: MakeTransport, queue: str) -> None:
        worker, other = open_transport(visibility_timeout=0.5), open_transport(visibility_timeout=0.5)
        if not worker.needs_lease_extension:
            pytest.skip(f"{type(worker).__name__} does not use leases (needs_lease_extension is false)")
        worker.publish(envelope(1), queue)
        [held] = collect(worker, [queue], 1)

        stolen: list[Delivery] = []
        until = time.monotonic() + 1.2  # more than twice the visibility timeout
        while time.monotonic() < until:
            worker.extend_lease([held], 0.5)
            stolen += other.fetch([queue], limit=1, timeout=0.15)
        worker.ack(held)

        assert stolen == []
        assert other.fetch([queue], limit=1, timeout=SHORT_TIMEOUT) == []

    # -- delayed messages --------------------------------------------------------------------

    def test_delayed_message_waits_for_its_eta(self, open_transport: MakeTransport, queue: str) -> None:
        producer, consumer = open_transport(), open_transport()
        eta = time.time() + 0.3
        producer.publish(envelope(1), queue, eta=eta)

        assert consumer.fetch([queue], limit=1, timeout=SHORT_TIMEOUT) == []
        assert consumer.queue_length(queue) == 0
        deliveries = consumer.fetch([queue], limit=1, timeout=LONG_TIMEOUT)

        assert numbers(deliveries) == [1]
        assert time.time() >= eta - CLOCK_TOLERANCE
        assert time.time() < eta + LONG_TIMEOUT / 2

    def test_eta_in_the_past_is_ready_at_once(self, transport: Transport, queue: str) -> None:
        transport.publish(envelope(1), queue, eta=time.time() - 60)

        assert numbers(transport.fetch([queue], limit=1, timeout=LONG_TIMEOUT)) == [1]

    # -- queues ------------------------------------------------------------------------------

    def test_queue_length_and_purge(self, transport: Transport, queue: str) -> None:
        assert transport.queue_length(queue) == 0
        transport.publish_many((envelope(number), queue) for number in range(5))
        assert transport.queue_length(queue) == 5

        held = collect(transport, [queue], 2)
        assert transport.queue_length(queue) == 3

        assert transport.purge(queue) == 3
        assert transport.queue_length(queue) == 0
        assert transport.purge(queue) == 0
        transport.ack_many(held)
        assert_empty(transport, queue)

    def test_oldest_message_age(self, transport: Transport, queue: str) -> None:
        if transport.oldest_message_age(queue) is None:
            pytest.skip(f"{type(transport).__name__} cannot tell how old its oldest message is")
        assert transport.oldest_message_age(queue) == 0.0
        transport.publish(envelope(9), queue, eta=time.time() + 60)  # delayed: not waiting yet
        assert transport.oldest_message_age(queue) == 0.0

        transport.publish(envelope(0), queue)
        first = wait_for(lambda: (age := transport.oldest_message_age(queue)) is not None and age >= 0.05 and age)
        transport.publish(envelope(1), queue)
        assert transport.oldest_message_age(queue) >= first - CLOCK_TOLERANCE  # the oldest, not the newest

        held = collect(transport, [queue], 2)
        assert transport.oldest_message_age(queue) == 0.0  # nothing ready: held ones do not count
        transport.ack_many(held)

    def test_scheduled_lists_delayed_messages_soonest_first(self, transport: Transport, queue: str) -> None:
        if transport.scheduled(queue) is None:
            pytest.skip(f"{type(transport).__name__} cannot list its delayed messages")
        assert transport.scheduled(queue) == []
        now = time.time()
        for number, delay in ((1, 60), (2, 30), (3, 90)):
            transport.publish(envelope(number), queue, eta=now + delay)
        transport.publish(envelope(4), queue)  # ready: not scheduled
        listed = transport.scheduled(queue) or []
        assert [_number(item) for _, item in listed] == [2, 1, 3]
        assert [round(eta - now) for eta, _ in listed] == [30, 60, 90]
        assert [_number(item) for _, item in transport.scheduled(queue, limit=2) or []] == [2, 1]
        transport.ack_many(collect(transport, [queue], 1))

    # -- broadcast ---------------------------------------------------------------------------

    def test_broadcast_reaches_every_current_subscriber(self, open_transport: MakeTransport) -> None:
        sender, listener = open_transport(), open_transport()
        channel = unique_queue("channel")
        sender.broadcast(channel, envelope(0))  # nobody listens: dropped
        with listener.subscribe(channel) as first, sender.subscribe(channel) as second:
            sender.broadcast(channel, envelope(1))

            assert _number(first.get(LONG_TIMEOUT)) == 1
            assert _number(second.get(LONG_TIMEOUT)) == 1

            first.close()
            sender.broadcast(channel, envelope(2))

            assert _number(second.get(LONG_TIMEOUT)) == 2
            assert first.get(SHORT_TIMEOUT) is None
            assert second.get(SHORT_TIMEOUT) is None

    # -- copies and concurrency --------------------------------------------------------------

    def test_envelopes_are_copied(self, transport: Transport, queue: str) -> None:
        sent = envelope(1)
        sent.headers["nested"] = {"list": [1, 2]}
        transport.publish(sent, queue)
        sent.headers["number"] = 100
        sent.headers["nested"]["list"].append(3)
        sent.properties["correlation_id"] = "changed"

        [delivery] = collect(transport, [queue], 1)
        assert delivery.envelope.headers["number"] == 1
        assert delivery.envelope.headers["nested"] == {"list": [1, 2]}
        assert delivery.envelope.properties["correlation_id"] == "id-1"

        delivery.envelope.headers["number"] = 200
        delivery.envelope.headers["nested"]["list"].clear()
        transport.reject(delivery, requeue=True)

        [again] = collect(transport, [queue], 1)
        assert again.envelope.headers["number"] == 1
        assert again.envelope.headers["nested"] == {"list": [1, 2]}

    def test_concurrent_producers_and_consumers_deliver_each_message_once(
        self, open_transport: MakeTransport, queue: str
    ) -> None:
        producers, per_producer = 4, 250
        total = producers * per_producer
        producer_transports = [open_transport(), open_transport()]
        consumer_transports = [open_transport(), open_transport()]
        received: list[int] = []
        received_lock = threading.Lock()
        deadline = time.monotonic() + 20

        def produce(index: int) -> Callable[[], None]:
            transport = producer_transports[index % 2]
            first = index * per_producer

            def run() -> None:
                if index % 2:
                    transport.publish_many((envelope(number), queue) for number in range(first, first + per_producer))
                else:
                    for number in range(first, first + per_producer):
                        transport.publish(envelope(number), queue)

            return run

        def consume(transport: Transport) -> Callable[[], None]:
            def run() -> None:
                while time.monotonic() < deadline:
                    with received_lock:
                        if len(received) >= total:
                            return
                    deliveries = transport.fetch([queue], limit=10, timeout=0.05)
                    transport.ack_many(deliveries)
                    with received_lock:
                        received.extend(numbers(deliveries))

            return run

        consumers = [consume(transport) for transport in consumer_transports for _ in range(2)]
        _run_threads([produce(index) for index in range(producers)] + consumers, timeout=25)

        assert len(received) == total
        assert sorted(received) == list(range(total))
        assert_empty(consumer_transports[0], queue)
