"""A faster reader of AMQP content headers, plugged into py-amqp.

Decoding a message's properties -- above all the application headers table, which holds the ~20
protocol-v2 task headers -- is most of what py-amqp spends per delivered task: its table reader
calls a function per value and per string. :func:`decode_basic_properties` decodes the same
bytes into the same Python values (it is checked against py-amqp's reader in the tests) with a
tight loop instead. It is installed through py-amqp's public ``frame_handler`` connection
argument: :func:`frame_handler` is py-amqp's own frame handler, except that content headers are
read by :class:`FastMessage`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from struct import Struct
from typing import Any

import amqp
from amqp import spec

__all__ = ["FastMessage", "decode_basic_properties", "frame_handler"]

_U8 = Struct(">B").unpack_from
_I8 = Struct(">b").unpack_from
_I16 = Struct(">h").unpack_from
_U16 = Struct(">H").unpack_from
_I32 = Struct(">i").unpack_from
_U32 = Struct(">I").unpack_from
_I64 = Struct(">q").unpack_from
_U64 = Struct(">Q").unpack_from
_F32 = Struct(">f").unpack_from
_F64 = Struct(">d").unpack_from
_HEADER = Struct(">HxxQ").unpack_from
_METHOD = Struct(">HH").unpack_from

#: The short-string properties of the basic class, in wire order, by flag bit.
_SHORT_STRINGS = (
    (0x0400, "correlation_id"),
    (0x0200, "reply_to"),
    (0x0100, "expiration"),
    (0x0080, "message_id"),
)
_LATER_SHORT_STRINGS = ((0x0020, "type"), (0x0010, "user_id"), (0x0008, "app_id"), (0x0004, "cluster_id"))


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return raw


def _table(buf: bytes, offset: int, limit: int) -> dict[Any, Any]:
    table: dict[Any, Any] = {}
    while offset < limit:
        end = offset + 1 + buf[offset]
        raw = buf[offset + 1 : end]
        try:
            key: Any = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            key = raw
        kind = buf[end]
        offset = end + 1
        if kind == 83:  # 'S' long string (most header values)
            end = offset + 4 + _U32(buf, offset)[0]
            raw = buf[offset + 4 : end]
            offset = end
            try:
                table[key] = raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                table[key] = raw
        elif kind == 86:  # 'V' void
            table[key] = None
        else:
            table[key], offset = _value(kind, buf, offset)
    return table


def _value(kind: int, buf: bytes, offset: int) -> tuple[Any, int]:
    """The value of type ``kind`` at ``offset``; py-amqp's ``_read_item`` semantics."""
    if kind == 83:  # 'S'
        length = _U32(buf, offset)[0]
        return _text(buf[offset + 4 : offset + 4 + length]), offset + 4 + length
    if kind == 86:  # 'V'
        return None, offset
    if kind == 73:  # 'I'
        return _I32(buf, offset)[0], offset + 4
    if kind in (108, 76):  # 'l', 'L'
        return _I64(buf, offset)[0], offset + 8
    if kind == 116:  # 't'
        return bool(buf[offset]), offset + 1
    if kind == 100:  # 'd'
        return _F64(buf, offset)[0], offset + 8
    if kind == 70:  # 'F'
        length = _U32(buf, offset)[0]
        return _table(buf, offset + 4, offset + 4 + length), offset + 4 + length
    if kind == 65:  # 'A'
        length = _U32(buf, offset)[0]
        offset += 4
        limit = offset + length
        items = []
        while offset < limit:
            item, offset = _value(buf[offset], buf, offset + 1)
            items.append(item)
        return items, offset
    if kind == 120:  # 'x' byte array
        length = _U32(buf, offset)[0]
        return buf[offset + 4 : offset + 4 + length], offset + 4 + length
    if kind in (115, 85):  # 's', 'U': signed 16-bit
        return _I16(buf, offset)[0], offset + 2
    if kind == 117:  # 'u'
        return _U16(buf, offset)[0], offset + 2
    if kind == 98:  # 'b'
        return _I8(buf, offset)[0], offset + 1
    if kind == 66:  # 'B'
        return _U8(buf, offset)[0], offset + 1
    if kind == 105:  # 'i'
        return _U32(buf, offset)[0], offset + 4
    if kind == 102:  # 'f'
        return _F32(buf, offset)[0], offset + 4
    if kind == 68:  # 'D'
        places, number = buf[offset], _I32(buf, offset + 1)[0]
        return Decimal(number) / Decimal(10**places), offset + 5
    if kind == 84:  # 'T'
        stamp = _U64(buf, offset)[0]
        return datetime.fromtimestamp(stamp, tz=UTC).replace(tzinfo=None), offset + 8
    raise amqp.exceptions.FrameSyntaxError(f"Unknown value in table: {chr(kind)!r}")


def _short_string(buf: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + buf[offset]
    return buf[offset + 1 : end].decode("utf-8", "surrogatepass"), end


def decode_basic_properties(buf: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """Basic-class properties at ``offset``: the same result as py-amqp's reader, faster."""
    properties: dict[str, Any] = {}
    flags = _U16(buf, offset)[0]
    offset += 2
    if flags & 0x8000:
        properties["content_type"], offset = _short_string(buf, offset)
    if flags & 0x4000:
        properties["content_encoding"], offset = _short_string(buf, offset)
    if flags & 0x2000:
        length = _U32(buf, offset)[0]
        properties["application_headers"] = _table(buf, offset + 4, offset + 4 + length)
        offset += 4 + length
    if flags & 0x1000:
        properties["delivery_mode"] = buf[offset]
        offset += 1
    if flags & 0x0800:
        properties["priority"] = buf[offset]
        offset += 1
    for flag, name in _SHORT_STRINGS:
        if flags & flag:
            properties[name], offset = _short_string(buf, offset)
    if flags & 0x0040:
        properties["timestamp"] = _U64(buf, offset)[0]
        offset += 8
    for flag, name in _LATER_SHORT_STRINGS:
        if flags & flag:
            properties[name], offset = _short_string(buf, offset)
    return properties, offset


class FastMessage(amqp.Message):  # type: ignore[misc]
    """A py-amqp message whose basic properties are read by :func:`decode_basic_properties`."""

    __slots__ = ()

    def _load_properties(self, class_id: int, buf: bytes, offset: int) -> int:
        if class_id != spec.Basic.CLASS_ID:
            return int(super()._load_properties(class_id, buf, offset))
        properties, offset = decode_basic_properties(buf, offset)
        self.properties = properties  # type: ignore[misc]  # a slot of py-amqp's GenericContent
        return offset


_CONTENT_METHODS = frozenset([spec.Basic.Return, spec.Basic.Deliver, spec.Basic.GetOk])
_DELIVER = spec.Basic.Deliver


def _deliver(connection: Any, channel_id: int, message: FastMessage) -> bool:
    """Hand a ``basic.deliver`` straight to its consumer's callback, as py-amqp's
    ``Channel._on_basic_deliver`` does after ``dispatch_method`` decoded its arguments
    (``consumer-tag``, ``delivery-tag``, ``redelivered``, ``exchange``, ``routing-key``) -- here
    with a few slices instead of the generic argument reader. False: let py-amqp do it (closing
    or decoding channel, unknown consumer)."""
    channel = connection.channels.get(channel_id) if connection.channels is not None else None
    if channel is None or channel.is_closing or channel.auto_decode:
        return False
    buf = message.frame_args
    end = 5 + buf[4]
    consumer_tag = buf[5:end].decode("utf-8", "surrogatepass")
    handler = channel.callbacks.get(consumer_tag)
    if handler is None:
        return False
    delivery_tag = _U64(buf, end)[0]
    redelivered = bool(buf[end + 8] & 1)
    offset = end + 9
    end = offset + 1 + buf[offset]
    exchange = buf[offset + 1 : end].decode("utf-8", "surrogatepass")
    routing_key = buf[end + 1 : end + 1 + buf[end]].decode("utf-8", "surrogatepass")
    message.channel = channel
    message.delivery_info = {
        "consumer_tag": consumer_tag,
        "delivery_tag": delivery_tag,
        "redelivered": redelivered,
        "exchange": exchange,
        "routing_key": routing_key,
    }
    handler(message)
    return True


def frame_handler(connection: Any, callback: Callable[..., Any]) -> Callable[[tuple[int, int, bytes]], bool]:
    """py-amqp's ``method_framing.frame_handler``, building :class:`FastMessage` contents and
    delivering ``basic.deliver`` directly (:func:`_deliver`)."""
    expected_types: defaultdict[int, int] = defaultdict(lambda: 1)
    partial_messages: dict[int, FastMessage] = {}

    def on_frame(frame: tuple[int, int, bytes]) -> bool:
        frame_type, channel, buf = frame
        connection.bytes_recv += 1
        if frame_type not in (expected_types[channel], 8):
            raise amqp.exceptions.UnexpectedFrame(
                f"Received frame {frame_type} while expecting type: {expected_types[channel]}"
            )
        if frame_type == 1:
            method_sig = _METHOD(buf, 0)
            if method_sig in _CONTENT_METHODS:
                partial_messages[channel] = FastMessage(frame_method=method_sig, frame_args=buf)
                expected_types[channel] = 2
                return False
            callback(channel, method_sig, buf, None)
        elif frame_type == 2:
            message = partial_messages[channel]
            message.inbound_header(buf)
            if not message.ready:
                expected_types[channel] = 3
                return False
            expected_types[channel] = 1
            partial_messages.pop(channel, None)
            callback(channel, message.frame_method, message.frame_args, message)
        elif frame_type == 3:
            message = partial_messages[channel]
            message.inbound_body(buf)
            if not message.ready:
                return False
            expected_types[channel] = 1
            partial_messages.pop(channel, None)
            if message.frame_method != _DELIVER or not _deliver(connection, channel, message):
                callback(channel, message.frame_method, message.frame_args, message)
        elif frame_type == 8:
            return False
        return True

    return on_frame
