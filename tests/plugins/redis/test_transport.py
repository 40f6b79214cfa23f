"""What the Redis transport does beyond the conformance suite: URLs and options, the key
layout, priority levels, leases and claims, delayed messages, wake-ups, hand-back on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import celeriac
import pytest
import redis
from celeriac.plugins import redis as redis_plugin
from celeriac.plugins.redis._codec import delayed_member, encode
from celeriac.plugins.redis._connection import describe, parse_options
from celeriac.plugins.redis._transport import RedisTransport
from celeriac.testing import wait_for

pytestmark = pytest.mark.timeout(30)

LONG = 5.0


def envelope(number: int, priority: int | None = None) -> celeriac.Envelope:
    properties = {} if priority is None else {"priority": priority}
    return celeriac.Envelope(b"%d" % number, "application/json", headers={"number": number}, properties=properties)


def numbers(deliveries: list[celeriac.Delivery]) -> list[int]:
    return [delivery.envelope.headers["number"] for delivery in deliveries]


def collect(transport: celeriac.Transport, queue: str, count: int) -> list[celeriac.Delivery]:
    deadline = time.monotonic() + LONG
    found: list[celeriac.Delivery] = []
    while len(found) < count and time.monotonic() < deadline:
        found += transport.fetch([queue], limit=count - len(found), timeout=deadline - time.monotonic())
    return found


@pytest.fixture
def open_transport(broker_url: str, prefix: str) -> Iterator[Callable[..., RedisTransport]]:
    opened: list[RedisTransport] = []

    def open_(**options: Any) -> RedisTransport:
        transport = RedisTransport(broker_url, {"global_keyprefix": prefix, **options})
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(open_transport: Callable[..., RedisTransport]) -> RedisTransport:
    return open_transport()


@pytest.fixture
def raw(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


# -- URLs, options, the hook -----------------------------------------------------------------


def test_query_string_options_are_read_and_config_wins() -> None:
    url, options = parse_options(
        "rediss://:secret@example.org:6380/3?visibility_timeout=30&global_keyprefix=a:&ssl_cert_reqs=none",
        {"global_keyprefix": "b:"},
    )
    assert options.visibility_timeout == 30.0
    assert options.global_keyprefix == "b:"
    assert url == "rediss://:secret@example.org:6380/3?ssl_cert_reqs=none"
    assert describe("redis://:secret@example.org:6380/3") == "example.org:6380/3"
    assert describe("unix:///run/redis.sock?db=2") == "unix:/run/redis.sock"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"visiblity_timeout": 5}, "unknown option 'visiblity_timeout' for redis; known: "),
        ({"visibility_timeout": 0}, "visibility_timeout: expected a positive number of seconds, got 0"),
        ({"visibility_timeout": "soon"}, "expected a positive number of seconds, got 'soon'"),
        ({"max_connections": 2.5}, "max_connections: expected a positive integer"),
    ],
)
def test_bad_options_fail_with_one_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(celeriac.ConfigError, match=message.replace("(", r"\(")):
        parse_options("redis://localhost/0", options)


def test_hook_serves_redis_schemes_only_and_reads_the_publish_timeout() -> None:
    assert redis_plugin.celeriac_transport(url="memory://", scheme="memory", options={}, app=None) is None
    assert set(redis_plugin.celeriac_transport_schemes()) == {"redis", "rediss", "unix"}
    app = celeriac.Celeriac("t", broker_url="redis://127.0.0.1:1/0", broker_publish_timeout=2.5, environ={})
    try:
        transport = app.create_transport()
        assert isinstance(transport, RedisTransport)
        assert transport.settings.publish_timeout == 2.5
        assert transport.needs_lease_extension
        assert transport.options["visibility_timeout"] == 45.0
        assert "secret" not in repr(transport.info())
        transport.close()
    finally:
        app.close()


def test_missing_redis_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "redis":
            raise ImportError("No module named 'redis'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(celeriac.PluginError, match=r"pip install 'celeriac\[redis\]'"):
        redis_plugin.celeriac_transport(url="redis://localhost/0", scheme="redis", options={}, app=None)


# -- layout and trimming ---------------------------------------------------------------------


def test_acked_entries_are_deleted_so_streams_stay_small(transport: RedisTransport, raw: redis.Redis) -> None:
    transport.publish_many((envelope(number), "jobs") for number in range(50))
    key = transport.stream_key("jobs")
    assert raw.xlen(key) == 50

    deliveries = collect(transport, "jobs", 50)
    transport.ack_many(deliveries[:40])

    assert raw.xlen(key) == 10  # only the unsettled ones remain
    transport.ack_many(deliveries[40:])
    assert raw.xlen(key) == 0
    assert raw.xpending(key, "celeriac")["pending"] == 0


def test_ten_priority_levels_each_in_its_own_stream(transport: RedisTransport, raw: redis.Redis) -> None:
    for number in range(10):
        transport.publish(envelope(number, priority=number), "levels")
    transport.publish(envelope(10, priority=42), "levels")  # clamped to 9

    assert numbers(collect(transport, "levels", 11)) == [9, 10, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert raw.exists(transport.stream_key("levels", 9))


def test_a_new_priority_level_wakes_a_blocked_fetch(open_transport: Callable[..., RedisTransport]) -> None:
    producer, consumer = open_transport(), open_transport()
    consumer.declare_queue("wake")
    timer = threading.Timer(0.2, lambda: producer.publish(envelope(1, priority=7), "wake"))
    timer.start()
    started = time.monotonic()
    deliveries = consumer.fetch(["wake"], limit=1, timeout=LONG)
    timer.join()
    assert numbers(deliveries) == [1]
    assert time.monotonic() - started < 1.5  # not after a blocked read timed out


def test_dead_letter_keeps_the_priority_and_counts_in_queue_length(transport: RedisTransport) -> None:
    transport.publish(envelope(1, priority=6), "poison")
    [delivery] = collect(transport, "poison", 1)
    transport.dead_letter(delivery, "cannot decode")

    dead_letter_queue = transport.dead_letter_queue("poison")
    assert dead_letter_queue == "poison.dead-letter"
    assert transport.queue_length(dead_letter_queue) == 1
    [dead] = collect(transport, dead_letter_queue, 1)
    assert dead.envelope.headers["x-death-reason"] == "cannot decode"
    assert dead.envelope.headers["x-death-queue"] == "poison"
    assert dead.envelope.priority == 6
    assert dead.tag[0] == transport.stream_key(dead_letter_queue, 6)


def test_an_entry_that_does_not_decode_is_delivered_for_dead_lettering(
    transport: RedisTransport, raw: redis.Redis
) -> None:
    transport.declare_queue("garbage")
    raw.xadd(transport.stream_key("garbage"), {"h": b"not json", "b": b"body"})
    [delivery] = collect(transport, "garbage", 1)
    assert delivery.envelope.content_type == "application/x-celeriac-undecodable"
    assert delivery.envelope.body == b"body"
    transport.dead_letter(delivery, "undecodable")
    assert transport.queue_length("garbage.dead-letter") == 1


# -- leases and claims -----------------------------------------------------------------------


def test_claimed_entries_count_their_deliveries(open_transport: Callable[..., RedisTransport]) -> None:
    dead, alive = open_transport(visibility_timeout=0.3), open_transport(visibility_timeout=0.3)
    dead.publish(envelope(1), "claims")
    [first] = collect(dead, "claims", 1)
    assert (first.delivery_count, first.redelivered) == (1, False)

    [second] = collect(alive, "claims", 1)  # after 0.3 s without a lease renewal
    assert (second.delivery_count, second.redelivered) == (2, True)
    dead.ack(first)  # too late: another consumer holds it now
    alive.reject(second, requeue=True)
    [third] = collect(alive, "claims", 1)
    assert (third.delivery_count, third.redelivered) == (3, True)
    alive.ack(third)
    assert alive.queue_length("claims") == 0


def test_extend_lease_leaves_entries_of_other_consumers_alone(open_transport: Callable[..., RedisTransport]) -> None:
    first, second = open_transport(visibility_timeout=0.3), open_transport(visibility_timeout=0.3)
    first.publish(envelope(1), "leases")
    [held] = collect(first, "leases", 1)
    [claimed] = collect(second, "leases", 1)  # first let its lease run out

    first.extend_lease([held], 0.3)  # must not take it back

    assert second.fetch(["leases"], limit=1, timeout=0.1) == []
    second.ack(claimed)
    assert first.queue_length("leases") == 0


def test_close_hands_back_at_once_and_deletes_the_consumer(
    open_transport: Callable[..., RedisTransport], raw: redis.Redis
) -> None:
    worker, successor = open_transport(), open_transport()
    worker.publish_many((envelope(number, priority=number % 2 * 5), "handback") for number in range(6))
    held = collect(worker, "handback", 4)
    assert len(held) == 4

    worker.close()

    returned = collect(successor, "handback", 6)
    assert sorted(numbers(returned)) == list(range(6))
    assert sum(delivery.redelivered for delivery in returned) == 4
    for level in (0, 5):
        consumers = raw.xinfo_consumers(successor.stream_key("handback", level), "celeriac")
        assert worker.consumer.encode() not in {consumer["name"] for consumer in consumers}
    with pytest.raises(celeriac.TransportError, match="closed"):
        worker.fetch(["handback"], limit=1, timeout=0.1)


# -- delayed messages and wake-ups -----------------------------------------------------------


def test_fetch_does_not_sleep_past_the_earliest_eta(open_transport: Callable[..., RedisTransport]) -> None:
    producer, consumer = open_transport(), open_transport()
    consumer.declare_queue("eta")
    consumer.fetch(["eta"], limit=1, timeout=0.05)
    due = time.time() + 0.4

    def publish_later() -> None:  # while the consumer is blocked with a long timeout
        producer.publish(envelope(1), "eta", eta=due)

    timer = threading.Timer(0.1, publish_later)
    timer.start()
    deliveries = consumer.fetch(["eta"], limit=1, timeout=LONG)
    timer.join()
    assert numbers(deliveries) == [1]
    assert due - 0.05 <= time.time() < due + 0.3


def test_delayed_messages_wait_in_redis_and_identical_ones_stay_distinct(
    transport: RedisTransport, raw: redis.Redis
) -> None:
    due = time.time() + 60
    transport.publish(envelope(1), "later", eta=due)
    transport.publish(envelope(1), "later", eta=due)
    assert raw.zcard(f"{transport.settings.global_keyprefix}celeriac:eta:later") == 2
    assert transport.queue_length("later") == 0
    assert transport.purge("later") == 0  # delayed messages stay
    assert raw.zcard(f"{transport.settings.global_keyprefix}celeriac:eta:later") == 2


def test_wake_ends_a_blocked_fetch(transport: RedisTransport) -> None:
    transport.declare_queue("idle")
    transport.fetch(["idle"], limit=1, timeout=0.05)  # the blocking connection knows its id
    threading.Timer(0.2, transport.wake).start()
    started = time.monotonic()
    assert transport.fetch(["idle"], limit=1, timeout=LONG) == []
    assert time.monotonic() - started < 1.5


def test_broadcast_channels_are_separated_by_prefix(open_transport: Callable[..., RedisTransport]) -> None:
    ours, theirs = open_transport(), open_transport(global_keyprefix="someone-else:")
    with ours.subscribe("control") as subscription:
        theirs.broadcast("control", envelope(1))
        ours.broadcast("control", envelope(2))
        received = subscription.get(LONG)
        assert received is not None
        assert received.headers["number"] == 2
        assert subscription.get(0.1) is None


# -- oldest_message_age ----------------------------------------------------------------------


def _add_aged(transport: RedisTransport, raw: redis.Redis, queue: str, number: int, age: float, level: int = 0) -> None:
    """Add a message to ``queue`` whose stream id says it was published ``age`` seconds ago."""
    head, body = encode(envelope(number))
    entry_id = f"{int((time.time() - age) * 1000)}-{number}"
    raw.xadd(transport.stream_key(queue, level), {"h": head, "b": body}, id=entry_id)


def test_oldest_message_age_counts_ready_messages_only(transport: RedisTransport, raw: redis.Redis) -> None:
    transport.declare_queue("aged")
    assert transport.oldest_message_age("aged") == 0.0
    _add_aged(transport, raw, "aged", 1, age=30)
    _add_aged(transport, raw, "aged", 2, age=10)
    assert 29 <= transport.oldest_message_age("aged") < 32
    [first] = transport.fetch(["aged"], limit=1, timeout=LONG)
    assert numbers([first]) == [1]
    assert 9 <= transport.oldest_message_age("aged") < 12  # a delivered message is not waiting
    transport.ack(first)
    [second] = transport.fetch(["aged"], limit=1, timeout=LONG)
    assert transport.oldest_message_age("aged") == 0.0
    transport.ack(second)


def test_oldest_message_age_looks_at_every_priority_level(transport: RedisTransport, raw: redis.Redis) -> None:
    transport.publish(envelope(1), "levels")  # level 0, just now
    _add_aged(transport, raw, "levels", 2, age=20, level=7)  # a stream no fetch has seen yet
    assert 19 <= transport.oldest_message_age("levels") < 22


def test_oldest_message_age_counts_due_delayed_messages_from_their_due_time(
    transport: RedisTransport, raw: redis.Redis
) -> None:
    transport.publish(envelope(1), "delayed", eta=time.time() + 60)  # ahead: not ready
    assert transport.oldest_message_age("delayed") == 0.0
    head, body = encode(envelope(2))
    due_ms = int((time.time() - 5) * 1000)  # due 5 s ago, not yet moved by a fetch
    raw.zadd(f"{transport.settings.global_keyprefix}celeriac:eta:delayed", {delayed_member(0, head, body): due_ms})
    assert 4 <= transport.oldest_message_age("delayed") < 7
    assert numbers(transport.fetch(["delayed"], limit=5, timeout=LONG)) == [2]
    assert transport.oldest_message_age("delayed") == 0.0


def test_oldest_message_age_grows_while_a_message_waits(transport: RedisTransport) -> None:
    transport.publish(envelope(1), "growing")
    first = transport.oldest_message_age("growing")
    assert 0.0 <= first < 1.0
    wait_for(lambda: transport.oldest_message_age("growing") >= first + 0.05, timeout=LONG)


# -- the fetch shortcut ------------------------------------------------------------------------


def _count_script_calls(transport: RedisTransport) -> list[int]:
    """Count the fetch script's calls from now on."""
    calls: list[int] = []
    script = transport._scripts["FETCH"]

    def counting(keys: Any, args: Any) -> Any:
        calls.append(1)
        return script(keys, args)

    transport._scripts["FETCH"] = counting  # type: ignore[assignment]
    return calls


def test_a_fetch_right_after_another_reads_the_streams_without_the_script(transport: RedisTransport) -> None:
    for number in range(3):
        transport.publish(envelope(number), "direct")
    calls = _count_script_calls(transport)
    assert numbers(transport.fetch(["direct"], limit=1, timeout=LONG)) == [0]
    assert numbers(transport.fetch(["direct"], limit=1, timeout=LONG)) == [1]
    assert numbers(transport.fetch(["direct"], limit=1, timeout=LONG)) == [2]
    assert calls == [1]  # the first fetch ran the script, the next two read the stream directly


def test_a_new_priority_level_is_served_first_even_by_a_shortcut_fetch(transport: RedisTransport) -> None:
    transport.publish(envelope(1), "mixed")
    assert numbers(transport.fetch(["mixed"], limit=1, timeout=LONG)) == [1]  # shortcut armed
    transport.publish(envelope(2), "mixed")
    transport.publish(envelope(3, priority=9), "mixed")  # a new stream: wakes readers
    assert numbers(transport.fetch(["mixed"], limit=1, timeout=LONG)) == [3]
    assert numbers(transport.fetch(["mixed"], limit=1, timeout=LONG)) == [2]


def test_an_eta_that_becomes_the_earliest_cuts_a_shortcut_fetch_short(transport: RedisTransport) -> None:
    transport.publish(envelope(1), "soon")
    assert numbers(transport.fetch(["soon"], limit=1, timeout=LONG)) == [1]  # shortcut armed
    due = time.time() + 0.3
    transport.publish(envelope(2), "soon", eta=due)
    assert numbers(transport.fetch(["soon"], limit=1, timeout=LONG)) == [2]
    assert due - 0.05 <= time.time() < due + 0.3


def test_a_fetch_blocked_until_an_eta_wakes_on_time_not_at_redis_next_tick(transport: RedisTransport) -> None:
    # Redis ends a timed-out BLOCK at its next cron tick (up to 100 ms late with hz 10); the
    # transport ends blocks that wait for a due time itself.
    transport.declare_queue("ontime")
    late = []
    for number in range(5):
        due = time.time() + 0.15
        transport.publish(envelope(number), "ontime", eta=due)
        assert numbers(transport.fetch(["ontime"], limit=1, timeout=LONG)) == [number]
        late.append(time.time() - due)
    assert min(late) >= -0.005
    assert sum(late) / len(late) < 0.03, late
