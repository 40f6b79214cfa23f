"""Built-in compressors, selectable per app (``compression = "zlib"``) and per task
(``@app.task(compression=...)``, ``apply_async(compression=...)``).

The ``compression`` header carries the MIME type, as Celery/kombu put it on the wire:

======  =======================  ==========================================================
name    ``compression`` header   format
======  =======================  ==========================================================
zlib    ``application/x-gzip``   zlib (RFC 1950) — what kombu sends for ``zlib`` and ``gzip``
gzip    ``application/gzip``     real gzip (RFC 1952); celeriac only, kombu cannot read it
bz2     ``application/x-bz2``    bzip2, as kombu
lzma    ``application/x-lzma``   xz container, as kombu (``.lzma`` streams are read too)
zstd    ``application/zstd``     Zstandard frame, as kombu; needs the ``zstd`` extra
======  =======================  ==========================================================

Bodies smaller than ``compression_threshold`` bytes (default 1024) are sent uncompressed.
Every compressor decompresses with a bound (``message_max_size``), so a small message that
would inflate past it — a decompression bomb — is dead-lettered instead of filling memory.

``zstd`` is registered only when ``zstandard`` is installed; a config that names it without
the library stops at start with a one-line error saying which extra to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import celeriac
from celeriac.plugins.compression._stdlib import Bz2Compressor, GzipCompressor, LzmaCompressor, ZlibCompressor
from celeriac.plugins.compression._zstd import ZstdCompressor

__all__ = [
    "Bz2Compressor",
    "GzipCompressor",
    "LzmaCompressor",
    "ZlibCompressor",
    "ZstdCompressor",
    "celeriac_compressors",
    "celeriac_configure",
    "zstd_available",
]


def zstd_available() -> bool:
    """True when the ``zstandard`` library can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("zstandard") is not None
    except (ImportError, ValueError):
        return False


@celeriac.hookimpl
def celeriac_compressors() -> Sequence[celeriac.Compressor]:
    """Register the stdlib compressors, and zstd when its library is installed."""
    found: list[celeriac.Compressor] = [ZlibCompressor(), GzipCompressor(), Bz2Compressor(), LzmaCompressor()]
    if zstd_available():
        found.append(ZstdCompressor())
    return found


@celeriac.hookimpl
def celeriac_configure(app: celeriac.Celeriac) -> None:
    """Stop at start, in one line, when ``compression`` names zstd and its extra is missing."""
    if app.conf.compression in ("zstd", ZstdCompressor.content_type) and not zstd_available():
        raise celeriac.PluginError(
            f"{app.conf.origin('compression')}: compression: zstd compression needs the 'zstd' extra: "
            "pip install 'celeriac[zstd]'"
        )
