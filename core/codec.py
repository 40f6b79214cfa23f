"""The message codec: serializer, then compression, then message filters (signing, encryption).

Outgoing (``encode``)::

    TaskMessage ─► serializer ─► compressor (body ≥ compression_threshold) ─► filters in order

Incoming (``decode``) runs the same steps backwards, enforcing ``accept_content`` and
``message_max_size``; any failure is a :class:`~celeriac.DecodeError` or
:class:`~celeriac.ContentDisallowed` with a one-line reason, which the worker turns into a
dead-lettered message. Compressors and filters are plugins (``celeriac_compressors``,
``celeriac_message_filters``); the kernel ships none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from ._envelope import Envelope
from .exceptions import DecodeError, PluginError
from .message import TaskMessage, decode_task_message, encode_task_message
from .serialization import SerializerRegistry

__all__ = ["Compressor", "MessageCodec", "MessageFilter"]


class Compressor(ABC):
    """Compresses message bodies. Registered by the ``celeriac_compressors`` hook."""

    #: Name used in config and ``apply_async(compression=...)`` (``zlib``).
    name: ClassVar[str]
    #: Value of the ``compression`` header on the wire (Celery uses MIME types:
    #: ``application/x-gzip`` for zlib, ``application/x-bz2``, ...).
    content_type: ClassVar[str]

    @abstractmethod
    def compress(self, data: bytes) -> bytes:
        """Compress ``data``."""

    @abstractmethod
    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Decompress ``data``; raise ``ValueError`` if the result would exceed ``max_size``."""


class MessageFilter(ABC):
    """Transforms or checks every task message an app sends and receives (signing, encryption).

    Returned by the ``celeriac_message_filters`` hook for a configured app. Outgoing filters run
    in order after serialization and compression; incoming ones run in reverse order before
    decompression. ``incoming`` raises :class:`~celeriac.DecodeError` to reject a message
    (it is dead-lettered with that reason).
    """

    name: ClassVar[str]

    @abstractmethod
    def outgoing(self, envelope: Envelope) -> Envelope:
        """Return the envelope to publish (may be the same object, changed)."""

    @abstractmethod
    def incoming(self, envelope: Envelope) -> Envelope:
        """Return the envelope to decode, or raise :class:`~celeriac.DecodeError`."""


class MessageCodec:
    """Encodes and decodes task messages for one app."""

    def __init__(
        self,
        serializers: SerializerRegistry,
        compressors: Iterable[Compressor],
        filters: Sequence[MessageFilter],
        *,
        accept: frozenset[str],
        compression: str | None = None,
        compression_threshold: int = 0,
        max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.serializers = serializers
        self._by_name: dict[str, Compressor] = {}
        self._by_type: dict[str, Compressor] = {}
        for compressor in compressors:
            self._by_name.setdefault(compressor.name, compressor)
            self._by_type.setdefault(compressor.content_type, compressor)
        self.filters = list(filters)
        self.accept = accept
        self.compression = compression
        self.compression_threshold = compression_threshold
        self.max_size = max_size
        if compression is not None:
            self.compressor(compression)

    @property
    def compressor_names(self) -> list[str]:
        return sorted(self._by_name)

    def compressor(self, name: str) -> Compressor:
        found = self._by_name.get(name) or self._by_type.get(name)
        if found is None:
            raise PluginError(f"unknown compression {name!r}; installed: {', '.join(self.compressor_names) or 'none'}")
        return found

    def encode(
        self, message: TaskMessage, serializer: str, compression: str | None = None, *, filters: bool = True
    ) -> tuple[Envelope, tuple[Any, ...]]:
        """The envelope to publish for ``message`` and its body tuple (for signals).

        With ``filters=False`` the message filters are left out; call :meth:`apply_filters`
        last (``send_task`` runs the ``before_task_publish`` signal in between)."""
        envelope, body = encode_task_message(message, self.serializers, serializer)
        envelope.headers.pop("compression", None)  # a stale header copied from another message
        name = compression or self.compression
        if name is not None:
            compressor = self.compressor(name)
            if len(envelope.body) >= self.compression_threshold:
                envelope.body = compressor.compress(envelope.body)
                envelope.headers["compression"] = compressor.content_type
        return (self.apply_filters(envelope) if filters else envelope), body

    def apply_filters(self, envelope: Envelope) -> Envelope:
        """Run the outgoing message filters (signing, encryption) in order."""
        for message_filter in self.filters:
            envelope = message_filter.outgoing(envelope)
        return envelope

    def decode(self, envelope: Envelope) -> TaskMessage:
        """The task message in ``envelope``, or a one-line DecodeError / ContentDisallowed."""
        if not isinstance(envelope.headers, dict):
            raise DecodeError(f"message headers must be a mapping, got {type(envelope.headers).__name__}")
        if len(envelope.body) > self.max_size:
            raise DecodeError(f"message body of {len(envelope.body)} bytes exceeds message_max_size={self.max_size}")
        for message_filter in reversed(self.filters):
            envelope = message_filter.incoming(envelope)
        compression = envelope.headers.get("compression")
        if compression is not None:
            compressor = self._by_type.get(compression) if isinstance(compression, str) else None
            if compressor is None:
                raise DecodeError(f"message compressed with {compression!r}, which no installed plugin decompresses")
            try:
                body = compressor.decompress(envelope.body, self.max_size)
            except Exception as exc:
                raise DecodeError(f"cannot decompress {compression} body: {exc}") from exc
            headers = {key: value for key, value in envelope.headers.items() if key != "compression"}
            envelope = Envelope(body, envelope.content_type, envelope.content_encoding, headers, envelope.properties)
        return decode_task_message(envelope, self.serializers, self.accept)
