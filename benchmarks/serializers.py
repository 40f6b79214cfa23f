"""Encode + decode time and message size for every serializer and compression, side by side.

Usage::

    python benchmarks/serializers.py                       # every serializer x compression, 3 sizes
    python benchmarks/serializers.py --serializer json --compression zlib --compression none
    python benchmarks/serializers.py --size small --min-time 0.5 --no-table

Each scenario runs a task message's body through the app's codec exactly as ``apply_async``
and the worker do (serializer, then compressor — the threshold is 0, so every body is
compressed — then the message filters; decoding in reverse, with ``accept_content`` and the
decompression bound), for three payloads of task-like data (nested dicts of str, int, float,
bool, lists): ``small`` ~100 B, ``medium`` ~10 KB and ``large`` ~1 MB of JSON. Two more rows
per size show the cost of ``[celeriac.security]``: JSON + zlib signed, and signed + encrypted.

Prints one JSON object per scenario on stdout (machine-readable), then a table on stderr.
Fields: ``serializer``, ``compression``, ``security``, ``size`` (payload name), ``bytes`` (body
on the wire), ``ratio`` (bytes / uncompressed JSON bytes of the payload), ``encode_us`` and
``decode_us`` (median microseconds per message), ``total_us``, ``mb_per_s`` (payload MB,
measured as JSON bytes, encoded + decoded per second).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from celeriac import Celeriac, TaskMessage

SIZES = {"small": 100, "medium": 10_000, "large": 1_000_000}
SERIALIZERS = ["json", "msgpack", "pickle"]
COMPRESSIONS = ["none", "zlib", "gzip", "bz2", "lzma", "zstd"]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
SIGN_KEY = "benchmark-signing-key-" + "s" * 32
ENCRYPT_KEY = "benchmark-encryption-key-" + "e" * 32


def record(rng: random.Random, i: int) -> dict[str, Any]:
    """One task-like record, ~200 bytes of JSON."""
    return {
        "id": i,
        "user": f"user-{rng.randrange(10**6)}@example.com",
        "score": round(rng.random() * 100, 3),
        "active": rng.random() < 0.5,
        "tags": rng.sample(WORDS, 3),
        "note": " ".join(rng.choices(WORDS, k=rng.randrange(2, 8))),
        "counts": [rng.randrange(1000) for _ in range(4)],
    }


def payload(target: int) -> list[Any]:
    """Task arguments whose JSON is about ``target`` bytes."""
    rng = random.Random(target)
    if target <= 200:
        return [42, "hello", {"x": 1.5, "tags": ["a", "b"], "user": "user-1@example.com", "on": True, "n": 12345}]
    records: list[dict[str, Any]] = []
    size = 2
    while size < target:
        records.append(record(rng, len(records)))
        size += len(json.dumps(records[-1])) + 1
    return [records]


def median_seconds(action: Callable[[], Any], min_time: float, min_rounds: int) -> float:
    """Median wall time of ``action`` over at least ``min_rounds`` runs and ``min_time`` seconds."""
    for _ in range(2):  # warm up caches and lazy imports
        action()
    samples: list[float] = []
    deadline = time.perf_counter() + min_time
    while len(samples) < min_rounds or time.perf_counter() < deadline:
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def make_app(serializer: str, compression: str, security: str) -> Celeriac:
    settings: dict[str, Any] = {
        "serializer": serializer,
        "accept_content": [serializer],
        "compression": None if compression == "none" else compression,
        "compression_threshold": 0,
    }
    if security in ("sign", "sign+encrypt"):
        settings["security_sign_key"] = SIGN_KEY
    if security == "sign+encrypt":
        settings["security_encrypt_key"] = ENCRYPT_KEY
    return Celeriac("bench", environ={}, set_as_current=False, **settings)


def run(serializer: str, compression: str, security: str, size: str, min_time: float) -> dict[str, Any]:
    app = make_app(serializer, compression, security)
    codec = app.codec
    args = payload(SIZES[size])
    json_bytes = len(json.dumps(args, separators=(",", ":")))
    message = TaskMessage(id="00000000-0000-0000-0000-000000000000", task="bench.task", args=args)
    envelope, _ = codec.encode(message, serializer)
    assert codec.decode(envelope).args == args, f"{serializer}/{compression} did not round-trip"
    rounds = 3 if size == "large" else 20
    encode = median_seconds(lambda: codec.encode(message, serializer), min_time, rounds)
    decode = median_seconds(lambda: codec.decode(envelope), min_time, rounds)
    return {
        "benchmark": "serializers",
        "serializer": serializer,
        "compression": compression,
        "security": security,
        "size": size,
        "json_bytes": json_bytes,
        "bytes": len(envelope.body),
        "ratio": round(len(envelope.body) / json_bytes, 3),
        "encode_us": round(encode * 1e6, 1),
        "decode_us": round(decode * 1e6, 1),
        "total_us": round((encode + decode) * 1e6, 1),
        "mb_per_s": round(json_bytes / (encode + decode) / 1e6, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = f"{'size':<7} {'serializer':<10} {'compression':<11} {'security':<12} {'bytes':>9} {'ratio':>6} "
    header += f"{'encode µs':>10} {'decode µs':>10} {'total µs':>10} {'MB/s':>7}"
    lines = [header, "-" * len(header)]
    previous = None
    for row in rows:
        if previous is not None and row["size"] != previous:
            lines.append("")
        previous = row["size"]
        lines.append(
            f"{row['size']:<7} {row['serializer']:<10} {row['compression']:<11} {row['security']:<12} "
            f"{row['bytes']:>9} {row['ratio']:>6.3f} {row['encode_us']:>10.1f} {row['decode_us']:>10.1f} "
            f"{row['total_us']:>10.1f} {row['mb_per_s']:>7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serializer", action="append", choices=SERIALIZERS, help="repeatable; default: all")
    parser.add_argument("--compression", action="append", choices=COMPRESSIONS, help="repeatable; default: all")
    parser.add_argument("--size", action="append", choices=list(SIZES), help="repeatable; default: all")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds spent measuring each direction")
    parser.add_argument("--no-security", action="store_true", help="skip the signed / encrypted rows")
    parser.add_argument("--no-table", action="store_true", help="JSON lines only")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    environment = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    scenarios = [
        (serializer, compression, "none", size)
        for size in options.size or list(SIZES)
        for serializer in options.serializer or SERIALIZERS
        for compression in options.compression or COMPRESSIONS
    ]
    if not options.no_security:
        scenarios += [
            ("json", "zlib", security, size) for size in options.size or SIZES for security in ("sign", "sign+encrypt")
        ]
    scenarios.sort(key=lambda s: list(SIZES).index(s[3]))
    rows = []
    for serializer, compression, security, size in scenarios:
        row = run(serializer, compression, security, size, options.min_time)
        row["environment"] = environment
        rows.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    if not options.no_table:
        sys.stderr.write("\n" + table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
