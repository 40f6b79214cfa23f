"""Authentication, CSRF protection, read-only mode and the bind check.

* **Authentication** (optional on loopback, required elsewhere): HTTP basic auth against a scrypt
  hash (``scrypt$N$r$p$salt$hash``, made by :func:`hash_password`), or a bearer token.
* **CSRF**: a mutating request (POST, PUT, PATCH, DELETE) must carry the header ``X-CSRF-Token``
  equal to the ``celeriac_csrf`` cookie (double submit; the pages do this), and an ``Origin``
  header, when present, must name this server. Requests authenticated by a bearer token are
  exempt: browsers never add that header on their own.
* **Host check**: on a loopback bind only ``localhost``/loopback ``Host`` headers are served
  (DNS-rebinding protection).
* **Read-only**: every mutating request gets 403.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from celeriac import ConfigError

from ._settings import DashboardConfig

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SecurityMiddleware", "check_bind", "hash_password", "verify_password"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE = "celeriac_csrf"
CSRF_HEADER = "x-csrf-token"
_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
_PUBLIC_PATHS = {"/healthz"}
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A scrypt hash of ``password`` for ``[celeriac.dashboard] password_hash``."""
    if not password:
        raise ConfigError("dashboard: the password is empty; choose a non-empty password")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError(encoded)
        return int(parts[1]), int(parts[2]), int(parts[3]), bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        raise ConfigError(
            "[celeriac.dashboard] password_hash: not a scrypt hash (scrypt$N$r$p$salt$hash); "
            "make one with `celeriac dashboard --hash-password`"
        ) from None


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the scrypt hash ``encoded`` (constant-time compare)."""
    n, r, p, salt, expected = _parse_hash(encoded)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=2**27)
    return hmac.compare_digest(digest, expected)


def is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(config: DashboardConfig) -> None:
    """Refuse a non-loopback bind without authentication, and malformed credentials."""
    if config.password_hash:
        _parse_hash(config.password_hash)
        if not config.username:
            raise ConfigError("[celeriac.dashboard] password_hash is set but username is not; set both")
    if config.token is not None and len(config.token) < 16:
        raise ConfigError("[celeriac.dashboard] token: use at least 16 random characters")
    if not is_loopback(config.host) and not config.auth_configured:
        raise ConfigError(
            f"dashboard: refusing to listen on {config.host} without authentication; set "
            "[celeriac.dashboard] username and password_hash (celeriac dashboard --hash-password) "
            "or token, or listen on 127.0.0.1"
        )


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


class SecurityMiddleware:
    """ASGI middleware enforcing the rules in the module docstring."""

    def __init__(self, app: ASGIApp, config: DashboardConfig) -> None:
        self.app = app
        self.config = config
        self._verified: dict[str, bool] = {}  # basic credentials already checked (scrypt is slow on purpose)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        method = scope["method"].upper()
        path = scope.get("path", "")
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        if is_loopback(self.config.host) and not is_loopback(host):
            await _reply(send, 400, {"error": f"unexpected Host header {host!r}; open the dashboard via 127.0.0.1"})
            return
        bearer = False
        if self.config.auth_configured and path not in _PUBLIC_PATHS:
            outcome = self._authenticate(headers.get("authorization", ""))
            if outcome is None:
                await _reply(
                    send,
                    401,
                    {"error": "authentication required"},
                    extra=[(b"www-authenticate", b'Basic realm="celeriac dashboard", charset="UTF-8"')],
                )
                return
            bearer = outcome == "bearer"
        if method in _MUTATING:
            if self.config.read_only:
                await _reply(send, 403, {"error": "the dashboard is read-only ([celeriac.dashboard] read_only)"})
                return
            origin = headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != headers.get("host", ""):
                await _reply(send, 403, {"error": f"cross-origin request from {origin} refused"})
                return
            if not bearer:
                cookie = SimpleCookie()
                cookie.load(headers.get("cookie", ""))
                token = cookie[CSRF_COOKIE].value if CSRF_COOKIE in cookie else ""
                given = headers.get(CSRF_HEADER, "")
                if not token or not hmac.compare_digest(token.encode(), given.encode()):
                    await _reply(
                        send,
                        403,
                        {
                            "error": "missing or wrong CSRF token: send the celeriac_csrf cookie's value "
                            "in the X-CSRF-Token header (GET /api/csrf sets one)"
                        },
                    )
                    return
        await self.app(scope, receive, send)

    def _authenticate(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and self.config.token:
            return "bearer" if hmac.compare_digest(value.encode(), self.config.token.encode()) else None
        if scheme == "basic" and self.config.username and self.config.password_hash:
            key = hashlib.sha256(value.encode()).hexdigest()
            known = self._verified.get(key)
            if known is None:
                try:
                    user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    return None
                known = hmac.compare_digest(user.encode(), self.config.username.encode()) and verify_password(
                    password, self.config.password_hash
                )
                if len(self._verified) > 1000:
                    self._verified.clear()
                self._verified[key] = known
            return "basic" if known else None
        return None


async def _reply(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": payload})
