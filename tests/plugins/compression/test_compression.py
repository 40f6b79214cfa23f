"""Compressors: formats and MIME types as kombu uses them, bounded decompression, the plugin."""

from __future__ import annotations

import bz2
import gzip
import lzma
import sys
import uuid
import zlib
from functools import cache
from typing import Any

import celeriac
import pytest
import zstandard
from celeriac import Celeriac, TaskMessage
from celeriac.plugins import compression
from celeriac.plugins.compression import (
    Bz2Compressor,
    GzipCompressor,
    LzmaCompressor,
    ZlibCompressor,
    ZstdCompressor,
)
from celeriac.testing import start_worker, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(60)

COMPRESSORS: list[celeriac.Compressor] = [
    ZlibCompressor(),
    GzipCompressor(),
    Bz2Compressor(),
    LzmaCompressor(),
    ZstdCompressor(),
]
BY_NAME = {c.name: c for c in COMPRESSORS}
ids = [c.name for c in COMPRESSORS]
MIB = 1024 * 1024


@cache
def bomb(name: str) -> bytes:
    """32 MiB of zeros, compressed (a few KB at most)."""
    return BY_NAME[name].compress(bytes(32 * MIB))


# -- formats ----------------------------------------------------------------------------------


def test_mime_types_are_celerys() -> None:
    assert {c.name: c.content_type for c in COMPRESSORS} == {
        "zlib": "application/x-gzip",
        "gzip": "application/gzip",
        "bz2": "application/x-bz2",
        "lzma": "application/x-lzma",
        "zstd": "application/zstd",
    }


@settings(deadline=None, max_examples=50)
@given(st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode))
@pytest.mark.parametrize("compressor", COMPRESSORS, ids=ids)
def test_round_trip(compressor: celeriac.Compressor, data: bytes) -> None:
    packed = compressor.compress(data)
    assert compressor.decompress(packed, len(data)) == data


SAMPLE = b"celeriac " * 1000 + bytes(range(256))


def test_zlib_is_byte_for_byte_what_kombu_sends() -> None:
    # kombu: register(zlib.compress, zlib.decompress, "application/x-gzip", aliases=["gzip", "zlib"])
    assert ZlibCompressor().compress(SAMPLE) == zlib.compress(SAMPLE)
    assert ZlibCompressor().decompress(zlib.compress(SAMPLE, 9), len(SAMPLE)) == SAMPLE


def test_gzip_is_the_real_gzip_format_and_deterministic() -> None:
    packed = GzipCompressor().compress(SAMPLE)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == SAMPLE
    assert packed == GzipCompressor().compress(SAMPLE)  # no timestamp inside
    assert GzipCompressor().decompress(gzip.compress(SAMPLE), len(SAMPLE)) == SAMPLE
    two_members = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert GzipCompressor().decompress(two_members, 4) == b"abcd"


def test_bz2_and_lzma_match_kombus_functions() -> None:
    # kombu: bz2.compress / bz2.decompress and lzma.compress / lzma.decompress (xz container)
    assert bz2.decompress(Bz2Compressor().compress(SAMPLE)) == SAMPLE
    assert Bz2Compressor().decompress(bz2.compress(b"ab") + bz2.compress(b"cd"), 4) == b"abcd"
    packed = LzmaCompressor().compress(SAMPLE)
    assert packed[:6] == b"\xfd7zXZ\x00"
    assert lzma.decompress(packed) == SAMPLE
    legacy = lzma.compress(SAMPLE, format=lzma.FORMAT_ALONE)
    assert LzmaCompressor().decompress(legacy, len(SAMPLE)) == SAMPLE


def test_zstd_matches_kombus_and_reads_frames_without_a_size() -> None:
    packed = ZstdCompressor().compress(SAMPLE)
    assert zstandard.ZstdDecompressor().decompress(packed) == SAMPLE
    assert zstandard.frame_content_size(packed) == len(SAMPLE)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(SAMPLE)
    assert zstandard.frame_content_size(unsized) == -1
    assert ZstdCompressor().decompress(unsized, len(SAMPLE)) == SAMPLE


# -- bounded decompression --------------------------------------------------------------------


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=ids)
def test_exactly_max_size_is_allowed_one_more_byte_is_not(compressor: celeriac.Compressor) -> None:
    packed = compressor.compress(SAMPLE)
    assert compressor.decompress(packed, len(SAMPLE)) == SAMPLE
    with pytest.raises(ValueError, match=f"decompressed size exceeds {len(SAMPLE) - 1} bytes"):
        compressor.decompress(packed, len(SAMPLE) - 1)


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=ids)
def test_a_bomb_is_refused_without_inflating_it(compressor: celeriac.Compressor) -> None:
    packed = bomb(compressor.name)
    assert len(packed) < 64 * 1024
    with pytest.raises(ValueError, match=f"decompressed size exceeds {MIB} bytes"):
        compressor.decompress(packed, MIB)


def test_a_zstd_frame_that_declares_a_huge_size_is_refused_before_allocating() -> None:
    packed = zstandard.ZstdCompressor().compress(bytes(8 * MIB))
    assert zstandard.frame_content_size(packed) == 8 * MIB
    with pytest.raises(ValueError, match="exceeds 1000 bytes"):
        ZstdCompressor().decompress(packed, 1000)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8 * MIB))
    with pytest.raises(ValueError, match="exceeds 1000 bytes"):
        ZstdCompressor().decompress(unsized, 1000)


def test_lzma_refuses_streams_that_need_too_much_memory() -> None:
    # a .lzma header that asks for a 2 GiB dictionary: the decoder would allocate it first
    small = lzma.compress(b"x" * 100, format=lzma.FORMAT_ALONE)
    greedy = small[:1] + (2048 * MIB).to_bytes(4, "little") + small[5:]
    assert lzma.LZMADecompressor().decompress(greedy) == b"x" * 100  # valid, just greedy
    with pytest.raises(lzma.LZMAError, match="[Mm]emory"):
        LzmaCompressor().decompress(greedy, MIB)


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=ids)
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-4], id="truncated-end"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b + b"garbage", id="trailing-garbage"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\x00" * 32, id="zeros"),
        pytest.param(lambda b: bytes(reversed(b)), id="reversed"),
    ],
)
def test_damaged_input_raises(compressor: celeriac.Compressor, damage: Any) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - each library raises its own type
        compressor.decompress(damage(compressor.compress(SAMPLE)), 10 * MIB)
    assert str(info.value)


# -- the plugin and the codec -----------------------------------------------------------------


def test_plugin_registers_all_five() -> None:
    assert [c.name for c in compression.celeriac_compressors()] == ["zlib", "gzip", "bz2", "lzma", "zstd"]


def test_without_zstandard_zstd_is_not_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    assert not compression.zstd_available()
    assert [c.name for c in compression.celeriac_compressors()] == ["zlib", "gzip", "bz2", "lzma"]


@pytest.mark.parametrize("value", ["zstd", "application/zstd"])
def test_a_config_naming_zstd_without_the_library_says_which_extra(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(celeriac.PluginError, match=r"compression: .*pip install 'celeriac\[zstd\]'$"):
        Celeriac("tests", environ={"CELERIAC_COMPRESSION": value})


def test_zstandard_is_imported_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "zstandard", raising=False)
    app = Celeriac("tests", environ={}, set_as_current=False)
    app.codec.encode(TaskMessage(id="1", task="t", args=["x" * 2000]), "json", "zlib")
    assert "zstandard" not in sys.modules
    app.codec.encode(TaskMessage(id="1", task="t", args=["x" * 2000]), "json", "zstd")
    assert "zstandard" in sys.modules


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=ids)
def test_codec_sets_the_header_above_the_threshold_only(app: Celeriac, compressor: celeriac.Compressor) -> None:
    app.conf.update({"compression_threshold": 500})
    small, _ = app.codec.encode(TaskMessage(id="1", task="t", args=["x" * 10]), "json", compressor.name)
    big, _ = app.codec.encode(TaskMessage(id="2", task="t", args=["x" * 5000]), "json", compressor.name)
    assert "compression" not in small.headers
    assert big.headers["compression"] == compressor.content_type
    assert len(big.body) < 1000
    assert app.codec.decode(big).args == ["x" * 5000]
    assert app.codec.decode(small).args == ["x" * 10]


def test_compression_per_app_per_task_and_per_call_through_a_worker() -> None:
    name = uuid.uuid4().hex
    app = Celeriac(
        "tests",
        broker_url=f"memory://{name}",
        result_store=f"memory://{name}",
        environ={},
        compression="bz2",
        compression_threshold=100,
    )
    seen: list[str | None] = []
    app.on("after_task_publish")(lambda headers: seen.append(headers.get("compression")))

    @app.task(name="t.app_level")
    def app_level(value: str) -> int:
        return len(value)

    @app.task(name="t.task_level", compression="zstd")
    def task_level(value: str) -> int:
        return len(value)

    with start_worker(app, pool="threads", concurrency=2):
        assert app_level.delay("a" * 1000).get(timeout=10) == 1000
        assert task_level.delay("b" * 1000).get(timeout=10) == 1000
        assert task_level.apply_async(("c" * 1000,), compression="gzip").get(timeout=10) == 1000
        assert app_level.delay("short").get(timeout=10) == 5
    assert seen == ["application/x-bz2", "application/zstd", "application/gzip", None]
    app.close()


def test_a_retry_sent_without_compression_is_not_marked_compressed(app: Celeriac) -> None:
    app.conf.update({"compression_threshold": 0})
    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))

    @app.task(name="t.flaky", bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: celeriac.Task[..., Any], value: str) -> str:
        if self.request.retries == 0:
            raise self.retry()
        return value

    with start_worker(app, pool="threads"):
        result = flaky.apply_async(("x",), compression="zlib")  # the retry is sent without
        wait_for(lambda: rejected or result.state == "SUCCESS", timeout=10)
    assert rejected == []
    assert result.get(timeout=1) == "x"
