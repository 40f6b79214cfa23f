"""The decode path under attack: random bytes, truncated payloads, wrong content types and
encodings, wrong compression headers, oversized messages and decompression bombs.

* Through a real worker: every bad message is dead-lettered with a reason, the worker never
  stops, and every good message around them is processed.
* Straight at the codec, with hypothesis: decoding either gives a task message or raises
  ``DecodeError``/``ContentDisallowed`` — never anything else.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

import celeriac
import msgpack
import pytest
from celeriac import Celeriac, ContentDisallowed, DecodeError, Envelope, TaskMessage
from celeriac.testing import start_worker, wait_for
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

MAX_SIZE = 256 * 1024
COMPRESSIONS = ["zlib", "gzip", "bz2", "lzma", "zstd"]
SIGN_KEY = "fuzz-signing-key-" + "s" * 32
ENCRYPT_KEY = "fuzz-encryption-key-" + "e" * 32


def make_app(name: str | None = None, **settings_: Any) -> Celeriac:
    name = name or uuid.uuid4().hex
    return Celeriac(
        "tests",
        broker_url=f"memory://{name}",
        result_store=f"memory://{name}",
        environ={},
        set_as_current=False,
        accept_content=["json", "msgpack"],
        message_max_size=MAX_SIZE,
        compression_threshold=0,
        **settings_,
    )


@cache
def bomb(compression: str) -> bytes:
    """A body that inflates to 64 times message_max_size."""
    app = make_app()
    return app.codec.compressor(compression).compress(bytes(64 * MAX_SIZE))


# -- bad messages, each with the reason the worker must give ----------------------------------

Bad = tuple[Envelope, str]  # the envelope and a regex its dead-letter reason must match


def good_envelope(app: Celeriac, i: int, serializer: str = "json", compression: str | None = None) -> Envelope:
    message = TaskMessage(id=f"src-{i}", task="t.add", args=[i, 1])
    return app.codec.encode(message, serializer, compression)[0]


def bad_messages(app: Celeriac, rng: random.Random) -> list[Bad]:
    def headers(**extra: Any) -> dict[str, Any]:
        return {"task": "t.add", "id": f"bad-{uuid.uuid4().hex}", **extra}

    def truncated(serializer: str, compression: str | None) -> Envelope:
        envelope = good_envelope(app, 0, serializer, compression)
        envelope.body = envelope.body[: rng.randrange(len(envelope.body))]
        envelope.headers["id"] = f"bad-{uuid.uuid4().hex}"
        return envelope

    zlib_body = good_envelope(app, 0, "json", "zlib").body
    bad: list[Bad] = []
    for _ in range(3):
        bad += [
            (Envelope(rng.randbytes(rng.randrange(8, 300)), "application/json", headers=headers()), "cannot decode"),
            (
                Envelope(rng.randbytes(rng.randrange(8, 300)), "application/x-msgpack", "binary", headers()),
                "cannot decode|must be",
            ),
        ]
    bad += [(truncated(s, None), "cannot decode|must be") for s in ("json", "msgpack")]
    bad += [(truncated("json", c), "cannot decompress") for c in COMPRESSIONS]
    bad += [
        (Envelope(b"[[1,1],{},null]", "text/plain", headers=headers()), "'text/plain' is not accepted"),
        (Envelope(b"[[1,1],{},null]", "application/x-yaml", headers=headers()), "not accepted"),
        (Envelope(b"\x80\x04K\x01.", "application/x-python-serialize", "binary", headers()), "accept_content"),
        (Envelope(b"[[1,1],{},null]", "", headers=headers()), "not accepted"),
        (
            Envelope('[["é"],{},null]'.encode("utf-16"), "application/json", "utf-16", headers()),
            "cannot decode application/json",
        ),
        (
            Envelope('[["é"],{},null]'.encode("latin-1"), "application/json", "utf-8", headers()),
            "cannot decode application/json",
        ),
        (
            Envelope(b"[[1,1],{},null]", "application/json", headers=headers(compression="application/x-gzip")),
            "cannot decompress",
        ),
        (
            Envelope(zlib_body, "application/json", headers=headers(compression="application/x-bz2")),
            "cannot decompress",
        ),
        (
            Envelope(zlib_body, "application/json", headers=headers(compression="application/x-brotli")),
            "no installed plugin",
        ),
        (Envelope(zlib_body, "application/json", headers=headers(compression=7)), "no installed plugin"),
        (Envelope(b"[" + b"1," * MAX_SIZE + b"1]", "application/json", headers=headers()), "exceeds message_max_size"),
        (Envelope(b"[[1,1],{}]", "application/json", headers=headers()), "must be \\[args, kwargs, embed\\]"),
        (Envelope(b'{"args":[1]}', "application/json", headers=headers()), "must be \\[args, kwargs, embed\\]"),
        (Envelope(msgpack.packb([[1], [], None]), "application/x-msgpack", "binary", headers()), "kwargs"),
        (Envelope(b"[[1,1],{},null]", "application/json", headers={"id": "bad-no-task"}), "no 'task' header"),
        (Envelope(b"[[1,1],{},null]", "application/json", headers={"task": "t.add"}), "no 'id' header"),
        (Envelope(b"[[1,1],{},null]", "application/json", headers=headers(retries="many")), "retries"),
        (Envelope(b"[[1,1],{},null]", "application/json", headers=headers(eta="tomorrow")), "ISO-8601"),
        (Envelope(b"[[1,1],{},null]", "application/json", headers=headers(task="t.nope")), "not registered"),
    ]
    for compression in COMPRESSIONS:
        bad.append(
            (
                Envelope(bomb(compression), "application/json", headers=headers(compression=_mime(app, compression))),
                f"cannot decompress .*exceeds {MAX_SIZE} bytes",
            )
        )
    return bad


def _mime(app: Celeriac, compression: str) -> str:
    return app.codec.compressor(compression).content_type


def test_a_worker_dead_letters_every_bad_message_and_processes_every_good_one() -> None:
    app = make_app()
    app.task(name="t.add")(lambda x, y: x + y)
    rng = random.Random(20240607)
    reasons: dict[str, str] = {}
    app.on("task_rejected")(lambda message, exc: reasons.__setitem__(message.headers.get("x-fuzz"), str(exc)))
    app.on("task_unknown")(lambda message, exc: reasons.__setitem__(message.headers.get("x-fuzz"), str(exc)))

    bad = bad_messages(app, rng)
    rng.shuffle(bad)
    expected: dict[str, str] = {}
    results = []
    serializers_ = ["json", "msgpack"]
    compressions: list[str | None] = [None, *COMPRESSIONS]
    for i, (envelope, reason) in enumerate(bad):
        for j in range(3):  # good messages around every bad one, in every serializer and compression
            n = 3 * i + j
            results.append(
                app.send_task("t.add", [n, 1], serializer=serializers_[n % 2], compression=compressions[n % 6])
            )
        tag = f"bad-{i}"
        envelope.headers["x-fuzz"] = tag
        expected[tag] = reason
        app.transport.publish(envelope, "default")
    results.append(app.send_task("t.add", [-1, 1]))  # still alive after the last bad one

    with start_worker(app, pool="threads", concurrency=4):
        values = [result.get(timeout=30) for result in results]
        wait_for(lambda: len(reasons) == len(bad), timeout=30, message=f"rejected {len(reasons)} of {len(bad)}")

    assert values == [n + 1 for n in range(len(results) - 1)] + [0]
    assert reasons.keys() == expected.keys()
    for tag, pattern in expected.items():
        assert re.search(pattern, reasons[tag]), f"{tag}: {reasons[tag]!r} does not match {pattern!r}"
        assert "\n" not in reasons[tag]
    dead = app.transport.fetch(["default.dead-letter"], limit=len(bad) + 10, timeout=1)
    assert sorted(d.envelope.headers["x-fuzz"] for d in dead) == sorted(expected)
    assert all(d.envelope.headers["x-death-reason"] == reasons[d.envelope.headers["x-fuzz"]] for d in dead)
    assert app.transport.queue_length("default") == 0
    app.close()


# -- hypothesis straight at the codec ---------------------------------------------------------

PLAIN_APP = make_app()
SECURED_APP = make_app(
    security_sign_key=SIGN_KEY,
    security_encrypt_key=ENCRYPT_KEY,
    security_require_signature=False,
    security_require_encryption=False,
)
GOOD_BODIES = [
    good_envelope(PLAIN_APP, 1, serializer, compression)
    for serializer in ("json", "msgpack")
    for compression in (None, *COMPRESSIONS)
] + [good_envelope(SECURED_APP, 2, "json", "zlib")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
#: Values shaped like a task body some of the time, so decoding gets past the first checks.
body_values = json_values | st.tuples(
    st.lists(json_values, max_size=3) | json_values,
    st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
    st.none() | st.dictionaries(st.sampled_from(["callbacks", "chain"]), json_values, max_size=2) | json_values,
).map(list)


header_values = (
    st.none()
    | st.integers()
    | st.text(max_size=20)
    | st.sampled_from(["t.add", "id-1", "2024-01-01T00:00:00", "2024-01-01T00:00:00+02:00", "soon", ""])
    | st.lists(st.integers() | st.none() | st.floats(), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
header_names = st.sampled_from(
    [
        "task", "id", "eta", "expires", "retries", "timelimit", "group", "group_index", "root_id", "parent_id",
        "shadow", "ignore_result", "compression", "x-celeriac-signature", "x-celeriac-signature-key",
        "x-celeriac-encryption", "x-celeriac-encryption-key", "x-celeriac-content-type",
        "x-celeriac-content-encoding", "x-user",
    ]
)  # fmt: skip
content_types = st.sampled_from(
    [
        "application/json",
        "application/x-msgpack",
        "application/x-python-serialize",
        "application/x-celeriac-encrypted",
        "text/plain",
    ]
) | st.text(max_size=20)
compression_headers = (
    st.sampled_from(
        [
            "application/x-gzip",
            "application/gzip",
            "application/x-bz2",
            "application/x-lzma",
            "application/zstd",
            "gzip",
        ]
    )
    | st.integers()
)


@st.composite
def bodies(draw: Callable[..., Any], seed: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncated", "flipped", "random", "json", "msgpack", "bomb", "appended"]))
    if kind == "truncated":
        return seed[: draw(st.integers(0, max(0, len(seed) - 1)))]
    if kind == "flipped" and seed:
        at = draw(st.integers(0, len(seed) - 1))
        return seed[:at] + bytes([seed[at] ^ draw(st.integers(1, 255))]) + seed[at + 1 :]
    if kind == "appended":
        return seed + draw(st.binary(min_size=1, max_size=20))
    if kind in ("json", "msgpack"):
        value = draw(body_values)
        return json.dumps(value).encode() if kind == "json" else msgpack.packb(value)
    if kind == "bomb":
        return bomb(draw(st.sampled_from(COMPRESSIONS)))
    return draw(st.binary(max_size=400))


@st.composite
def envelopes(draw: Callable[..., Any]) -> Envelope:
    """A good message with a few things changed, or a message made up from scratch."""
    seed: Envelope | None = draw(st.sampled_from([*GOOD_BODIES, None]))
    if seed is None:
        headers = {"task": draw(st.sampled_from(["t.add", ""]) | st.integers()), "id": "id-1"}
        if draw(st.booleans()):
            headers["compression"] = draw(compression_headers)
        return Envelope(draw(bodies(b"")), draw(content_types), "utf-8", headers)
    envelope = Envelope(seed.body, seed.content_type, seed.content_encoding, dict(seed.headers), dict(seed.properties))
    for change in draw(
        st.lists(st.sampled_from(["body", "header", "drop", "type", "encoding", "reply_to"]), min_size=1, max_size=3)
    ):
        if change == "body":
            envelope.body = draw(bodies(envelope.body))
        elif change == "header":
            envelope.headers[draw(header_names)] = draw(header_values | compression_headers)
        elif change == "drop" and envelope.headers:
            envelope.headers.pop(draw(st.sampled_from(sorted(envelope.headers))))
        elif change == "type":
            envelope.content_type = draw(content_types)
        elif change == "encoding":
            envelope.content_encoding = draw(st.sampled_from(["utf-8", "binary", "utf-16", ""]))
        elif change == "reply_to":
            envelope.properties["reply_to"] = draw(st.none() | st.text(max_size=5) | st.integers())
    return envelope


@settings(deadline=None, max_examples=800, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(app_=st.sampled_from([PLAIN_APP, SECURED_APP]), envelope=envelopes())
def test_decoding_anything_gives_a_message_or_a_decode_error(app_: Celeriac, envelope: Envelope) -> None:
    try:
        message = app_.codec.decode(envelope)
    except (DecodeError, ContentDisallowed) as exc:
        reason = str(exc)
        assert reason
        assert "\n" not in reason
        event(f"rejected: {reason.split(':')[0][:40]}")
    else:
        event("decoded")
        assert isinstance(message, celeriac.TaskMessage)
        assert isinstance(message.args, list)
        assert isinstance(message.kwargs, dict)


@pytest.mark.parametrize("envelope", [pytest.param(e, id=f"good-{i}") for i, e in enumerate(GOOD_BODIES)])
def test_the_fuzz_seeds_are_good_messages(envelope: Envelope) -> None:
    app = SECURED_APP if "x-celeriac-signature" in envelope.headers else PLAIN_APP
    assert app.codec.decode(envelope).args in ([1, 1], [2, 1])


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_times_at_the_ends_of_the_range_are_a_decode_error(value: str) -> None:
    envelope = Envelope(b"[[1],{},null]", "application/json", headers={"task": "t", "id": "1", "eta": value})
    with pytest.raises(DecodeError, match="eta"):
        PLAIN_APP.codec.decode(envelope)
