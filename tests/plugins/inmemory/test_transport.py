"""What the memory transport does beyond the conformance suite: named brokers, wake, close, options."""

from __future__ import annotations

import gc
import threading
import time
import uuid
import weakref
from collections.abc import Iterator

import celeriac
import pytest
from celeriac.plugins import inmemory
from celeriac.plugins.inmemory._transport import MemoryTransport
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

LONG_TIMEOUT = 5.0


def unique_url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


def make_envelope(number: int, priority: int = 0) -> celeriac.Envelope:
    return celeriac.Envelope(
        body=b"%d" % number,
        content_type="application/json",
        headers={"number": number},
        properties={"priority": priority},
    )


@pytest.fixture
def url() -> str:
    return unique_url()


@pytest.fixture
def transport(url: str) -> Iterator[MemoryTransport]:
    transport = MemoryTransport(url)
    yield transport
    transport.close()


# -- the plugin hooks ------------------------------------------------------------------------


def test_hook_serves_the_memory_scheme_only(url: str) -> None:
    transport = inmemory.celeriac_transport(url=url, scheme="memory", options={"visibility_timeout": 2})

    assert isinstance(transport, MemoryTransport)
    assert transport.visibility_timeout == 2.0
    assert inmemory.celeriac_transport(url="redis://localhost", scheme="redis", options={}) is None
    assert inmemory.celeriac_transport_schemes() == ["memory"]
    transport.close()


def test_only_this_process_reaches_the_queues(transport: MemoryTransport) -> None:
    assert transport.shared_between_processes is False
    assert transport.info()["transport"] == "MemoryTransport"


# -- named brokers ---------------------------------------------------------------------------


def test_transports_with_the_same_name_share_a_broker(url: str) -> None:
    producer, consumer = MemoryTransport(url), MemoryTransport(url + "/")
    producer.publish(make_envelope(1), "queue")

    [delivery] = consumer.fetch(["queue"], limit=1, timeout=LONG_TIMEOUT)

    assert delivery.envelope.headers["number"] == 1
    producer.close()
    consumer.close()


def test_transports_with_different_names_are_isolated(transport: MemoryTransport) -> None:
    other = MemoryTransport(unique_url())
    transport.publish(make_envelope(1), "queue")

    assert other.queue_length("queue") == 0
    assert other.fetch(["queue"], limit=1, timeout=0) == []
    assert transport.queue_length("queue") == 1
    other.close()


def test_the_default_name_is_shared() -> None:
    first, second = MemoryTransport("memory://"), MemoryTransport()
    queue = f"default-{uuid.uuid4().hex}"
    first.publish(make_envelope(1), queue)

    assert second.purge(queue) == 1
    first.close()
    second.close()


def test_broker_is_freed_when_no_transport_references_it(url: str) -> None:
    first, second = MemoryTransport(url), MemoryTransport(url)
    first.publish(make_envelope(1), "queue")
    broker = weakref.ref(first._broker)

    del first
    gc.collect()
    assert broker() is not None, "the second transport still holds the broker"
    assert second.queue_length("queue") == 1

    second.close()
    del second
    gc.collect()
    assert broker() is None
    fresh = MemoryTransport(url)
    assert fresh.queue_length("queue") == 0
    fresh.close()


# -- wake and close --------------------------------------------------------------------------


def test_wake_returns_a_blocked_fetch_early(transport: MemoryTransport) -> None:
    transport.wake()  # before the fetch: does not affect it
    assert transport.fetch(["queue"], limit=1, timeout=0.05) == []

    timer = threading.Timer(0.1, transport.wake)
    started = time.monotonic()
    timer.start()
    try:
        assert transport.fetch(["queue"], limit=1, timeout=LONG_TIMEOUT) == []
    finally:
        timer.join()
    assert time.monotonic() - started < LONG_TIMEOUT / 2


def test_close_wakes_a_blocked_fetch_and_is_idempotent(url: str) -> None:
    transport = MemoryTransport(url)
    timer = threading.Timer(0.1, transport.close)
    started = time.monotonic()
    timer.start()
    try:
        assert transport.fetch(["queue"], limit=1, timeout=LONG_TIMEOUT) == []
    finally:
        timer.join()
    assert time.monotonic() - started < LONG_TIMEOUT / 2

    transport.close()
    with pytest.raises(celeriac.TransportError, match="closed"):
        transport.publish(make_envelope(1), "queue")
    with pytest.raises(celeriac.TransportError, match="closed"):
        transport.fetch(["queue"], limit=1, timeout=0)


def test_close_ends_the_transports_subscriptions(url: str) -> None:
    transport, sender = MemoryTransport(url), MemoryTransport(url)
    subscription = transport.subscribe("events")

    transport.close()
    sender.broadcast("events", make_envelope(1))

    assert subscription.get(0.05) is None
    sender.close()


def test_fetch_limit_must_be_positive(transport: MemoryTransport) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        transport.fetch(["queue"], limit=0, timeout=0)


# -- leases and options ----------------------------------------------------------------------


def test_leases_need_extension_only_with_a_visibility_timeout(url: str) -> None:
    plain, leased = MemoryTransport(url), MemoryTransport(url, {"visibility_timeout": 30})

    assert plain.needs_lease_extension is False
    assert leased.needs_lease_extension is True
    plain.close()
    leased.close()


@pytest.mark.parametrize("value", [0, -1, "30", True])
def test_bad_visibility_timeout_is_a_config_error(url: str, value: object) -> None:
    with pytest.raises(celeriac.ConfigError, match="visibility_timeout"):
        MemoryTransport(url, {"visibility_timeout": value})


def test_extend_lease_without_visibility_timeout_never_expires(transport: MemoryTransport, url: str) -> None:
    other = MemoryTransport(url)
    transport.publish(make_envelope(1), "queue")
    held = transport.fetch(["queue"], limit=1, timeout=0)

    transport.extend_lease(held, 0.01)

    assert other.fetch(["queue"], limit=1, timeout=0.1) == []
    other.close()


def test_requeued_message_returns_to_its_original_place(transport: MemoryTransport) -> None:
    transport.publish_many((make_envelope(number), "queue") for number in range(3))
    [first] = transport.fetch(["queue"], limit=1, timeout=0)

    transport.reject(first, requeue=True)
    deliveries = transport.fetch(["queue"], limit=3, timeout=0)

    assert [delivery.envelope.headers["number"] for delivery in deliveries] == [0, 1, 2]
    assert [delivery.delivery_count for delivery in deliveries] == [2, 1, 1]
    assert [delivery.redelivered for delivery in deliveries] == [True, False, False]


def test_dead_letter_records_where_it_came_from(transport: MemoryTransport) -> None:
    transport.publish(make_envelope(1), "queue")
    [delivery] = transport.fetch(["queue"], limit=1, timeout=0)

    transport.dead_letter(delivery, "malformed")
    transport.dead_letter(delivery, "again")  # already settled: nothing happens

    assert transport.queue_length("queue.dead-letter") == 1
    [dead] = transport.fetch(["queue.dead-letter"], limit=2, timeout=0)
    assert dead.envelope.headers["x-death-queue"] == "queue"
    assert dead.envelope.headers["x-death-reason"] == "malformed"
    assert isinstance(dead.envelope.headers["x-death-time"], float)


def test_purge_keeps_delayed_messages(transport: MemoryTransport) -> None:
    transport.publish(make_envelope(1), "queue")
    transport.publish(make_envelope(2), "queue", eta=time.time() + 0.2)

    assert transport.purge("queue") == 1
    [delivery] = transport.fetch(["queue"], limit=1, timeout=LONG_TIMEOUT)
    assert delivery.envelope.headers["number"] == 2


# -- message count is conserved under any interleaving ---------------------------------------


class ConservationMachine(RuleBasedStateMachine):
    """Publish, fetch, settle and reconnect in any order: no message is lost or delivered twice."""

    queue = "queue"

    def __init__(self) -> None:
        super().__init__()
        self.url = unique_url()
        self.producer = MemoryTransport(self.url)
        self.consumers = [MemoryTransport(self.url), MemoryTransport(self.url)]
        self.next_number = 0
        #: numbers that are on the queue or held by a consumer
        self.live: set[int] = set()
        #: (consumer index, delivery) not yet settled
        self.held: list[tuple[int, celeriac.Delivery]] = []
        self.settled: list[celeriac.Delivery] = []
        self.dead_lettered = 0

    @rule(priority=st.integers(0, 9), count=st.integers(1, 3))
    def publish(self, priority: int, count: int) -> None:
        for _ in range(count):
            self.producer.publish(make_envelope(self.next_number, priority), self.queue)
            self.live.add(self.next_number)
            self.next_number += 1

    @rule(consumer=st.integers(0, 1), limit=st.integers(1, 5))
    def fetch(self, consumer: int, limit: int) -> None:
        deliveries = self.consumers[consumer].fetch([self.queue], limit=limit, timeout=0)
        assert len(deliveries) <= limit
        held_numbers = {delivery.envelope.headers["number"] for _, delivery in self.held}
        for delivery in deliveries:
            number = delivery.envelope.headers["number"]
            assert number in self.live
            assert number not in held_numbers, "delivered twice while unsettled"
            held_numbers.add(number)
            self.held.append((consumer, delivery))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(["ack", "requeue", "drop", "dead-letter"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        consumer, delivery = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        transport = self.consumers[consumer]
        if outcome == "ack":
            transport.ack(delivery)
        elif outcome == "requeue":
            transport.reject(delivery, requeue=True)
        elif outcome == "drop":
            transport.reject(delivery, requeue=False)
        else:
            transport.dead_letter(delivery, "test")
            self.dead_lettered += 1
        if outcome != "requeue":
            self.live.discard(delivery.envelope.headers["number"])
        self.settled.append(delivery)

    @precondition(lambda self: self.settled)
    @rule(data=st.data(), requeue=st.booleans())
    def settle_again(self, data: st.DataObject, requeue: bool) -> None:
        delivery = data.draw(st.sampled_from(self.settled))
        self.consumers[0].reject(delivery, requeue=requeue)
        self.consumers[1].ack(delivery)

    @rule(consumer=st.integers(0, 1))
    def reconnect(self, consumer: int) -> None:
        self.consumers[consumer].close()
        self.consumers[consumer] = MemoryTransport(self.url)
        self.held = [(index, delivery) for index, delivery in self.held if index != consumer]

    @invariant()
    def count_is_conserved(self) -> None:
        assert self.producer.queue_length(self.queue) + len(self.held) == len(self.live)
        assert self.producer.queue_length("queue.dead-letter") == self.dead_lettered

    def teardown(self) -> None:
        for transport in [self.producer, *self.consumers]:
            transport.close()


TestConservation = ConservationMachine.TestCase
TestConservation.settings = settings(deadline=None, max_examples=50, stateful_step_count=30)
