"""The ceiling for celeriac on RabbitMQ: a plain py-amqp publish/consume loop, no celeriac at all.

Usage::

    python benchmarks/amqp_ceiling.py [--url amqp://guest:guest@127.0.0.1:5672//]
                                      [--messages 20000] [--prefetch 4] [--latency-samples 500]

Prints one JSON object per line, the same fields as ``benchmarks/throughput.py`` so the two can be
set side by side (run them on the same machine, one after the other):

* ``publish_per_s`` -- persistent messages to a durable queue, one at a time, each waiting for
  its publisher confirm (what ``apply_async`` does);
* ``publish_pipelined_per_s`` -- the same, confirms awaited once per batch of 100;
* ``drain_per_s`` -- a consumer with manual acks, QoS ``--prefetch``, acking each message as it
  arrives (no task, no result), from a pre-filled queue;
* ``latency_ms`` -- publish (confirmed) one message, receive it, ack it; p50/p90/p99.

The queue is a fresh ``ceiling-<uuid>`` queue, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

import amqp  # type: ignore[import-untyped]
from kombu.connection import Connection


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def connect(url: str) -> Any:
    """A py-amqp connection for ``url`` (kombu parses the URL, as celeriac does)."""
    return Connection(url).transport.establish_connection()  # type: ignore[no-untyped-call]


class Confirms:
    """Counts publisher confirms on a channel in confirm mode."""

    def __init__(self, channel: Any) -> None:
        self.acked = 0
        channel.confirm_select()
        channel.events["basic_ack"].add(self.on_ack)

    def on_ack(self, tag: int, multiple: bool) -> None:
        self.acked = tag if multiple else max(self.acked, tag)


def publish(connection: Any, channel: Any, confirms: Confirms, queue: str, count: int, batch: int) -> float:
    """Publish ``count`` persistent messages, waiting for confirms every ``batch``; seconds taken."""
    body = b'[[1], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    sent = confirms.acked
    started = time.perf_counter()
    for number in range(count):
        message = amqp.Message(body, content_type="application/json", delivery_mode=2, correlation_id=str(number))
        channel.basic_publish(message, "", queue)
        sent += 1
        if sent % batch == 0 or number == count - 1:
            while confirms.acked < sent:
                connection.drain_events(timeout=10)
    return time.perf_counter() - started


def drain(connection: Any, queue: str, count: int, prefetch: int) -> float:
    """Consume ``count`` messages with manual acks and QoS ``prefetch``; seconds taken."""
    channel = amqp.Channel(connection, auto_decode=False)
    channel.open()
    channel.basic_qos(0, prefetch, False)
    received = 0

    def on_message(message: Any) -> None:
        nonlocal received
        received += 1
        channel.basic_ack(message.delivery_info["delivery_tag"])

    started = time.perf_counter()
    tag = channel.basic_consume(queue, callback=on_message)
    while received < count:
        connection.drain_events(timeout=10)
    seconds = time.perf_counter() - started
    channel.basic_cancel(tag)
    channel.close()
    return seconds


def round_trips(connection: Any, channel: Any, confirms: Confirms, queue: str, samples: int) -> list[float]:
    """Milliseconds from publishing one message (confirmed) to acking it, ``samples`` times."""
    consumer = amqp.Channel(connection, auto_decode=False)
    consumer.open()
    consumer.basic_qos(0, 1, False)
    arrived: list[Any] = []
    consumer.basic_consume(queue, callback=arrived.append)
    latencies = []
    for number in range(samples):
        began = time.perf_counter()
        publish(connection, channel, confirms, queue, 1, 1)
        while not arrived:
            connection.drain_events(timeout=10)
        consumer.basic_ack(arrived.pop().delivery_info["delivery_tag"])
        latencies.append((time.perf_counter() - began) * 1000)
        del number
    consumer.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=500)
    options = parser.parse_args(argv)
    connection = connect(options.url)
    channel = amqp.Channel(connection, auto_decode=False)
    channel.open()
    confirms = Confirms(channel)
    queue = f"ceiling-{uuid.uuid4().hex}"
    channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
    try:
        count = options.messages
        one_by_one = publish(connection, channel, confirms, queue, count, 1)
        drained = drain(connection, queue, count, options.prefetch)
        pipelined = publish(connection, channel, confirms, queue, count, 100)
        channel.queue_purge(queue)
        latencies = round_trips(connection, channel, confirms, queue, options.latency_samples)
    finally:
        channel.queue_delete(queue)
        connection.close()
    row = {
        "benchmark": "amqp_ceiling",
        "client": f"py-amqp {amqp.__version__}",
        "messages": count,
        "prefetch": options.prefetch,
        "publish_per_s": round(count / one_by_one),
        "publish_pipelined_per_s": round(count / pipelined),
        "drain_per_s": round(count / drained),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
        },
        "environment": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
