"""HMAC-SHA256 signing of task messages (stdlib only).

Outgoing, with a sign key: adds ``x-celeriac-signature-key`` (the key id) and
``x-celeriac-signature`` (``"hmac-sha256:"`` + unpadded base64url of the MAC) over::

    b"celeriac-signature-v1\\n" + canonical_metadata(SIGNED_HEADERS) + b"\\n" + body

Incoming: verifies against every key of the keyring (sign key + verify keys) by key id, in
constant time, and removes both headers so they do not travel on into retries. See
:mod:`celeriac.plugins.security` for the whole wire format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import ClassVar

import celeriac
from celeriac.plugins.security._keys import Key
from celeriac.plugins.security._wire import (
    SIGNATURE_HEADER,
    SIGNATURE_HEADERS,
    SIGNATURE_KEY_HEADER,
    SIGNED_HEADERS,
    canonical_metadata,
    replace,
)

__all__ = ["ALGORITHM", "SigningFilter"]

ALGORITHM = "hmac-sha256"
_PREFIX = ALGORITHM + ":"
_LABEL = b"celeriac-signature-v1\n"


def mac(key: Key, envelope: celeriac.Envelope) -> bytes:
    """The HMAC-SHA256 of ``envelope`` (metadata and body) under ``key``."""
    digest = hmac.new(key.secret, _LABEL, hashlib.sha256)
    digest.update(canonical_metadata(envelope, SIGNED_HEADERS))
    digest.update(b"\n")
    digest.update(envelope.body)
    return digest.digest()


class SigningFilter(celeriac.MessageFilter):
    """Signs outgoing messages with the sign key; verifies incoming ones against the keyring."""

    name: ClassVar[str] = "sign"

    def __init__(self, sign_key: Key | None, verify_keys: Mapping[str, Key], *, require: bool) -> None:
        self.sign_key = sign_key
        self.verify_keys = dict(verify_keys)
        self.require = require

    def outgoing(self, envelope: celeriac.Envelope) -> celeriac.Envelope:
        headers = envelope.headers
        for name in SIGNATURE_HEADERS:  # stale ones, e.g. copied from a received message's headers
            headers.pop(name, None)
        if self.sign_key is None:
            return envelope
        headers[SIGNATURE_KEY_HEADER] = self.sign_key.id
        signature = base64.urlsafe_b64encode(mac(self.sign_key, envelope)).rstrip(b"=").decode("ascii")
        headers[SIGNATURE_HEADER] = _PREFIX + signature
        return envelope

    def incoming(self, envelope: celeriac.Envelope) -> celeriac.Envelope:
        headers = envelope.headers
        if not isinstance(headers, dict):
            raise celeriac.DecodeError("message headers are not a mapping")
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None:
            if self.require:
                raise celeriac.DecodeError(
                    "message is not signed and this worker requires signatures (security_require_signature)"
                )
            return replace(envelope, SIGNATURE_HEADERS) if SIGNATURE_KEY_HEADER in headers else envelope
        if not isinstance(signature, str) or not signature.startswith(_PREFIX):
            raise celeriac.DecodeError(f"malformed {SIGNATURE_HEADER} header: expected {_PREFIX}<base64url>")
        kid = headers.get(SIGNATURE_KEY_HEADER)
        key = self.verify_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise celeriac.DecodeError(
                f"message signed with unknown key id {kid!r}; "
                "add that key to [celeriac.security] verify_keys to accept it"
            )
        encoded = signature[len(_PREFIX) :]
        try:
            provided = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise celeriac.DecodeError(f"malformed {SIGNATURE_HEADER} header: not base64url") from None
        if not hmac.compare_digest(provided, mac(key, envelope)):
            raise celeriac.DecodeError(f"signature does not match (key id {kid}): message changed after signing")
        return replace(envelope, SIGNATURE_HEADERS)
