"""Broker URLs, transport options and redis-py clients for the Redis transport.

Options come from ``broker_transport_options`` and from the URL's query string
(``redis://host:6379/0?visibility_timeout=30``); the config wins where both name a key.
Every option is checked here, so a typo fails at start with one line naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

import celeriac
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "RedisOptions",
    "check_url",
    "command_errors",
    "connection_errors",
    "describe",
    "make_client",
    "parse_options",
    "rebuild_url",
]

logger = logging.getLogger("celeriac.redis")

#: redis-py errors that mean "the server cannot be reached right now" (``BusyLoadingError``,
#: raised while a restarted server loads its data, is a ``ConnectionError``).
connection_errors: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
#: ... and those errors or a command Redis refused.
command_errors: tuple[type[BaseException], ...] = (*connection_errors, redis.exceptions.ResponseError)


def _positive_number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _positive_int(value: Any) -> float | None:
    number = _positive_number(value)
    return number if number is not None and number == int(number) else None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return value.lower() in {"1", "true", "yes", "on"}
    return None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


#: option -> (parser returning None for a bad value, what the error says is expected)
_OPTIONS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "visibility_timeout": (_positive_number, "a positive number of seconds"),
    "global_keyprefix": (_string, "a string"),
    "publish_timeout": (_positive_number, "a positive number of seconds"),
    "socket_timeout": (_positive_number, "a positive number of seconds"),
    "socket_connect_timeout": (_positive_number, "a positive number of seconds"),
    "socket_keepalive": (_boolean, "true or false"),
    "max_connections": (_positive_int, "a positive integer"),
}


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Checked transport options (see the plugin docstring for their meaning)."""

    visibility_timeout: float = 45.0
    global_keyprefix: str = ""
    publish_timeout: float = 10.0
    socket_timeout: float = 5.0
    socket_connect_timeout: float = 2.0
    socket_keepalive: bool = True
    max_connections: int | None = None


def parse_options(
    url: str, options: Mapping[str, Any], *, publish_timeout: float | None = None
) -> tuple[str, RedisOptions]:
    """Split ``url`` into a redis-py URL and checked options (config over query string).

    ``publish_timeout`` is the default for the option of that name (``broker_publish_timeout``).
    Raises :class:`~celeriac.ConfigError` for an unknown option or a bad value.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {key: value for key, value in query if key in _OPTIONS}
    rest = [(key, value) for key, value in query if key not in _OPTIONS]
    merged: dict[str, Any] = {**ours, **options}
    values: dict[str, Any] = {}
    if publish_timeout is not None:
        values["publish_timeout"] = publish_timeout
    for key, value in merged.items():
        if key not in _OPTIONS:
            known = ", ".join(sorted(_OPTIONS))
            raise celeriac.ConfigError(f"broker_transport_options: unknown option {key!r} for redis; known: {known}")
        parse, expected = _OPTIONS[key]
        parsed = parse(value)
        if parsed is None:
            raise celeriac.ConfigError(f"broker_transport_options.{key}: expected {expected}, got {value!r}")
        values[key] = int(parsed) if key == "max_connections" else parsed
    check_url("broker_url", url, rest, extra=_OPTIONS)
    return rebuild_url(parts, rest), RedisOptions(**values)


#: Query keys passed on to redis-py (besides the options above); ``rediss://`` takes the
#: ``ssl_*`` ones too.
URL_KEYS = frozenset({"db", "client_name", "health_check_interval"})
SSL_URL_KEYS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_password",
    }
)


def _database(text: str) -> bool:
    return text.isdigit() and text.isascii()


def check_url(setting: str, url: str, query: Sequence[tuple[str, str]], *, extra: Iterable[str] = ()) -> None:
    """Raise :class:`~celeriac.ConfigError` (one line naming ``setting``) for a bad port, a
    database that is not a number or a query key redis-py does not take (``query`` is what is
    left after our own ``extra`` keys were taken out)."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            port = parts.netloc.rpartition(":")[2]
            raise celeriac.ConfigError(
                f"{setting}: port {port!r} is not a number from 0 to 65535 (e.g. redis://127.0.0.1:6379/0)"
            ) from None
        database = parts.path.strip("/")
        if database and not _database(database):
            raise celeriac.ConfigError(
                f"{setting}: database {database!r} in the path is not a number (e.g. redis://127.0.0.1:6379/0)"
            )
    elif not parts.path:
        raise celeriac.ConfigError(f"{setting}: no socket path (e.g. unix:///run/redis/redis.sock?db=0)")
    accepted = set(URL_KEYS) | set(extra) | (set(SSL_URL_KEYS) if parts.scheme == "rediss" else set())
    for key, value in query:
        if key not in accepted:
            known = ", ".join(sorted(accepted))
            raise celeriac.ConfigError(f"{setting}: unknown query option {key!r}; accepted: {known}")
        if key == "db" and not _database(value):
            raise celeriac.ConfigError(f"{setting}: db={value!r} is not a number (e.g. ?db=0)")


def rebuild_url(parts: SplitResult, query: Sequence[tuple[str, str]]) -> str:
    """``parts`` with ``query`` as its query string, keeping the ``//`` that redis-py needs
    (``urlunsplit`` drops it when there is no host, as in ``unix:///path``)."""
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if query:
        url += f"?{urlencode(query)}"
    return url + (f"#{parts.fragment}" if parts.fragment else "")


def describe(url: str) -> str:
    """Where ``url`` points, without credentials: ``127.0.0.1:6379/0`` or ``unix:/path?db=0``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    database = parts.path.strip("/") or "0"
    return f"{host}:{port}/{database}"


def make_client(url: str, options: RedisOptions, *, socket_timeout: float | None = None) -> Any:
    """A client with its own connection pool; redis-py's own retries are off (callers decide).

    ``socket_timeout`` overrides the option (blocking reads need a longer one).
    """
    # TCP keepalive is for TCP connections: redis-py's unix socket connection refuses the keyword.
    keepalive = {} if url.startswith("unix:") else {"socket_keepalive": options.socket_keepalive}
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=options.socket_timeout if socket_timeout is None else socket_timeout,
            socket_connect_timeout=min(options.socket_connect_timeout, options.publish_timeout),
            max_connections=options.max_connections,
            **keepalive,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
    except ValueError as exc:
        raise celeriac.ConfigError(f"broker_url: {exc}") from None
