"""Built-in serializers.

* ``json`` (``application/json``, utf-8) — the default. kombu's JSON dialect with type
  envelopes for datetimes, decimals, UUIDs, bytes and tuples
  (:mod:`celeriac.plugins.serializers._json`). Accepted by default.
* ``msgpack`` (``application/x-msgpack``, binary) — MessagePack with extension types for the
  same values (:mod:`celeriac.plugins.serializers._msgpack`). Registered only when the
  ``msgpack`` extra is installed, imported only when used; accepted by default.
* ``pickle`` (``application/x-python-serialize``, binary) — decoding a pickle runs code, so it
  is **never accepted unless** ``accept_content`` **names it**
  (:mod:`celeriac.plugins.serializers._pickle`).

Every serializer round-trips the same values (None, bool, int of any size, float including
``inf``/``-inf``/``nan``, str, bytes, list, tuple, dict, datetime/date/time with fixed UTC
offsets, Decimal, UUID), so switching ``serializer`` changes nothing else; pickle carries more.
A config that names ``msgpack`` without the library installed stops at start with a one-line
error saying which extra to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence

import celeriac
from celeriac.plugins.serializers._json import JSONSerializer
from celeriac.plugins.serializers._msgpack import MsgpackSerializer
from celeriac.plugins.serializers._pickle import PickleSerializer

__all__ = [
    "JSONSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "celeriac_configure",
    "celeriac_serializers",
    "msgpack_available",
]


def msgpack_available() -> bool:
    """True when the ``msgpack`` library can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("msgpack") is not None
    except (ImportError, ValueError):
        return False


@celeriac.hookimpl
def celeriac_serializers() -> Sequence[celeriac.Serializer]:
    """Register the built-in serializers whose libraries are installed."""
    found: list[celeriac.Serializer] = [JSONSerializer()]
    if msgpack_available():
        found.append(MsgpackSerializer())
    found.append(PickleSerializer())
    return found


@celeriac.hookimpl
def celeriac_configure(app: celeriac.Celeriac) -> None:
    """Stop at start, in one line, when the config names a serializer whose extra is missing."""
    if msgpack_available():
        return
    conf = app.conf
    named: list[tuple[str, Iterable[str]]] = [
        ("serializer", [conf.serializer]),
        ("result_serializer", [conf.result_serializer]),
        ("accept_content", conf.accept_content or []),
        ("result_accept_content", conf.result_accept_content or []),
    ]
    for setting, values in named:
        if any(value in ("msgpack", MsgpackSerializer.content_type) for value in values):
            raise celeriac.PluginError(
                f"{conf.origin(setting)}: {setting}: the msgpack serializer needs the 'msgpack' extra: "
                "pip install 'celeriac[msgpack]'"
            )
