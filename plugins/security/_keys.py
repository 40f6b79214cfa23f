"""Keys from the config: validation, key ids, and the settings that carry them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import celeriac

__all__ = ["MIN_KEY_LENGTH", "SETTINGS", "Key", "SecurityConfig", "key_id", "load_config"]

logger = logging.getLogger("celeriac.security")

#: Keys shorter than this many characters are refused: they can be guessed offline from one message.
MIN_KEY_LENGTH = 32
_KEY_HINT = "use at least 32 random characters, e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _setting(name: str, kind: str, default: object, doc: str, *, secret: bool = False) -> celeriac.Setting:
    return celeriac.Setting(name, kind, default, doc, section="security", secret=secret)


SETTINGS: tuple[celeriac.Setting, ...] = (
    _setting(
        "security_sign_key", "str", None, "Sign every task message sent with this key (HMAC-SHA256).", secret=True
    ),
    _setting(
        "security_verify_keys",
        "list",
        [],
        "More keys whose signatures are accepted (key rotation); the sign key always is.",
        secret=True,
    ),
    _setting(
        "security_require_signature",
        "bool",
        True,
        "With signing keys set, dead-letter messages that are not signed (false while rolling out).",
    ),
    _setting(
        "security_encrypt_key",
        "str",
        None,
        "Encrypt the body of every task message sent with this key (AES-256-GCM, extra `crypto`).",
        secret=True,
    ),
    _setting(
        "security_decrypt_keys",
        "list",
        [],
        "More keys that decrypt received messages (key rotation); the encrypt key always does.",
        secret=True,
    ),
    _setting(
        "security_require_encryption",
        "bool",
        True,
        "With encryption keys set, dead-letter messages that are not encrypted.",
    ),
)


def key_id(secret: bytes) -> str:
    """The public id of a key: 16 hex digits of SHA-256 over a label and the key."""
    return hashlib.sha256(b"celeriac-key-id\x00" + secret).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Key:
    """A secret from the config and its public id."""

    id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"Key(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The ``[celeriac.security]`` settings of one app, validated."""

    sign_key: Key | None
    verify_keys: dict[str, Key]
    require_signature: bool
    encrypt_key: Key | None
    decrypt_keys: dict[str, Key]
    require_encryption: bool

    @property
    def signing(self) -> bool:
        return bool(self.verify_keys)

    @property
    def encryption(self) -> bool:
        return bool(self.decrypt_keys)


def _where(conf: celeriac.Config, name: str) -> str:
    return f"{conf.origin(name)}: {conf.setting(name).location}"


def _key(conf: celeriac.Config, name: str, value: str) -> Key:
    if len(value) < MIN_KEY_LENGTH:
        raise celeriac.ConfigError(f"{_where(conf, name)}: key too short ({len(value)} characters); {_KEY_HINT}")
    secret = value.encode("utf-8")
    return Key(key_id(secret), secret)


def _keyring(conf: celeriac.Config, main: str, more: str) -> tuple[Key | None, dict[str, Key]]:
    first: str | None = conf[main]
    others: Iterable[str] = conf[more] or ()
    key = _key(conf, main, first) if first is not None else None
    ring = {key.id: key} if key is not None else {}
    for value in others:
        extra = _key(conf, more, value)
        ring.setdefault(extra.id, extra)
    return key, ring


def _check_require(conf: celeriac.Config, name: str, active: bool, needs: str) -> None:
    if conf[name] and not active and conf.origin(name) != "default":
        raise celeriac.ConfigError(f"{_where(conf, name)}: is on but no key is set; set {needs}")


def load_config(conf: celeriac.Config) -> SecurityConfig:
    """Read and validate the security settings; :class:`~celeriac.ConfigError` names the bad key."""
    sign_key, verify_keys = _keyring(conf, "security_sign_key", "security_verify_keys")
    encrypt_key, decrypt_keys = _keyring(conf, "security_encrypt_key", "security_decrypt_keys")
    _check_require(conf, "security_require_signature", bool(verify_keys), "sign_key or verify_keys")
    _check_require(conf, "security_require_encryption", bool(decrypt_keys), "encrypt_key or decrypt_keys")
    return SecurityConfig(
        sign_key=sign_key,
        verify_keys=verify_keys,
        require_signature=bool(conf.security_require_signature),
        encrypt_key=encrypt_key,
        decrypt_keys=decrypt_keys,
        require_encryption=bool(conf.security_require_encryption),
    )
