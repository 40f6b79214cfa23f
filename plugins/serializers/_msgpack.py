"""``msgpack`` — MessagePack (extra ``msgpack``), content type ``application/x-msgpack``.

Wire format: ``msgpack.packb(obj, use_bin_type=True)`` as kombu writes it, so plain data (None,
bool, int in 64 bits, float, str, bytes, list, dict) is readable by any MessagePack peer,
Celery included. Values MessagePack has no type for travel as extension types whose payload is
described below; kombu hands unknown extension types to the task as ``ExtType`` objects, so
send plain data where a Celery peer must read it.

====  =========================  ==========================================================
code  Python type                payload
====  =========================  ==========================================================
1     ``datetime.datetime``      ``isoformat()`` as UTF-8 (offset and microseconds kept;
                                 a naive datetime stays naive)
2     ``datetime.date``          ``isoformat()`` as UTF-8
3     ``datetime.time``          ``isoformat()`` as UTF-8
4     ``decimal.Decimal``        ``str()`` as UTF-8 (exponent kept: ``1.10`` stays ``1.10``)
5     ``uuid.UUID``              the 16 raw bytes
6     ``tuple``                  the items, packed as a MessagePack array with these rules
7     ``int`` beyond 64 bits     two's-complement big-endian bytes (``int.to_bytes(signed=True)``)
====  =========================  ==========================================================

Time zones travel as fixed UTC offsets: a ``zoneinfo`` zone comes back as
``datetime.timezone(offset)`` — the same instant and offset, not the zone's name. The
MessagePack timestamp extension (code -1, what other producers send for datetimes) is read as
an aware UTC ``datetime``. ``float('inf')``/``nan`` are IEEE doubles and round-trip as such.

Subclasses of the native types travel as their base type (an ``IntEnum`` as its int, an
``OrderedDict`` as a dict, a named tuple as a tuple), as with the JSON serializer. Map keys
may be any hashable value MessagePack carries (str, int, bytes, tuple, ...). Decoding rejects
unknown extension codes instead of passing opaque objects to a task.

The ``msgpack`` library is imported the first time the serializer encodes or decodes.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar

import celeriac

__all__ = [
    "EXT_BIGINT",
    "EXT_DATE",
    "EXT_DATETIME",
    "EXT_DECIMAL",
    "EXT_TIME",
    "EXT_TUPLE",
    "EXT_UUID",
    "MsgpackSerializer",
]

EXT_DATETIME = 1
EXT_DATE = 2
EXT_TIME = 3
EXT_DECIMAL = 4
EXT_UUID = 5
EXT_TUPLE = 6
EXT_BIGINT = 7

#: Native types whose subclasses travel as the base type.
_BASES: tuple[type[Any], ...] = (int, float, str, bytes, list, dict)
_SUPPORTED = "str, int, float, bool, None, list, tuple, dict, bytes, datetime, date, time, Decimal, UUID"


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError as exc:  # registered only when installed; this guards a removed install
        raise celeriac.PluginError(
            "the msgpack serializer needs the 'msgpack' extra: pip install 'celeriac[msgpack]'"
        ) from exc
    return msgpack


class MsgpackSerializer(celeriac.Serializer):
    """MessagePack with extension types for tuples, datetimes, decimals, UUIDs and big ints."""

    name: ClassVar[str] = "msgpack"
    content_type: ClassVar[str] = "application/x-msgpack"
    content_encoding: ClassVar[str] = "binary"
    trusted_by_default: ClassVar[bool] = True

    def __init__(self) -> None:
        self._module: Any = None

    @property
    def _lib(self) -> Any:
        if self._module is None:
            self._module = _msgpack()
        return self._module

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; ``TypeError`` names a type MessagePack cannot carry."""
        lib = self._lib
        try:
            data: bytes = lib.packb(obj, default=self._default, use_bin_type=True, strict_types=True)
        except RecursionError:
            raise ValueError("cannot encode as msgpack: circular reference or nesting too deep") from None
        return data

    def loads(self, data: bytes) -> Any:
        """Decode ``data``, turning extension types back into their Python types."""
        return self._lib.unpackb(data, raw=False, strict_map_key=False, ext_hook=self._ext_hook, timestamp=3)

    # ``strict_types=True`` makes msgpack hand exact-type mismatches to ``default``: tuples
    # (instead of writing them as arrays), subclasses of native types, ints beyond 64 bits
    # and every other type.
    def _default(self, obj: Any) -> Any:
        lib = self._lib
        kind = type(obj)
        if kind is tuple or isinstance(obj, tuple):
            return lib.ExtType(EXT_TUPLE, self.dumps(list(obj)))
        if kind is int:  # only reaches here when outside msgpack's 64-bit range
            return lib.ExtType(EXT_BIGINT, obj.to_bytes(obj.bit_length() // 8 + 1, "big", signed=True))
        if isinstance(obj, datetime.datetime):  # before date: a datetime is a date
            return lib.ExtType(EXT_DATETIME, obj.isoformat().encode())
        if isinstance(obj, datetime.date):
            return lib.ExtType(EXT_DATE, obj.isoformat().encode())
        if isinstance(obj, datetime.time):
            return lib.ExtType(EXT_TIME, obj.isoformat().encode())
        if isinstance(obj, Decimal):
            return lib.ExtType(EXT_DECIMAL, str(obj).encode())
        if isinstance(obj, uuid.UUID):
            return lib.ExtType(EXT_UUID, obj.bytes)
        for base in _BASES:  # subclasses: enums, OrderedDict, ...
            if isinstance(obj, base):
                return base(obj)
        raise TypeError(
            f"Object of type {kind.__name__} is not msgpack serializable; the msgpack serializer handles {_SUPPORTED}"
        )

    def _ext_hook(self, code: int, data: bytes) -> Any:
        decoder = _EXT_DECODERS.get(code)
        if decoder is not None:
            return decoder(data)
        if code == EXT_TUPLE:
            return tuple(self.loads(data))
        raise ValueError(f"unknown msgpack extension type {code}")


def _text(data: bytes) -> str:
    return data.decode("utf-8")


_EXT_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_DATETIME: lambda data: datetime.datetime.fromisoformat(_text(data)),
    EXT_DATE: lambda data: datetime.date.fromisoformat(_text(data)),
    EXT_TIME: lambda data: datetime.time.fromisoformat(_text(data)),
    EXT_DECIMAL: lambda data: Decimal(_text(data)),
    EXT_UUID: lambda data: uuid.UUID(bytes=data),
    EXT_BIGINT: lambda data: int.from_bytes(data, "big", signed=True),
}
