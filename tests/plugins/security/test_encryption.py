"""AES-256-GCM encryption of message bodies: wire format, tampering, rotation, the extra."""

from __future__ import annotations

import json
import sys
from typing import Any

import celeriac
import pytest
from celeriac import Celeriac, DecodeError, Envelope, TaskMessage
from celeriac.plugins.security import key_id
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

pytestmark = pytest.mark.timeout(60)

KEY = "encryption-key-" + "e" * 32
OLD_KEY = "encryption-old-" + "o" * 32
SIGN_KEY = "signing-key-" + "s" * 32
SECRET_ARGUMENT = "the launch codes"


def make_app(**settings: Any) -> Celeriac:
    return Celeriac("tests", environ={}, set_as_current=False, **settings)


def encrypted(app: Celeriac, **fields: Any) -> Envelope:
    message = TaskMessage(**{"id": "id-1", "task": "t.store", "args": [SECRET_ARGUMENT], **fields})
    return app.codec.encode(message, app.conf.serializer)[0]


def copy(envelope: Envelope) -> Envelope:
    return Envelope(
        envelope.body,
        envelope.content_type,
        envelope.content_encoding,
        json.loads(json.dumps(envelope.headers)),
        dict(envelope.properties),
    )


AUTHENTICATED = [
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
    "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
    "compression", "x-celeriac-encryption", "x-celeriac-encryption-key", "x-celeriac-content-type",
    "x-celeriac-content-encoding",
]  # fmt: skip


def test_the_body_is_encrypted_and_decrypts_back() -> None:
    app = make_app(security_encrypt_key=KEY, serializer="msgpack")
    envelope = encrypted(app)
    assert SECRET_ARGUMENT.encode() not in envelope.body
    assert (envelope.content_type, envelope.content_encoding) == ("application/x-celeriac-encrypted", "binary")
    assert {k: v for k, v in envelope.headers.items() if k.startswith("x-celeriac-encryption")} == {
        "x-celeriac-encryption": "aes-256-gcm",
        "x-celeriac-encryption-key": key_id(KEY.encode()),
    }
    assert envelope.headers["x-celeriac-content-type"] == "application/x-msgpack"
    assert envelope.headers["x-celeriac-content-encoding"] == "binary"
    message = app.codec.decode(envelope)
    assert message.args == [SECRET_ARGUMENT]
    assert not [k for k in message.extra_headers if k.startswith("x-celeriac")]


def test_the_wire_format_is_the_documented_one() -> None:
    """Decrypt with cryptography directly, following the module docstring."""
    app = make_app(security_encrypt_key=KEY, compression="zlib", compression_threshold=0)
    envelope = encrypted(app)
    aes_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"celeriac aes-256-gcm v1").derive(
        KEY.encode()
    )
    metadata = {
        "content_encoding": "binary",
        "content_type": "application/x-celeriac-encrypted",
        "headers": {name: envelope.headers.get(name) for name in AUTHENTICATED},
        "reply_to": "",
    }
    aad = b"celeriac-encryption-v1\n" + json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    plain = AESGCM(aes_key).decrypt(envelope.body[:12], envelope.body[12:], aad)
    assert envelope.headers["compression"] == "application/x-gzip"  # compressed, then encrypted
    plain_app = make_app(compression="zlib", compression_threshold=0)
    assert plain == encrypted(plain_app).body


def test_every_message_gets_a_fresh_nonce() -> None:
    app = make_app(security_encrypt_key=KEY)
    assert encrypted(app).body[:12] != encrypted(app).body[:12]


TAMPERING = {
    "ciphertext": lambda e: setattr(e, "body", e.body[:-1] + bytes([e.body[-1] ^ 1])),
    "nonce": lambda e: setattr(e, "body", bytes([e.body[0] ^ 1]) + e.body[1:]),
    "task id": lambda e: e.headers.update(id="id-2"),
    "task name": lambda e: e.headers.update(task="t.other"),
    "eta": lambda e: e.headers.update(eta="2030-01-01T00:00:00+00:00"),
    "inner content type": lambda e: e.headers.update({"x-celeriac-content-type": "application/x-python-serialize"}),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_fails_authentication_even_without_signing(tamper: Any) -> None:
    app = make_app(security_encrypt_key=KEY)
    envelope = copy(encrypted(app))
    tamper(envelope)
    with pytest.raises(DecodeError, match=r"^cannot decrypt message \(key id [0-9a-f]{16}\): authentication failed"):
        app.codec.decode(envelope)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e.headers.update({"x-celeriac-encryption-key": "f" * 16}), "unknown key id 'ffffffffffffffff'"),
        (lambda e: e.headers.update({"x-celeriac-encryption": "rot13"}), "encrypted with 'rot13'"),
        (lambda e: setattr(e, "body", e.body[:20]), "too short to hold a nonce and a tag"),
        (lambda e: e.headers.pop("x-celeriac-content-type"), "without string x-celeriac-content-type"),
        (lambda e: e.headers.pop("x-celeriac-encryption"), "encrypted message without its x-celeriac-encryption"),
    ],
)
def test_malformed_encrypted_messages_are_rejected_with_a_reason(change: Any, reason: str) -> None:
    app = make_app(security_encrypt_key=KEY)
    envelope = copy(encrypted(app))
    change(envelope)
    with pytest.raises(DecodeError, match=reason):
        app.codec.decode(envelope)


def test_plaintext_is_rejected_when_encryption_is_required() -> None:
    plain = encrypted(make_app())
    with pytest.raises(DecodeError, match=r"^message is not encrypted and this worker requires encryption"):
        make_app(security_encrypt_key=KEY).codec.decode(plain)
    relaxed = make_app(security_encrypt_key=KEY, security_require_encryption=False)
    assert relaxed.codec.decode(plain).args == [SECRET_ARGUMENT]


def test_a_worker_without_keys_explains_encrypted_messages() -> None:
    envelope = encrypted(make_app(security_encrypt_key=KEY))
    with pytest.raises(
        DecodeError, match=r"is encrypted \(key id '[0-9a-f]{16}'\) and this worker has no decryption key"
    ):
        make_app().codec.decode(envelope)


def test_decrypt_keys_rotation() -> None:
    old = encrypted(make_app(security_encrypt_key=OLD_KEY))
    new = encrypted(make_app(security_encrypt_key=KEY))
    worker = make_app(security_encrypt_key=KEY, security_decrypt_keys=[OLD_KEY])
    assert worker.codec.decode(old).args == worker.codec.decode(new).args == [SECRET_ARGUMENT]
    with pytest.raises(DecodeError, match="unknown key id"):
        make_app(security_encrypt_key=KEY).codec.decode(old)


def test_encrypt_then_sign() -> None:
    app = make_app(security_encrypt_key=KEY, security_sign_key=SIGN_KEY)
    assert [f.name for f in app.codec.filters] == ["encrypt", "sign"]
    envelope = copy(encrypted(app))
    assert app.codec.decode(copy(envelope)).args == [SECRET_ARGUMENT]
    envelope.body = envelope.body[:-1] + bytes([envelope.body[-1] ^ 1])
    with pytest.raises(DecodeError, match="signature does not match"):  # the MAC covers the ciphertext
        app.codec.decode(envelope)


def test_without_cryptography_encryption_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(celeriac.PluginError, match=r"needs the 'crypto' extra: pip install 'celeriac\[crypto\]'$"):
        make_app(security_encrypt_key=KEY)  # at start, not at the first message
    assert make_app(security_sign_key=SIGN_KEY).codec.filters  # signing needs no extra
