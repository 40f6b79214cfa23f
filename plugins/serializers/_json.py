"""``json`` — JSON in kombu's dialect, so Celery peers can read what we write.

Wire format: compact UTF-8 JSON. Values JSON has no type for travel as kombu's type envelopes
``{"__type__": T, "__value__": V}``:

* ``datetime`` -> ``datetime``: ``isoformat()`` (offset and microseconds kept);
* ``date`` -> ``date`` and ``time`` -> ``time``: ``isoformat()``;
* ``Decimal`` -> ``decimal``: ``str()``;
* ``UUID`` -> ``uuid``: ``{"hex": ..., "version": ...}``, kombu's form;
* ``bytes`` -> ``base64``: base64 text (kombu's ``bytes`` form, UTF-8 text, is read too);
* ``tuple`` -> ``tuple``: the list of items (celeriac only, see below);
* a dict whose keys are exactly ``__type__`` and ``__value__`` -> ``dict``: its
  ``[key, value]`` pairs, so user data cannot pass for an envelope (celeriac only).

An object with a ``__json__()`` method is replaced by what it returns, as kombu does.

Decoding turns every dict whose keys are exactly ``__type__`` and ``__value__`` back into its
type when ``T`` is known, and leaves it as a dict otherwise. The ``tuple`` and ``dict`` envelopes
are celeriac's additions: kombu raises on envelope types it does not know, so a Celery peer
cannot read data that contains them; send lists where a Celery peer must read the data.

Floats: ``inf``, ``-inf`` and ``nan`` are written as ``Infinity``, ``-Infinity`` and ``NaN``,
as Python's ``json`` (and so kombu) writes and reads them; strict JSON parsers in other
languages reject those tokens. Integers of any size round-trip.

Why not orjson: its output is not the same bytes, so a peer (or a signature, or a cache of
encoded messages) would see the wire format change with an optional install. Measured with
orjson 3.x: it writes ``1e-7`` where ``json`` writes ``1e-07``, writes ``inf``/``nan`` as
``null`` (data loss), raises on integers beyond 64 bits, rejects ``1e400`` on input (``json``
reads ``inf``), and has no ``object_hook``, so decoding envelopes would need a second walk in
Python. Getting identical bytes back would mean scanning every payload for floats and big
ints first, which gives back most of the speed; the type-envelope walk above already skips
flat data in C.
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar

import celeriac

__all__ = ["JSONSerializer"]

TYPE_KEY = "__type__"
VALUE_KEY = "__value__"
_ENVELOPE_KEYS = frozenset({TYPE_KEY, VALUE_KEY})
#: Types the JSON encoder writes natively; values of these types pass through untouched.
_NATIVE_SCALARS = frozenset({str, int, float, bool, type(None)})
_is_native_scalar_type = _NATIVE_SCALARS.__contains__
_is_str_type = frozenset({str}).__contains__
_SUPPORTED = "str, int, float, bool, None, list, tuple, dict, bytes, datetime, date, time, Decimal, UUID"


def _envelope(type_name: str, value: Any) -> dict[str, Any]:
    return {TYPE_KEY: type_name, VALUE_KEY: value}


# -- encoding ---------------------------------------------------------------------------------
#
# ``json.dumps`` writes tuples as arrays without consulting ``default``, so the object is first
# walked into a tree of plain JSON values. The walk returns every native value -- and every
# list or dict that contains only native values -- as the very same object, so data that needs
# no envelope costs one pass and no copies.


def _encode(obj: Any) -> Any:
    kind = type(obj)
    if kind in _NATIVE_SCALARS:
        return obj
    if kind is list:
        return _encode_list(obj)
    if kind is dict:
        return _encode_dict(obj)
    if kind is tuple:
        return _envelope("tuple", [_encode(item) for item in obj])
    return _encode_other(obj)


def _encode_list(items: list[Any]) -> list[Any]:
    if all(map(_is_native_scalar_type, map(type, items))):  # one pass in C for flat lists
        return items
    copied: list[Any] | None = None
    for index, item in enumerate(items):
        encoded = _encode(item)
        if copied is None and encoded is not item:
            copied = items[:index]
        if copied is not None:
            copied.append(encoded)
    return items if copied is None else copied


def _encode_dict(mapping: dict[Any, Any]) -> dict[str, Any]:
    if len(mapping) == 2 and mapping.keys() == _ENVELOPE_KEYS:
        # A user dict that looks like an envelope: escape it so it decodes as itself.
        return _envelope("dict", [[key, _encode(value)] for key, value in mapping.items()])
    if all(map(_is_str_type, map(type, mapping))) and all(map(_is_native_scalar_type, map(type, mapping.values()))):
        return mapping  # one pass in C for flat dicts
    copied: dict[str, Any] | None = None
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(
                f"JSON object keys must be str, not {type(key).__name__} (key {key!r}); "
                "convert the keys to str or use another serializer (msgpack, pickle)"
            )
        encoded = _encode(value)
        if encoded is not value:
            if copied is None:
                copied = dict(mapping)
            copied[key] = encoded
    return mapping if copied is None else copied


def _encode_other(obj: Any) -> Any:
    """Envelopes for the extra types, subclasses of the native ones, ``__json__`` objects."""
    reducer = getattr(obj, "__json__", None)
    if callable(reducer):
        return _encode(reducer())
    if isinstance(obj, datetime.datetime):  # before date: a datetime is a date
        return _envelope("datetime", obj.isoformat())
    if isinstance(obj, datetime.date):
        return _envelope("date", obj.isoformat())
    if isinstance(obj, datetime.time):
        return _envelope("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _envelope("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        # kombu rebuilds with UUID(hex=..., version=...), which rejects versions newer than 5 on
        # older Pythons; the version is already inside ``hex``, so send None for those.
        version = obj.version if obj.version is not None and obj.version <= 5 else None
        return _envelope("uuid", {"hex": obj.hex, "version": version})
    if isinstance(obj, bytes):
        return _envelope("base64", base64.b64encode(obj).decode("ascii"))
    if isinstance(obj, (str, int, float)):  # subclasses such as enums: JSON writes their value
        return obj
    if isinstance(obj, tuple):  # named tuples travel as plain tuples
        return _envelope("tuple", [_encode(item) for item in obj])
    if isinstance(obj, list):
        return _encode_list(obj)
    if isinstance(obj, dict):
        return _encode_dict(obj)
    raise TypeError(
        f"Object of type {type(obj).__name__} is not JSON serializable; "
        f"the json serializer handles {_SUPPORTED} and objects with a __json__() method"
    )


# -- decoding ---------------------------------------------------------------------------------


def _decode_uuid(value: Any) -> uuid.UUID:
    # The version kombu sends is redundant (its bits are in ``hex``), so it is not needed.
    return uuid.UUID(value if isinstance(value, str) else value["hex"])


def _decode_pairs(pairs: list[list[Any]]) -> dict[Any, Any]:
    return dict(pairs)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "decimal": Decimal,
    "uuid": _decode_uuid,
    "base64": lambda value: base64.b64decode(value, validate=True),
    "bytes": lambda value: value.encode("utf-8"),
    "tuple": tuple,
    "dict": _decode_pairs,
}


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and TYPE_KEY in obj and VALUE_KEY in obj:
        type_name = obj[TYPE_KEY]
        decoder = _DECODERS.get(type_name) if isinstance(type_name, str) else None
        if decoder is not None:
            return decoder(obj[VALUE_KEY])
    return obj


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_decoder = json.JSONDecoder(object_hook=_object_hook)


class JSONSerializer(celeriac.Serializer):
    """JSON with kombu's type envelopes; tuples and binary data survive the round trip."""

    name: ClassVar[str] = "json"
    content_type: ClassVar[str] = "application/json"
    content_encoding: ClassVar[str] = "utf-8"
    trusted_by_default: ClassVar[bool] = True

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as UTF-8 JSON; ``TypeError`` names a type JSON cannot carry."""
        try:
            text = _encoder.encode(_encode(obj))
        except RecursionError:
            raise ValueError("cannot encode as JSON: circular reference or nesting too deep") from None
        return text.encode("utf-8")

    def loads(self, data: bytes) -> Any:
        """Decode UTF-8 JSON, turning type envelopes back into their types."""
        return _decoder.decode(str(data, "utf-8"))
