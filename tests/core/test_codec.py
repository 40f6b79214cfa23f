"""The message codec: compression and message filters as plugins (test-only implementations)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from celeriac import (
    Celeriac,
    Compressor,
    DecodeError,
    Envelope,
    MessageFilter,
    PluginError,
    TaskMessage,
    hookimpl,
)
from celeriac.testing import start_worker, wait_for


class ZlibForTests(Compressor):
    name = "testzlib"
    content_type = "application/x-test-zlib"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, max_size + 1)
        if len(out) > max_size:
            raise ValueError(f"decompressed size exceeds {max_size} bytes")
        return out


class Stamp(MessageFilter):
    """Adds a header on the way out and insists on it on the way in."""

    name = "stamp"

    def outgoing(self, envelope: Envelope) -> Envelope:
        envelope.headers["x-stamp"] = "ok"
        return envelope

    def incoming(self, envelope: Envelope) -> Envelope:
        if envelope.headers.get("x-stamp") != "ok":
            raise DecodeError("message is not stamped")
        return envelope


class CodecPlugin:
    @hookimpl
    def celeriac_compressors(self) -> list[Compressor]:
        return [ZlibForTests()]

    @hookimpl
    def celeriac_message_filters(self, app: Celeriac) -> list[MessageFilter]:
        return [Stamp()] if app.conf.task_default_queue == "stamped" else []


@pytest.fixture
def codec_app(app: Celeriac) -> Celeriac:
    app.register_plugin(CodecPlugin(), "codec-plugin")
    return app


def test_compression_over_the_threshold_sets_the_celery_header(codec_app: Celeriac) -> None:
    codec_app.conf.update({"compression_threshold": 100})
    codec = codec_app.codec
    small, _ = codec.encode(TaskMessage(id="1", task="t", args=["x"]), "json", "testzlib")
    big, _ = codec.encode(TaskMessage(id="2", task="t", args=["x" * 1000]), "json", "testzlib")
    assert "compression" not in small.headers
    assert big.headers["compression"] == "application/x-test-zlib"
    assert len(big.body) < 200
    assert codec.decode(big).args == ["x" * 1000]


def test_unknown_compression_lists_installed(codec_app: Celeriac) -> None:
    with pytest.raises(PluginError, match="unknown compression 'lz4'; installed: .*testzlib"):
        codec_app.codec.encode(TaskMessage(id="1", task="t"), "json", "lz4")
    envelope = Envelope(b"xx", "application/json", headers={"task": "t", "id": "1", "compression": "application/x-lz4"})
    with pytest.raises(DecodeError, match="compressed with 'application/x-lz4'"):
        codec_app.codec.decode(envelope)


def test_oversized_and_bomb_messages_are_rejected(codec_app: Celeriac) -> None:
    codec_app.conf.update({"message_max_size": 10_000, "compression_threshold": 0})
    bomb, _ = codec_app.codec.encode(TaskMessage(id="1", task="t", args=["a" * 50_000]), "json", "testzlib")
    assert len(bomb.body) < 10_000
    with pytest.raises(DecodeError, match="cannot decompress.*exceeds 10000"):
        codec_app.codec.decode(bomb)
    huge = Envelope(b"0" * 20_000, "application/json", headers={"task": "t", "id": "1"})
    with pytest.raises(DecodeError, match="exceeds message_max_size=10000"):
        codec_app.codec.decode(huge)


def test_filters_run_on_both_sides_and_reject_through_the_worker(codec_app: Celeriac) -> None:
    codec_app.conf.update({"task_default_queue": "stamped"})
    rejected: list[str] = []
    codec_app.on("task_rejected")(lambda exc: rejected.append(str(exc)))

    @codec_app.task(compression="testzlib")
    def echo(value: Any) -> Any:
        return value

    unstamped = Envelope(b'[["x"], {}, null]', "application/json", headers={"task": echo.name, "id": "u1"})
    codec_app.transport.publish(unstamped, "stamped")
    with start_worker(codec_app, pool="solo"):
        assert echo.delay("y" * 5000).get(timeout=10) == "y" * 5000
        wait_for(lambda: rejected == ["message is not stamped"])
    assert codec_app.transport.queue_length("stamped.dead-letter") == 1
