"""Serializers and the registry that enforces ``accept_content``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

from .exceptions import ContentDisallowed, DecodeError, PluginError

__all__ = ["Serializer", "SerializerRegistry"]


class Serializer(ABC):
    """Turns Python data into bytes and back. Registered by the ``celeriac_serializers`` hook."""

    #: Short name used in config (``serializer = "json"``).
    name: ClassVar[str]
    #: MIME type on the wire (``application/json``).
    content_type: ClassVar[str]
    #: ``utf-8`` for text formats, ``binary`` otherwise.
    content_encoding: ClassVar[str] = "binary"
    #: Accepted without being named in ``accept_content`` (false for pickle: it runs code).
    trusted_by_default: ClassVar[bool] = True

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raises ``TypeError``/``ValueError`` for data it cannot encode."""

    @abstractmethod
    def loads(self, data: bytes) -> Any:
        """Decode ``data``; raises any exception on malformed input (the registry wraps it)."""


class SerializerRegistry:
    """The serializers of one app, looked up by name or content type."""

    def __init__(self, serializers: Iterable[Serializer]) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_type: dict[str, Serializer] = {}
        for serializer in serializers:
            self._by_name.setdefault(serializer.name, serializer)
            self._by_type.setdefault(serializer.content_type, serializer)

    @property
    def names(self) -> list[str]:
        """Names of every installed serializer, sorted."""
        return sorted(self._by_name)

    def get(self, name_or_type: str) -> Serializer:
        """The serializer called ``name_or_type`` or with that content type."""
        found = self._by_name.get(name_or_type) or self._by_type.get(name_or_type)
        if found is None:
            raise PluginError(f"unknown serializer {name_or_type!r}; installed: {', '.join(self.names) or 'none'}")
        return found

    def default_accept(self) -> frozenset[str]:
        """Content types accepted when ``accept_content`` is not set: every trusted serializer."""
        return frozenset(s.content_type for s in self._by_name.values() if s.trusted_by_default)

    def resolve_accept(self, accept: Iterable[str] | None) -> frozenset[str]:
        """Turn a list of names or content types into the set of accepted content types."""
        if accept is None:
            return self.default_accept()
        return frozenset(self.get(item).content_type for item in accept)

    def dumps(self, obj: Any, name: str) -> tuple[bytes, str, str]:
        """Encode ``obj`` with serializer ``name``: ``(data, content_type, content_encoding)``."""
        serializer = self.get(name)
        return serializer.dumps(obj), serializer.content_type, serializer.content_encoding

    def loads(self, data: bytes, content_type: str, accept: frozenset[str], *, setting: str = "accept_content") -> Any:
        """Decode ``data`` if ``content_type`` is accepted.

        Raises :class:`~celeriac.ContentDisallowed` naming the type and ``setting`` when it is
        not, and :class:`~celeriac.DecodeError` when the bytes are malformed.
        """
        if content_type not in accept:
            raise ContentDisallowed(f"content type {content_type!r} is not accepted; add it to {setting} to allow it")
        serializer = self._by_type.get(content_type)
        if serializer is None:
            raise ContentDisallowed(f"no serializer installed for content type {content_type!r}")
        try:
            return serializer.loads(data)
        except Exception as exc:
            raise DecodeError(f"cannot decode {content_type} body: {exc}") from exc
