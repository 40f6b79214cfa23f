"""Envelope <-> AMQP message conversion and the fast header reader (no broker needed)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import amqp
import pytest
from amqp.serialization import decode_properties_basic
from celeriac import Envelope
from celeriac.plugins.amqp._framing import FastMessage, decode_basic_properties, frame_handler
from celeriac.plugins.amqp._message import envelope_from_message, message_from_envelope
from hypothesis import given, settings
from hypothesis import strategies as st

keys = st.text(min_size=0, max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=60)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5), max_leaves=25
)
short_strings = st.text(max_size=40)


def _wire(properties: dict[str, Any]) -> bytes:
    """Basic properties as py-amqp writes them."""
    return bytes(amqp.Message(b"", **properties)._serialize_properties())


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(keys, values, max_size=12),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | short_strings,
    reply_to=st.none() | short_strings,
    timestamp=st.none() | st.integers(0, 2**40),
)
def test_the_fast_reader_reads_what_py_amqp_reads(
    headers: dict[str, Any],
    priority: int | None,
    correlation_id: str | None,
    reply_to: str | None,
    timestamp: int | None,
) -> None:
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": headers,
        "delivery_mode": 2,
        "priority": priority,
        "correlation_id": correlation_id,
        "reply_to": reply_to,
        "timestamp": timestamp,
        "type": "t",
        "app_id": "celeriac",
    }
    wire = _wire({key: value for key, value in properties.items() if value is not None})
    assert decode_basic_properties(wire, 0) == decode_properties_basic(wire, 0)


def test_the_fast_reader_handles_every_table_type() -> None:
    headers = {
        "when": datetime(2026, 11, 24, 1, 2, 3),
        "amount": Decimal("12.345"),
        "raw": b"\x00\xff",  # py-amqp writes bytes as a long string and reads them back as bytes
        "short": 7,
        "list": [None, True, 1.5, "x", {"deep": [1]}],
    }
    wire = _wire({"application_headers": headers})
    assert decode_basic_properties(wire, 0) == decode_properties_basic(wire, 0)
    # the letters RabbitMQ itself writes but py-amqp never does: 's' (int16), 'b', 'B', 'u', 'i', 'f'
    import struct

    table = b"".join(
        bytes([len(key)]) + key.encode() + kind + packed
        for key, kind, packed in (
            ("s", b"s", struct.pack(">h", -2)),
            ("b", b"b", struct.pack(">b", -3)),
            ("B", b"B", struct.pack(">B", 250)),
            ("u", b"u", struct.pack(">H", 65000)),
            ("i", b"i", struct.pack(">I", 4_000_000_000)),
            ("f", b"f", struct.pack(">f", 0.5)),
            ("x", b"x", struct.pack(">I", 2) + b"\x00\xff"),
        )
    )
    wire = struct.pack(">H", 0x2000) + struct.pack(">I", len(table)) + table
    expected = {"s": -2, "b": -3, "B": 250, "u": 65000, "i": 4_000_000_000, "f": 0.5, "x": b"\x00\xff"}
    assert decode_basic_properties(wire, 0)[0] == {"application_headers": expected}
    assert decode_properties_basic(wire, 0)[0] == {"application_headers": expected}


class _Channel:
    """Just what the frame handler looks at on a py-amqp channel."""

    is_closing = False
    auto_decode = False

    def __init__(self) -> None:
        self.callbacks: dict[str, Any] = {}


class _Connection:
    bytes_recv = 0

    def __init__(self) -> None:
        self.channels = {1: _Channel()}


def _deliver_frames(consumer_tag: str, delivery_tag: int, redelivered: bool) -> list[tuple[int, int, bytes]]:
    """The three frames of a ``basic.deliver`` on channel 1, as RabbitMQ sends them."""
    arguments = amqp.serialization.dumps("sLbss", (consumer_tag, delivery_tag, redelivered, "", "work-queue"))
    message = amqp.Message(b"body", content_type="text/plain", application_headers={"a": 1})
    header = struct_pack(">HHQ", 60, 0, 4) + bytes(message._serialize_properties())
    return [(1, 1, struct_pack(">HH", 60, 60) + arguments), (2, 1, header), (3, 1, b"body")]


def test_the_frame_handler_hands_deliveries_to_their_consumer() -> None:
    connection = _Connection()
    received: list[Any] = []
    connection.channels[1].callbacks["ctag-1"] = received.append
    handle = frame_handler(connection, lambda *args: pytest.fail("went the slow way"))
    frames = _deliver_frames("ctag-1", 2**40 + 5, True)
    assert [handle(frame) for frame in frames] == [False, False, True]
    [message] = received
    assert isinstance(message, FastMessage)
    assert message.body == b"body"
    assert message.properties == {"content_type": "text/plain", "application_headers": {"a": 1}}
    assert message.channel is connection.channels[1]
    arguments = amqp.serialization.loads("sLbss", frames[0][2], 4)[0]  # py-amqp's own reading
    assert message.delivery_info == dict(
        zip(("consumer_tag", "delivery_tag", "redelivered", "exchange", "routing_key"), arguments, strict=True)
    )


def test_the_frame_handler_leaves_unknown_consumers_to_py_amqp() -> None:
    connection = _Connection()
    slow: list[Any] = []
    handle = frame_handler(connection, lambda channel, method, args, content: slow.append((method, content)))
    for frame in _deliver_frames("nobody", 1, False):
        handle(frame)
    [(method, content)] = slow
    assert method == (60, 60)
    assert isinstance(content, FastMessage)


def struct_pack(form: str, *values: int) -> bytes:
    import struct

    return struct.pack(form, *values)


# -- envelopes --------------------------------------------------------------------------------


def _through_the_wire(message: amqp.Message) -> amqp.Message:
    """What a consumer gets for ``message``: its properties serialized and read back."""
    received = FastMessage(frame_method=None, frame_args=None)
    received.properties = decode_basic_properties(bytes(message._serialize_properties()), 0)[0]
    received.body = message.body
    return received


def test_an_envelope_survives_the_conversion() -> None:
    sent = Envelope(
        body=b"\x00\x01 binary",
        content_type="application/x-msgpack",
        content_encoding="binary",
        headers={"task": "proj.add", "id": "1", "eta": None, "timelimit": [10.5, None], "nested": {"ok": True}},
        properties={"correlation_id": "1", "reply_to": "", "priority": 5, "delivery_info": {"exchange": ""}},
    )
    message = message_from_envelope(sent, persistent=True)
    assert message.properties["delivery_mode"] == 2
    assert message.properties["priority"] == 5
    received, count = envelope_from_message(_through_the_wire(message))
    assert received == Envelope(
        body=sent.body,
        content_type=sent.content_type,
        content_encoding=sent.content_encoding,
        headers=sent.headers,
        properties={**sent.properties, "delivery_mode": 2},
    )
    assert count == 1


@pytest.mark.parametrize(
    ("value", "carried"),
    [("7", False), (7, True), (300, False), (True, False), (None, False)],
)
def test_priority_goes_in_the_amqp_slot_only_when_it_fits(value: object, carried: bool) -> None:
    message = message_from_envelope(Envelope(b"", "text/plain", properties={"priority": value}), persistent=False)
    assert ("priority" in message.properties) is carried
    assert message.properties["delivery_mode"] == 1


def test_delay_bookkeeping_is_removed_and_other_deaths_are_kept_as_plain_data() -> None:
    when = datetime(2026, 11, 24, 3, 0, 0)
    headers = {
        "task": "t",
        "celeriac-delay-0": "1",
        "celeriac-delay-5": "1",
        "x-death": [
            {"queue": "celeriac.delay.0", "reason": "expired", "count": 1, "time": when},
            {"queue": "work", "reason": "rejected", "count": 2, "time": when},
        ],
        "x-first-death-queue": "celeriac.delay.5",
        "x-first-death-reason": "expired",
        "x-first-death-exchange": "celeriac.delay.5",
        "x-delivery-count": 2,
    }
    message = amqp.Message(b"", content_type="text/plain", application_headers=headers)
    envelope, count = envelope_from_message(_through_the_wire(message))
    assert envelope.headers == {
        "task": "t",
        "x-death": [{"queue": "work", "reason": "rejected", "count": 2, "time": "2026-11-24T03:00:00+00:00"}],
    }
    assert count == 3
