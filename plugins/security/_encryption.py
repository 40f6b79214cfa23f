"""Authenticated encryption of task message bodies: AES-256-GCM (extra ``crypto``).

Outgoing, with an encrypt key, the body (already serialized and compressed) is replaced by::

    nonce (12 random bytes) || AES-256-GCM(key, nonce, body, associated data) (ciphertext + 16-byte tag)

and the message says so in headers; the real content type and encoding move into headers and
the envelope's become ``application/x-celeriac-encrypted`` / ``binary``::

    x-celeriac-encryption          "aes-256-gcm"
    x-celeriac-encryption-key      the key id (16 hex digits, see _keys.key_id)
    x-celeriac-content-type        e.g. "application/json"
    x-celeriac-content-encoding    e.g. "utf-8"

The AES key is HKDF-SHA256(secret, info=b"celeriac aes-256-gcm v1"), 32 bytes. The associated
data is ``b"celeriac-encryption-v1\\n" + canonical_metadata(PROTOCOL_HEADERS + these four
headers)``, so a ciphertext cannot be moved to another task id, task name or ETA even when the
messages are not signed.

Incoming: decrypts with the keyring's key of that id and restores the content type, encoding
and headers. Rejected with a one-line reason: an unencrypted message when encryption is
required, an unknown key id, an unsupported algorithm, a body too short to hold nonce and tag,
and any authentication failure (tampered, or a different key of the same id).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import celeriac
from celeriac.plugins.security._keys import Key
from celeriac.plugins.security._wire import (
    CONTENT_ENCODING_HEADER,
    CONTENT_TYPE_HEADER,
    ENCRYPTED_CONTENT_TYPE,
    ENCRYPTION_HEADER,
    ENCRYPTION_HEADERS,
    ENCRYPTION_KEY_HEADER,
    PROTOCOL_HEADERS,
    canonical_metadata,
    replace,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["ALGORITHM", "EncryptionFilter", "EncryptionGuard", "require_cryptography"]

ALGORITHM = "aes-256-gcm"
_NONCE = 12
_TAG = 16
_LABEL = b"celeriac-encryption-v1\n"
_HKDF_INFO = b"celeriac aes-256-gcm v1"
_AUTHENTICATED_HEADERS = (*PROTOCOL_HEADERS, *ENCRYPTION_HEADERS)


def require_cryptography() -> None:
    """Import what encryption needs, or raise a one-line :class:`~celeriac.PluginError`."""
    try:
        import cryptography.hazmat.primitives.ciphers.aead
        import cryptography.hazmat.primitives.kdf.hkdf  # noqa: F401
    except ImportError as exc:
        raise celeriac.PluginError(
            "message encryption (security encrypt_key/decrypt_keys) needs the 'crypto' extra: "
            "pip install 'celeriac[crypto]'"
        ) from exc


def _cipher(key: Key) -> AESGCM:
    require_cryptography()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(key.secret)
    return AESGCM(derived)


def _associated_data(envelope: celeriac.Envelope) -> bytes:
    return _LABEL + canonical_metadata(envelope, _AUTHENTICATED_HEADERS)


class EncryptionGuard(celeriac.MessageFilter):
    """Installed when no encryption key is configured: explains encrypted messages instead of
    leaving them to fail as an unknown content type."""

    name: ClassVar[str] = "encryption-guard"

    def outgoing(self, envelope: celeriac.Envelope) -> celeriac.Envelope:
        return envelope

    def incoming(self, envelope: celeriac.Envelope) -> celeriac.Envelope:
        if not isinstance(envelope.headers, dict):
            raise celeriac.DecodeError("message headers are not a mapping")
        if ENCRYPTION_HEADER in envelope.headers or envelope.content_type == ENCRYPTED_CONTENT_TYPE:
            kid = envelope.headers.get(ENCRYPTION_KEY_HEADER)
            raise celeriac.DecodeError(
                f"message is encrypted (key id {kid!r}) and this worker has no decryption key; "
                "set security_encrypt_key or security_decrypt_keys"
            )
        return envelope


class EncryptionFilter(celeriac.MessageFilter):
    """Encrypts outgoing bodies with the encrypt key; decrypts incoming ones with the keyring."""

    name: ClassVar[str] = "encrypt"

    def __init__(self, encrypt_key: Key | None, decrypt_keys: Mapping[str, Key], *, require: bool) -> None:
        self.encrypt_key = encrypt_key
        self.require = require
        self._ciphers: dict[str, Any] = {kid: _cipher(key) for kid, key in decrypt_keys.items()}

    def outgoing(self, envelope: celeriac.Envelope) -> celeriac.Envelope:
        headers = envelope.headers
        for name in ENCRYPTION_HEADERS:  # stale ones, e.g. copied from a received message's headers
            headers.pop(name, None)
        if self.encrypt_key is None:
            return envelope
        headers[ENCRYPTION_HEADER] = ALGORITHM
        headers[ENCRYPTION_KEY_HEADER] = self.encrypt_key.id
        headers[CONTENT_TYPE_HEADER] = envelope.content_type
        headers[CONTENT_ENCODING_HEADER] = envelope.content_encoding
        envelope.content_type = ENCRYPTED_CONTENT_TYPE
        envelope.content_encoding = "binary"
        nonce = os.urandom(_NONCE)
        cipher = self._ciphers[self.encrypt_key.id]
        envelope.body = nonce + cipher.encrypt(nonce, envelope.body, _associated_data(envelope))
        return envelope

    def incoming(self, envelope: celeriac.Envelope) -> celeriac.Envelope:
        headers = envelope.headers
        if not isinstance(headers, dict):
            raise celeriac.DecodeError("message headers are not a mapping")
        algorithm = headers.get(ENCRYPTION_HEADER)
        if algorithm is None:
            if envelope.content_type == ENCRYPTED_CONTENT_TYPE:
                raise celeriac.DecodeError(f"encrypted message without its {ENCRYPTION_HEADER} header")
            if self.require:
                raise celeriac.DecodeError(
                    "message is not encrypted and this worker requires encryption (security_require_encryption)"
                )
            return envelope
        if algorithm != ALGORITHM:
            raise celeriac.DecodeError(f"message encrypted with {algorithm!r}; this worker reads {ALGORITHM}")
        kid = headers.get(ENCRYPTION_KEY_HEADER)
        cipher = self._ciphers.get(kid) if isinstance(kid, str) else None
        if cipher is None:
            raise celeriac.DecodeError(
                f"message encrypted with unknown key id {kid!r}; add that key to security_decrypt_keys to read it"
            )
        content_type = headers.get(CONTENT_TYPE_HEADER)
        content_encoding = headers.get(CONTENT_ENCODING_HEADER)
        if not isinstance(content_type, str) or not isinstance(content_encoding, str):
            raise celeriac.DecodeError(f"encrypted message without string {CONTENT_TYPE_HEADER} and encoding headers")
        body = envelope.body
        if len(body) < _NONCE + _TAG:
            raise celeriac.DecodeError(f"encrypted body of {len(body)} bytes is too short to hold a nonce and a tag")
        try:
            plain: bytes = cipher.decrypt(body[:_NONCE], body[_NONCE:], _associated_data(envelope))
        except Exception:  # cryptography's InvalidTag: tampered, or another key with this id
            raise celeriac.DecodeError(
                f"cannot decrypt message (key id {kid}): authentication failed, the message was changed"
            ) from None
        return replace(
            envelope, ENCRYPTION_HEADERS, body=plain, content_type=content_type, content_encoding=content_encoding
        )
