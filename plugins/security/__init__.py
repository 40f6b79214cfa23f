"""Message security: HMAC-SHA256 signing and optional AES-256-GCM encryption of task messages.

Signing is one config block (keys may also come from ``CELERIAC_SECURITY_SIGN_KEY`` and
``CELERIAC_SECURITY_VERIFY_KEYS``, comma-separated)::

    [celeriac.security]
    sign_key = "..."              # >= 32 random characters; signs everything this app sends
    verify_keys = ["..."]         # older keys still accepted (rotation); sign_key always is
    require_signature = true      # default once a key is set: unsigned messages are dead-lettered
    encrypt_key = "..."           # optional, extra `crypto`: AES-256-GCM of the body
    decrypt_keys = ["..."]        # older encryption keys (rotation)
    require_encryption = true     # default once an encryption key is set

**Rotation:** deploy the new key as a verify key everywhere, then make it the sign key
everywhere, then drop the old one. Keys are identified on the wire by a key id derived from the
key (16 hex digits of SHA-256), never by the key itself.

**Wire format.** Outgoing messages pass the encryption filter, then the signing filter
(encrypt-then-MAC); incoming ones the reverse, before decompression and deserialization.
Headers added (all string values):

=================================  ========================================================
``x-celeriac-encryption``          ``"aes-256-gcm"``
``x-celeriac-encryption-key``      key id of the encryption key
``x-celeriac-content-type``        the serializer's content type (the envelope's becomes
                                   ``application/x-celeriac-encrypted``, encoding ``binary``)
``x-celeriac-content-encoding``    the serializer's content encoding
``x-celeriac-signature-key``       key id of the signing key
``x-celeriac-signature``           ``"hmac-sha256:" + base64url(MAC)`` without padding
=================================  ========================================================

The MAC is HMAC-SHA256 over ``b"celeriac-signature-v1\\n" + metadata + b"\\n" + body``, with
``body`` as it travels (compressed, encrypted) and ``metadata`` the compact, key-sorted,
ASCII JSON ``{"content_encoding", "content_type", "headers": {...}, "reply_to"}`` of the
envelope, where ``headers`` holds every signed header by name, ``null`` when missing: the
protocol-v2 headers the worker acts on (``lang task id shadow eta expires group group_index
retries timelimit root_id parent_id argsrepr kwargsrepr origin ignore_result
replaced_task_nesting``), ``compression``, the four encryption headers and
``x-celeriac-signature-key``. Arguments are in the body. Not signed: user headers
(``apply_async(headers=...)``), priority and broker bookkeeping (``x-death-*``). The encrypted
body is ``nonce(12) || ciphertext || tag(16)`` with the same metadata (without the signature
key) as associated data — see :mod:`celeriac.plugins.security._encryption`.

A message that fails is dead-lettered by the worker with a one-line reason: not signed (when
required), unknown key id, malformed header, signature mismatch, not encrypted (when
required), cannot decrypt.

Caveats: a signature proves who sent a message, not that it is new — someone who can read the
broker can publish a copy again (the task id stays the same). A worker that verifies but has
no ``sign_key`` sends its retries unsigned. Results in the result store are not signed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import celeriac
from celeriac.plugins.security._keys import SETTINGS, SecurityConfig, key_id, load_config
from celeriac.plugins.security._signing import SigningFilter

__all__ = ["SecurityConfig", "celeriac_configure", "celeriac_message_filters", "celeriac_settings", "key_id"]

logger = logging.getLogger("celeriac.security")


@celeriac.hookimpl
def celeriac_settings() -> Sequence[celeriac.Setting]:
    """The ``[celeriac.security]`` settings."""
    return SETTINGS


@celeriac.hookimpl
def celeriac_configure(app: celeriac.Celeriac) -> None:
    """Validate the keys (and that encryption's extra is installed) when the app is built, so a
    bad key stops the program at start with one line."""
    if load_config(app.conf).encryption:
        from celeriac.plugins.security._encryption import require_cryptography

        require_cryptography()


@celeriac.hookimpl
def celeriac_message_filters(app: celeriac.Celeriac) -> Sequence[celeriac.MessageFilter]:
    """Encryption then signing, as configured; a guard that explains encrypted messages otherwise."""
    from celeriac.plugins.security._encryption import EncryptionFilter, EncryptionGuard

    config = load_config(app.conf)
    filters: list[celeriac.MessageFilter] = []
    if config.encryption:
        filters.append(EncryptionFilter(config.encrypt_key, config.decrypt_keys, require=config.require_encryption))
    else:
        filters.append(EncryptionGuard())
    if config.signing:
        if config.sign_key is None and config.require_signature:
            logger.warning(
                "security: this app verifies signatures but has no sign_key; what it sends (retries, "
                "tasks sent from tasks) is unsigned and workers that require signatures dead-letter it"
            )
        filters.append(SigningFilter(config.sign_key, config.verify_keys, require=config.require_signature))
    return filters
