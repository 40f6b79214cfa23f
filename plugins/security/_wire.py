"""Header names and the canonical form of a message's metadata, shared by signing and encryption."""

from __future__ import annotations

import json
from collections.abc import Iterable

import celeriac

__all__ = [
    "CONTENT_ENCODING_HEADER",
    "CONTENT_TYPE_HEADER",
    "ENCRYPTED_CONTENT_TYPE",
    "ENCRYPTION_HEADER",
    "ENCRYPTION_HEADERS",
    "ENCRYPTION_KEY_HEADER",
    "PROTOCOL_HEADERS",
    "SIGNATURE_HEADER",
    "SIGNATURE_HEADERS",
    "SIGNATURE_KEY_HEADER",
    "SIGNED_HEADERS",
    "canonical_metadata",
    "replace",
]

SIGNATURE_HEADER = "x-celeriac-signature"
SIGNATURE_KEY_HEADER = "x-celeriac-signature-key"
ENCRYPTION_HEADER = "x-celeriac-encryption"
ENCRYPTION_KEY_HEADER = "x-celeriac-encryption-key"
CONTENT_TYPE_HEADER = "x-celeriac-content-type"
CONTENT_ENCODING_HEADER = "x-celeriac-content-encoding"
ENCRYPTED_CONTENT_TYPE = "application/x-celeriac-encrypted"

SIGNATURE_HEADERS = (SIGNATURE_HEADER, SIGNATURE_KEY_HEADER)
ENCRYPTION_HEADERS = (ENCRYPTION_HEADER, ENCRYPTION_KEY_HEADER, CONTENT_TYPE_HEADER, CONTENT_ENCODING_HEADER)

#: Protocol-v2 headers the worker acts on, plus ``compression``.
PROTOCOL_HEADERS: tuple[str, ...] = (
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "compression",
)
#: Everything the signature covers besides the body, content type/encoding and reply_to.
SIGNED_HEADERS: tuple[str, ...] = (*PROTOCOL_HEADERS, *ENCRYPTION_HEADERS, SIGNATURE_KEY_HEADER)


def canonical_metadata(envelope: celeriac.Envelope, headers: Iterable[str]) -> bytes:
    """Deterministic bytes for ``envelope``'s content type and encoding, the values of
    ``headers`` (missing counts as null, as the worker reads it) and its ``reply_to``::

        {"content_encoding":...,"content_type":...,"headers":{name: value, ...},"reply_to":...}

    as compact JSON with sorted keys and only ASCII characters.
    """
    values = envelope.headers
    metadata = {
        "content_type": envelope.content_type,
        "content_encoding": envelope.content_encoding,
        "headers": {name: values.get(name) for name in headers},
        "reply_to": envelope.properties.get("reply_to") or "",
    }
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return text.encode("ascii")


def replace(
    envelope: celeriac.Envelope,
    drop: Iterable[str],
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    content_encoding: str | None = None,
) -> celeriac.Envelope:
    """A copy of ``envelope`` without the headers ``drop``, with the given parts changed.

    Incoming filters return copies: the received envelope stays as it arrived, because the
    worker may dead-letter or re-publish it.
    """
    dropped = set(drop)
    return celeriac.Envelope(
        envelope.body if body is None else body,
        envelope.content_type if content_type is None else content_type,
        envelope.content_encoding if content_encoding is None else content_encoding,
        {key: value for key, value in envelope.headers.items() if key not in dropped},
        envelope.properties,
    )
