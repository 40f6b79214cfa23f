"""``zstd`` — Zstandard (extra ``zstd``, the ``zstandard`` library), header ``application/zstd``.

Level 3 with the content size in the frame header, as kombu's ``zstd`` compression writes it.
Decompression is bounded: a frame that declares a content size over the limit is refused
before anything is allocated, and one without a declared size may fill at most the limit.
One frame per message (what kombu sends); bytes after it are refused. The decoder's window is
limited to 128 MiB of memory.
"""

from __future__ import annotations

from typing import Any, ClassVar

import celeriac
from celeriac.plugins.compression._stdlib import exceeds

__all__ = ["ZstdCompressor"]

_READ_SIZE = 1 << 17
_MAX_WINDOW = 1 << 27


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # registered only when installed; this guards a removed install
        raise celeriac.PluginError("zstd compression needs the 'zstd' extra: pip install 'celeriac[zstd]'") from exc
    return zstandard


class ZstdCompressor(celeriac.Compressor):
    """Zstandard, level 3."""

    name: ClassVar[str] = "zstd"
    content_type: ClassVar[str] = "application/zstd"

    def __init__(self) -> None:
        self._module: Any = None

    @property
    def _lib(self) -> Any:
        if self._module is None:
            self._module = _zstandard()
        return self._module

    def compress(self, data: bytes) -> bytes:
        # compressor objects are not thread-safe; a new one per call costs microseconds
        result: bytes = self._lib.ZstdCompressor(level=3).compress(data)
        return result

    def decompress(self, data: bytes, max_size: int) -> bytes:
        lib = self._lib
        declared = lib.frame_content_size(data)  # -1 when the frame does not say
        if declared > max_size:
            raise exceeds(max_size)
        decompressor = lib.ZstdDecompressor(max_window_size=_MAX_WINDOW)
        try:
            # one frame (what we and kombu write), output bounded by the declared size or max_size
            result: bytes = decompressor.decompress(data, max_output_size=max_size, allow_extra_data=False)
        except lib.ZstdError:
            if declared < 0 and self._longer_than(decompressor, data, max_size):
                raise exceeds(max_size) from None
            raise
        return result

    @staticmethod
    def _longer_than(decompressor: Any, data: bytes, max_size: int) -> bool:
        """Tell a frame too big for ``max_size`` from a broken one, reading at most max_size + 1 bytes."""
        reader = decompressor.stream_reader(data)
        size = 0
        while size <= max_size:
            chunk: bytes = reader.read(min(_READ_SIZE, max_size - size + 1))
            if not chunk:
                return False
            size += len(chunk)
        return True
