"""What the AMQP transport does beyond the shared suite: RabbitMQ topology, QoS, delays, dead
letters, reconnection, heartbeats, thread safety -- against a real RabbitMQ."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celeriac import ConfigError, TransportError
from celeriac.plugins import amqp as amqp_plugin
from celeriac.plugins.amqp import _testing
from celeriac.plugins.amqp._transport import AMQPTransport
from celeriac.testing.conformance.transport import TransportSuite, collect, numbers
from celeriac.testing.conformance.transport import envelope as make_envelope

pytestmark = pytest.mark.timeout(60)

Open = Callable[..., AMQPTransport]


def _break_socket(transport: AMQPTransport, link: str = "_consumer") -> None:
    """Cut a transport's connection under it, as a network failure would."""
    connection = getattr(transport, link).connection
    assert connection is not None
    connection.transport.sock.shutdown(socket.SHUT_RDWR)


# -- the plugin -------------------------------------------------------------------------------


def test_the_plugin_serves_amqp_and_amqps_only(amqp_url: str) -> None:
    assert amqp_plugin.celeriac_transport_schemes() == ["amqp", "amqps"]
    assert amqp_plugin.celeriac_transport(url="redis://x", scheme="redis", options={}) is None
    transport = amqp_plugin.celeriac_transport(url=amqp_url, scheme="amqp", options={})
    try:
        assert isinstance(transport, AMQPTransport)
        info = transport.info()
        assert info["broker"].startswith("amqp://guest:**@")
        assert "guest:guest" not in repr(info)
        assert transport.needs_lease_extension is False
    finally:
        assert transport is not None
        transport.close()


def test_without_kombu_the_error_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_kombu(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("kombu", "amqp"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kombu)
    with pytest.raises(amqp_plugin.celeriac.PluginError) as raised:
        amqp_plugin.celeriac_transport(url="amqp://", scheme="amqp", options={})
    assert str(raised.value) == "the amqp transport needs the 'amqp' extra: pip install 'celeriac[amqp]'"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_type": "stream"}, "queue_type"),
        ({"max_priority": 300}, "max_priority"),
        ({"heartbeat": "often"}, "heartbeat"),
        ({"confirm_timeout": 0}, "confirm_timeout"),
        ({"durable": "yes"}, "durable"),
        ({"prefetch": 4}, "unknown amqp option"),
    ],
)
def test_bad_options_fail_at_creation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AMQPTransport("amqp://guest:guest@127.0.0.1:5672//", options)


# -- publishing -------------------------------------------------------------------------------


def test_publish_to_an_unreachable_broker_raises_within_the_confirm_timeout() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = AMQPTransport(f"amqp://guest:guest@127.0.0.1:{port}//", {"confirm_timeout": 1.0})
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match=f"cannot reach RabbitMQ at amqp://guest:\\*\\*@127.0.0.1:{port}"):
            transport.publish(make_envelope(1), "nowhere")
        assert time.monotonic() - started < 5
    finally:
        transport.close()


def _rabbitmqctl(*args: str) -> str | None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    return done.stdout if done.returncode == 0 else None


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to raise a memory alarm")
@pytest.mark.exclusive_rabbitmq
def test_a_publish_without_a_confirm_raises_within_the_confirm_timeout(amqp_url: str, queue_name: str) -> None:
    transport = AMQPTransport(amqp_url, {"confirm_timeout": 1.5})
    transport.declare_queue(queue_name)
    watermark = (_rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().") or "").strip()
    try:
        # a memory alarm: RabbitMQ stops reading from publishing connections and confirms nothing
        assert _rabbitmqctl("set_vm_memory_high_watermark", "0.0000001") is not None
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"did not confirm 1 message\(s\) within 1.5s"):
            transport.publish(make_envelope(1), queue_name)
        assert time.monotonic() - started < 5
    finally:
        _rabbitmqctl("set_vm_memory_high_watermark", watermark or "0.4")
        transport.close()
    recovered = AMQPTransport(amqp_url)  # the alarm is gone: publishing works again
    try:
        recovered.publish(make_envelope(2), queue_name)
        arrived = numbers(collect(recovered, [queue_name], 1))
        if arrived == [1]:  # RabbitMQ took the unconfirmed one after all: at-least-once, never lost silently
            arrived += numbers(collect(recovered, [queue_name], 1))
        assert arrived[-1] == 2
    finally:
        recovered.close()


def test_publish_after_the_connection_broke_reconnects(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(), open_transport()
    producer.publish(make_envelope(1), queue_name)
    _break_socket(producer, "_publisher")
    producer.publish(make_envelope(2), queue_name)
    assert sorted(numbers(collect(consumer, [queue_name], 2))) == [1, 2]


def test_a_deleted_queue_is_declared_again_on_publish(open_transport: Open, queue_name: str, amqp_url: str) -> None:
    producer, consumer = open_transport(), open_transport()
    producer.publish(make_envelope(1), queue_name)
    _testing.delete_queues(amqp_url, queue_name)  # behind the producer's back
    producer.publish(make_envelope(2), queue_name)  # returned as unroutable, declared, published again
    assert numbers(collect(consumer, [queue_name], 1)) == [2]


def test_an_existing_queue_with_other_arguments_is_used_with_a_warning(
    open_transport: Open, queue_name: str, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kombu.connection import Connection

    with Connection(amqp_url) as connection:  # as Celery (or a person) declared it
        connection.default_channel.queue_declare(queue_name, durable=True, auto_delete=False)
    caplog.set_level(logging.WARNING, logger="celeriac.amqp")
    transport = open_transport()
    transport.publish(make_envelope(1), queue_name)
    assert f"queue {queue_name!r} exists with other settings" in caplog.text
    assert numbers(collect(transport, [queue_name], 1)) == [1]


def test_large_messages_arrive_whole(open_transport: Open, queue_name: str) -> None:
    # bodies larger than a frame (128 KiB) and than one socket read: frames split across reads
    producer, consumer = open_transport(), open_transport()
    bodies = [bytes([number]) * size for number, size in enumerate((300_000, 70_000, 1, 131_000))]
    producer.publish_many((make_envelope(number, body=body), queue_name) for number, body in enumerate(bodies))
    received = collect(consumer, [queue_name], len(bodies))
    assert [delivery.envelope.body for delivery in received] == bodies


def test_messages_are_persistent_and_carry_celery_properties(open_transport: Open, queue_name: str) -> None:
    transport = open_transport()
    sent = make_envelope(1, priority=7)
    sent.properties.update(reply_to="client-1", custom={"a": [1, 2]})
    transport.publish(sent, queue_name)
    [delivery] = collect(transport, [queue_name], 1)
    properties = delivery.envelope.properties
    assert properties["delivery_mode"] == 2
    assert properties["priority"] == 7
    assert properties["correlation_id"] == "id-1"
    assert properties["reply_to"] == "client-1"
    assert properties["custom"] == {"a": [1, 2]}  # not an AMQP property: carried in a header
    assert "x-celeriac-properties" not in delivery.envelope.headers


# -- consuming --------------------------------------------------------------------------------


def test_prefetch_limits_what_rabbitmq_hands_out(open_transport: Open, queue_name: str) -> None:
    producer, consumer, other = open_transport(), open_transport(), open_transport()
    consumer.set_prefetch(2)
    producer.publish_many((make_envelope(number), queue_name) for number in range(10))

    held = collect(consumer, [queue_name], 2)  # a worker with two free slots
    assert len(held) == 2
    assert producer.queue_length(queue_name) == 8  # nothing more was pushed to it
    assert consumer.queue_length(queue_name) == 8
    rest = collect(other, [queue_name], 8)  # free for another consumer
    assert len(rest) == 8
    other.ack_many(rest)
    consumer.ack_many(held)


def test_finished_tasks_being_settled_do_not_hold_up_the_next_messages(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(), open_transport()
    consumer.set_prefetch(1)  # a pool of one
    producer.publish_many((make_envelope(number), queue_name) for number in range(3))
    [first] = collect(consumer, [queue_name], 1)
    # the task finished: its slot is free while its result is stored and its ack on the way
    [second] = collect(consumer, [queue_name], 1)
    assert numbers([first, second]) == [0, 1]
    assert producer.queue_length(queue_name) == 1
    consumer.ack_many([first, second])
    assert numbers(collect(consumer, [queue_name], 1)) == [2]


def test_a_pool_that_grows_gets_more(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(queue_type="quorum"), open_transport(queue_type="quorum")
    consumer.set_prefetch(1)  # quorum queues: QoS per consumer, restarted when it changes
    producer.publish_many((make_envelope(number), queue_name) for number in range(5))
    held = collect(consumer, [queue_name], 5, timeout=1.0)
    assert len(held) == 1
    consumer.set_prefetch(3)
    held += collect(consumer, [queue_name], 5, timeout=1.0)
    # the restarted consumer may take 3 on top of the one its predecessor still holds
    assert 3 <= len(held) <= 4
    consumer.ack_many(held)
    assert len(collect(consumer, [queue_name], 5 - len(held))) == 5 - len(held)


def test_acks_in_a_batch_settle_every_message(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(), open_transport()
    producer.publish_many((make_envelope(number), queue_name) for number in range(50))
    deliveries = collect(consumer, [queue_name], 50)
    consumer.ack_many(deliveries[10:])  # not the oldest run: single acks
    consumer.ack_many(deliveries[:10])  # the oldest run: one multiple ack
    consumer.close()
    assert producer.queue_length(queue_name) == 0
    assert producer.fetch([queue_name], limit=50, timeout=0.2) == []


def test_reject_without_requeue_lands_in_the_dead_letter_queue(open_transport: Open, queue_name: str) -> None:
    transport = open_transport()
    transport.publish(make_envelope(3, body=b"refused"), queue_name)
    [delivery] = collect(transport, [queue_name], 1)

    transport.reject(delivery, requeue=False)

    [dead] = collect(transport, [f"{queue_name}.dead-letter"], 1)
    assert dead.envelope.body == b"refused"
    [death] = dead.envelope.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == queue_name
    assert isinstance(death["time"], str)  # RabbitMQ's timestamp as ISO-8601 text: plain data


def test_ack_from_another_thread_does_not_wait_for_a_blocked_fetch(
    open_transport: Open, queue_name: str, amqp_url: str
) -> None:
    transport = open_transport()
    quiet = f"{queue_name}-quiet"
    transport.publish(make_envelope(1), queue_name)
    [delivery] = collect(transport, [queue_name], 1)
    fetcher = threading.Thread(target=transport.fetch, args=([quiet],), kwargs={"limit": 1, "timeout": 5}, daemon=True)
    fetcher.start()
    time.sleep(0.2)  # only makes it likely that the fetch is blocked by now

    started = time.monotonic()
    transport.ack(delivery)
    assert time.monotonic() - started < 2, "the ack waited for the blocked fetch"
    transport.wake()
    fetcher.join(5)
    assert not fetcher.is_alive()
    _testing.delete_queues(amqp_url, quiet)


def test_fetch_reconnects_and_unacked_messages_come_back(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(), open_transport()
    producer.publish_many((make_envelope(number), queue_name) for number in range(3))
    held = collect(consumer, [queue_name], 3)

    _break_socket(consumer)
    again = collect(consumer, [queue_name], 3)

    assert sorted(numbers(again)) == [0, 1, 2]
    assert all(delivery.redelivered for delivery in again)
    consumer.ack_many(held)  # deliveries of the broken connection: settling them does nothing
    consumer.ack_many(again)
    consumer.close()
    assert producer.queue_length(queue_name) == 0


def test_an_idle_connection_is_kept_alive_by_heartbeats(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(), open_transport(heartbeat=2)
    producer.publish(make_envelope(1), queue_name)
    [held] = collect(consumer, [queue_name], 1)
    generation = consumer._consumer.generation

    time.sleep(5)  # past two heartbeat intervals (RabbitMQ's limit), with no call into the consumer

    assert producer.fetch([queue_name], limit=1, timeout=0.5) == []  # not redelivered elsewhere
    assert consumer._consumer.generation == generation
    assert consumer._consumer.connection is not None
    consumer.ack(held)
    consumer.close()
    assert producer.queue_length(queue_name) == 0


def test_purge_also_drops_messages_pushed_but_not_fetched(open_transport: Open, queue_name: str) -> None:
    transport = open_transport()
    transport.publish_many((make_envelope(number), queue_name) for number in range(6))
    [first] = transport.fetch([queue_name], limit=1, timeout=5)  # the others arrive with it
    assert transport.queue_length(queue_name) == 5
    assert transport.purge(queue_name) == 5
    assert transport.queue_length(queue_name) == 0
    transport.ack(first)


# -- delays -----------------------------------------------------------------------------------


def test_delayed_messages_arrive_in_eta_order_and_not_early(open_transport: Open, queue_name: str) -> None:
    producer, consumer = open_transport(), open_transport()
    now = time.time()
    etas = {1: now + 0.9, 2: now + 0.3, 3: now + 0.6}
    for number, eta in etas.items():
        producer.publish(make_envelope(number), queue_name, eta=eta)

    arrived: list[tuple[int, float]] = []
    while len(arrived) < 3:
        deliveries = consumer.fetch([queue_name], limit=3, timeout=5)
        assert deliveries, f"only {arrived} arrived"
        arrived += [(number, time.time()) for number in numbers(deliveries)]
        consumer.ack_many(deliveries)

    assert [number for number, _ in arrived] == [2, 3, 1]
    assert all(at >= etas[number] - 0.05 for number, at in arrived)


def test_a_delayed_message_looks_exactly_as_sent(open_transport: Open, queue_name: str) -> None:
    transport = open_transport()
    sent = make_envelope(5, priority=3)
    sent.headers["nested"] = {"a": [1, None, 2.5]}
    transport.publish(sent, queue_name, eta=time.time() + 0.05)
    [delivery] = collect(transport, [queue_name], 1)
    assert delivery.envelope.headers == sent.headers  # no delay headers, no x-death records
    assert delivery.envelope.body == sent.body
    assert delivery.envelope.properties["priority"] == 3


def test_delay_routes_add_up_to_the_delay() -> None:
    from celeriac.plugins.amqp._options import parse_options
    from celeriac.plugins.amqp._topology import MAX_DELAY_MS, Topology

    topology = Topology(parse_options({}), ".dead-letter")
    for delay in (1, 2, 300, 1_000, 86_400_000, MAX_DELAY_MS, MAX_DELAY_MS * 3):
        exchange, headers = topology.delay_route(delay)
        levels = sorted(int(name.rsplit("-", 1)[1]) for name in headers)
        total = sum(2**level for level in levels)
        assert total >= min(delay, MAX_DELAY_MS)
        assert total - min(delay, MAX_DELAY_MS) <= 1  # rounded up to odd, never early
        assert levels[0] == 0  # the last hop is the 1 ms level, which hands over to the queue
        assert exchange == f"celeriac.delay.{levels[-1]}"
    quorum = Topology(parse_options({"queue_type": "quorum"}), ".dead-letter")
    assert quorum.delay_route(5)[0] == "celeriac.delay.quorum.2"


# -- broadcast --------------------------------------------------------------------------------


def test_a_subscription_survives_a_reconnect(open_transport: Open) -> None:
    sender, listener = open_transport(), open_transport()
    channel = f"channel-{uuid.uuid4().hex}"
    with listener.subscribe(channel) as subscription:
        sender.broadcast(channel, make_envelope(1))
        received = subscription.get(5)
        assert received is not None
        assert received.headers["number"] == 1

        _break_socket(listener)
        assert subscription.get(0.5) is None  # reconnects and subscribes again

        sender.broadcast(channel, make_envelope(2))
        received = subscription.get(5)
        assert received is not None
        assert received.headers["number"] == 2


def test_after_close_the_transport_refuses_work(open_transport: Open, queue_name: str) -> None:
    transport = open_transport()
    transport.close()
    transport.close()
    for call in (
        lambda: transport.publish(make_envelope(1), queue_name),
        lambda: transport.fetch([queue_name], limit=1, timeout=0.1),
        lambda: transport.broadcast("channel", make_envelope(1)),
        lambda: transport.subscribe("channel"),
    ):
        with pytest.raises(TransportError, match="closed"):
            call()


# -- quorum queues ----------------------------------------------------------------------------


class TestQuorumQueues(TransportSuite):
    """The shared suite on quorum queues (``queue_type = "quorum"``)."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _delay_levels(cls) -> None:
        """The quorum delay levels exist in any vhost that ever delayed a message on quorum queues;
        creating 32 quorum queues takes longer than the suite's shortest ETA."""
        _testing.require_server()
        transport = AMQPTransport(_testing.server_url(), {"queue_type": "quorum"})
        try:
            transport.declare_delay_levels()
        finally:
            transport.close()

    @pytest.fixture
    def make_transport(self, amqp_url: str) -> Callable[..., AMQPTransport]:
        return lambda **options: AMQPTransport(amqp_url, {"queue_type": "quorum", **options})

    @pytest.mark.skip(reason="quorum queues have no priorities before RabbitMQ 3.13 (this server: 3.10)")
    def test_higher_priority_first_then_first_in_first_out(self) -> None: ...

    def test_redelivery_is_counted(self, open_transport: Callable[..., AMQPTransport]) -> None:
        transport = open_transport()
        queue = f"quorum-{uuid.uuid4().hex}"
        transport.publish(make_envelope(1), queue)
        [first] = collect(transport, [queue], 1)
        transport.reject(first, requeue=True)
        [second] = collect(transport, [queue], 1)
        assert (first.delivery_count, second.delivery_count) == (1, 2)
        assert "x-delivery-count" not in second.envelope.headers
        transport.ack(second)
