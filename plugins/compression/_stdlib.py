"""Compressors from the standard library, each with bounded decompression.

``decompress(data, max_size)`` never holds more than ``max_size + 1`` bytes of output: it
inflates incrementally and raises ``ValueError`` as soon as the output would pass
``max_size`` (a decompression bomb: a few KB that inflate to gigabytes), and also for a
truncated stream or bytes after its end.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import celeriac

__all__ = [
    "LZMA_MEMORY_LIMIT",
    "Bz2Compressor",
    "GzipCompressor",
    "LzmaCompressor",
    "ZlibCompressor",
    "exceeds",
    "inflate",
]

#: lzma decoders may not use more memory than this (an xz header can ask for 4 GiB of dictionary).
LZMA_MEMORY_LIMIT = 256 * 1024 * 1024


def exceeds(max_size: int) -> ValueError:
    """The error every compressor raises for output past ``max_size``."""
    return ValueError(f"decompressed size exceeds {max_size} bytes")


def inflate(
    data: bytes,
    max_size: int,
    new: Callable[[], Any],
    step: Callable[[Any, bytes, int], bytes],
    *,
    multi: bool,
) -> bytes:
    """Decompress ``data`` with decompressor objects from ``new``, at most ``max_size`` bytes.

    ``step(decompressor, data, limit)`` returns up to ``limit`` bytes of output and keeps the
    input it did not consume for the next call, made with ``b""``; the decompressor has
    ``eof`` and ``unused_data`` like those of ``zlib``, ``bz2`` and ``lzma``. With ``multi``,
    concatenated streams (gzip members, bz2 and xz streams) are read one after the other.
    """
    out: list[bytes] = []
    size = 0
    pending = data
    while True:
        decompressor = new()
        chunk = step(decompressor, pending, max_size - size + 1)
        while True:
            size += len(chunk)
            if size > max_size:
                raise exceeds(max_size)
            out.append(chunk)
            if decompressor.eof:
                break
            chunk = step(decompressor, b"", max_size - size + 1)
            if not chunk and not decompressor.eof:
                raise ValueError("compressed data is truncated")
        pending = decompressor.unused_data
        if not pending:
            return b"".join(out)
        if not multi:
            raise ValueError(f"{len(pending)} bytes of garbage after the compressed data")


def _zlib_step(decompressor: Any, data: bytes, limit: int) -> bytes:
    # zlib hands input it did not get to back as ``unconsumed_tail``
    result: bytes = decompressor.decompress(data or decompressor.unconsumed_tail, limit)
    return result


def _stream_step(decompressor: Any, data: bytes, limit: int) -> bytes:
    # bz2 and lzma keep unconsumed input inside; ``needs_input`` says they have none left
    if not data and decompressor.needs_input:
        return b""
    result: bytes = decompressor.decompress(data, limit)
    return result


class ZlibCompressor(celeriac.Compressor):
    """zlib format (RFC 1950), level 6 — byte for byte what kombu's ``zlib`` compression sends.

    The header value is Celery's ``application/x-gzip``, which kombu uses for zlib (and for
    its ``gzip`` alias, which is zlib too), so Celery peers read it and we read theirs.
    """

    name: ClassVar[str] = "zlib"
    content_type: ClassVar[str] = "application/x-gzip"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return inflate(data, max_size, zlib.decompressobj, _zlib_step, multi=False)


class GzipCompressor(celeriac.Compressor):
    """Real gzip format (RFC 1952, what ``gzip``/``zcat`` read), header ``application/gzip``.

    ``application/gzip`` is gzip's registered MIME type (RFC 6713); it is deliberately not
    ``application/x-gzip``, which Celery uses for *zlib*. kombu does not know it, so use
    ``zlib`` when Celery peers must read the messages. Output has no timestamp (``mtime=0``)
    so the same body always compresses to the same bytes. Concatenated members are read.
    """

    name: ClassVar[str] = "gzip"
    content_type: ClassVar[str] = "application/gzip"

    def compress(self, data: bytes) -> bytes:
        return gzip.compress(data, mtime=0)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return inflate(data, max_size, lambda: zlib.decompressobj(wbits=31), _zlib_step, multi=True)


class Bz2Compressor(celeriac.Compressor):
    """bzip2 (level 9), header ``application/x-bz2`` as in kombu. Concatenated streams are read."""

    name: ClassVar[str] = "bz2"
    content_type: ClassVar[str] = "application/x-bz2"

    def compress(self, data: bytes) -> bytes:
        return bz2.compress(data)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return inflate(data, max_size, bz2.BZ2Decompressor, _stream_step, multi=True)


class LzmaCompressor(celeriac.Compressor):
    """xz container, preset 6 (``lzma.compress``, as kombu sends), header ``application/x-lzma``.

    Reads xz and legacy ``.lzma`` streams; a decoder may use at most 256 MiB of memory, so a
    header asking for a huge dictionary is refused instead of allocated.
    """

    name: ClassVar[str] = "lzma"
    content_type: ClassVar[str] = "application/x-lzma"

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(data)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return inflate(
            data,
            max_size,
            lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=LZMA_MEMORY_LIMIT),
            _stream_step,
            multi=True,
        )
