"""``redis://``, ``rediss://``, ``unix://`` — results in Redis (``RedisResultStore``, extra ``redis``).

Features: expiry per record (Redis TTLs; the kernel passes ``result_expires``, one day by
default), ``wait`` woken by pub/sub (one subscriber connection per store, read by one thread;
never a sleep loop), batched writes (``set_many``: one round trip), ``get_many`` with one
``MGET``, atomic counters with expiry (``MULTI``: ``INCRBY`` + ``PEXPIRE``).

Connection strings are the transport's: ``redis://[user:password@]host[:port][/db]``,
``rediss://...`` (TLS), ``unix:///path/redis.sock?db=N``, options in the query string or in
``result_store_options`` (which wins):

* ``global_keyprefix`` ("") — put before every key and channel;
* ``retry_timeout`` (10) — seconds a read or write keeps retrying while Redis is unreachable
  before it raises ``TransportError`` (counters are never retried: an increment that may have
  happened must not happen twice);
* ``socket_timeout`` (5), ``socket_connect_timeout`` (2), ``socket_keepalive`` (true),
  ``max_connections`` — passed to redis-py.

Keys, as Celery names them: ``<prefix>celery-task-meta-<task id>`` holds a record — a line
``celeriac/1``, the state, the content type and the encoding, one per line, then the encoded
meta — and every write is also ``PUBLISH``-ed on a channel of the same name. A value that
Celery's own Redis backend wrote (plain JSON meta) is read too. Counters are
``<prefix>celeriac-counter-<key>``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import celeriac
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisResultStore"]

logger = logging.getLogger("celeriac.resultstores.redis")
T = TypeVar("T")

_MARKER = b"celeriac/1"
_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_OPTIONS = {
    "global_keyprefix": str,
    "retry_timeout": float,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": bool,
    "max_connections": int,
}
_DEFAULTS: dict[str, Any] = {
    "global_keyprefix": "",
    "retry_timeout": 10.0,
    "socket_timeout": 5.0,
    "socket_connect_timeout": 2.0,
}


def _option(key: str, value: Any) -> Any:
    """``value`` of option ``key`` checked (and converted from a query-string text)."""
    kind = _OPTIONS.get(key)
    if kind is None:
        known = ", ".join(sorted(_OPTIONS))
        raise celeriac.ConfigError(f"result_store_options: unknown option {key!r} for redis; known: {known}")
    if kind is str:
        valid = isinstance(value, str)
    elif kind is bool:
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            value = value.lower() in {"1", "true", "yes", "on"}
        valid = isinstance(value, bool)
    else:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        valid = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        valid = valid and (kind is float or value == int(value))
        value = kind(value) if valid else value
    if not valid:
        expected = f"a positive {kind.__name__}" if kind in (int, float) else f"a {kind.__name__}"
        raise celeriac.ConfigError(f"result_store_options.{key}: expected {expected}, got {value!r}")
    return value


def encode_record(record: celeriac.ResultRecord) -> bytes:
    """The stored value of ``record``."""
    head = f"{record.state}\n{record.content_type}\n{record.content_encoding}\n".encode()
    return _MARKER + b"\n" + head + record.payload


def decode_record(task_id: str, value: bytes) -> celeriac.ResultRecord | None:
    """The record stored as ``value`` (ours, or a Celery backend's JSON meta); None if neither."""
    if value.startswith(_MARKER + b"\n"):
        _, state, content_type, encoding, payload = value.split(b"\n", 4)
        return celeriac.ResultRecord(task_id, state.decode(), payload, content_type.decode(), encoding.decode())
    try:
        meta = json.loads(value)
    except ValueError:
        return None
    if isinstance(meta, dict) and isinstance(meta.get("status"), str):
        return celeriac.ResultRecord(task_id, meta["status"], value)
    return None


class _Watch:
    """Waiters on one channel: the latest published value and whether the subscription is live."""

    __slots__ = ("generation", "subscribed", "value", "version", "waiters")

    def __init__(self) -> None:
        self.waiters = 0
        self.subscribed = False
        self.generation = 0  # the listener generation its subscription was confirmed in
        self.value: bytes | None = None
        self.version = 0


def _news(watch: _Watch, seen_version: int, checked_generation: int) -> bool:
    """A waiter has something to look at: a new value, or a (re)confirmed subscription."""
    return watch.version != seen_version or (watch.subscribed and watch.generation != checked_generation)


class _Listener:
    """One pub/sub connection per store and a daemon thread reading it.

    Commands are sent under the lock (so SUBSCRIBE/UNSUBSCRIBE keep their order); the thread
    only reads. After a reconnect every watched channel is subscribed again and its waiters
    re-read the store, since a result may have been published while nobody listened.
    """

    def __init__(self, client: Any, where: str) -> None:
        self._client = client
        self._where = where
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self.watches: dict[bytes, _Watch] = {}
        self._inflight: dict[bytes, int] = {}
        self._connection: Any = None
        self._up = False
        self._generation = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-redis-results", daemon=True)
        self._thread.start()

    def _send(self, *args: Any) -> None:
        """Send a command if connected (caller holds the lock); a failure is the reader's to handle."""
        if self._up:
            try:
                self._connection.send_command(*args, check_health=False)
            except _ERRORS:
                self._up = False

    @contextmanager
    def watching(self, channel: bytes) -> Iterator[_Watch]:
        with self._lock:
            watch = self.watches.get(channel)
            if watch is None:
                watch = self.watches[channel] = _Watch()
                self._inflight[channel] = self._inflight.get(channel, 0) + 1
                self._send("SUBSCRIBE", channel)
            watch.waiters += 1
        try:
            yield watch
        finally:
            with self._lock:
                watch.waiters -= 1
                if watch.waiters == 0 and self.watches.get(channel) is watch:
                    del self.watches[channel]
                    self._send("UNSUBSCRIBE", channel)

    def _connect(self) -> None:
        connection = self._client.connection_pool.make_connection()
        connection.connect()
        with self._lock:
            self._connection = connection
            self._up = True
            self._generation += 1
            self._inflight = {channel: 1 for channel in self.watches}
            if self.watches:
                self._send("SUBSCRIBE", *self.watches)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                if not self._up:
                    self._connect()
                    backoff = 0.05
                if self._connection.can_read(timeout=1.0):
                    self._handle(self._connection.read_response(disconnect_on_error=False))
            except Exception as exc:  # a connection error, or the socket closed by stop()
                with self.changed:
                    if self._stopped.is_set():
                        return
                    if not isinstance(exc, _ERRORS):
                        logger.error("result notifications from redis at %s failed: %r", self._where, exc)
                    if self._up:
                        logger.warning("result notifications from redis at %s interrupted (%s)", self._where, exc)
                    self._up = False
                    for watch in self.watches.values():
                        watch.subscribed = False
                if self._connection is not None:
                    self._connection.disconnect()
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 1.0)

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3:
            return
        kind, channel, data = message[0], message[1], message[2]
        with self.changed:
            watch = self.watches.get(channel)
            if kind == b"message" and watch is not None:
                watch.value, watch.version = data, watch.version + 1
            elif kind == b"subscribe":
                self._inflight[channel] = max(self._inflight.get(channel, 0) - 1, 0)
                if watch is not None and self._inflight[channel] == 0:
                    watch.subscribed, watch.generation = True, self._generation
            else:
                return
            self.changed.notify_all()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            connection = self._connection
        if connection is not None:
            connection.disconnect()
        self._thread.join(timeout=2.0)


class _Lean:
    """The hot commands without redis-py's per-command overhead (as the transport does):
    per-thread connections opened by redis-py (TLS, AUTH, SELECT), then RESP2 spoken on the
    socket directly. Error replies come back as ``ResponseError`` objects, not raised."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        out: list[bytes] = []
        for command in commands:
            out.append(b"*%d\r\n" % len(command))
            for arg in command:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out += (b"$%d\r\n" % len(data), data, b"\r\n")
        state = getattr(self._local, "state", None)
        if state is None:
            connection = self._pool.make_connection()
            connection.connect()
            with self._lock:
                self._opened.append(connection)
            state = self._local.state = [connection, connection._sock, b"", 0]
        try:
            state[1].sendall(b"".join(out))
            return [self._read(state) for _ in commands]
        except BaseException as exc:
            self._local.state = None
            state[0].disconnect()
            if isinstance(exc, TimeoutError):
                raise redis.exceptions.TimeoutError(f"timeout talking to redis: {exc}") from None
            if isinstance(exc, OSError):
                raise redis.exceptions.ConnectionError(f"error talking to redis: {exc}") from None
            raise

    @staticmethod
    def _fill(state: list[Any]) -> None:
        data = state[1].recv(262144)
        if not data:
            raise redis.exceptions.ConnectionError("redis closed the connection")
        state[2], state[3] = state[2][state[3] :] + data, 0

    def _read(self, state: list[Any]) -> Any:
        while (end := state[2].find(b"\r\n", state[3])) < 0:
            self._fill(state)
        line, state[3] = state[2][state[3] : end], end + 2
        kind = line[:1]
        if kind == b"$":
            size = int(line[1:])
            if size < 0:
                return None
            while len(state[2]) - state[3] < size + 2:
                self._fill(state)
            start = state[3]
            state[3] = start + size + 2
            return state[2][start : start + size]
        if kind == b"*":
            count = int(line[1:])
            return None if count < 0 else [self._read(state) for _ in range(count)]
        if kind == b":":
            return int(line[1:])
        if kind == b"-":
            return redis.exceptions.ResponseError(line[1:].decode(errors="replace"))
        return line[1:]

    def call(self, *args: Any) -> Any:
        [reply] = self.pipeline([args])
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.disconnect()


class RedisResultStore(celeriac.ResultStore):
    """Results in Redis; thread-safe (pooled connections, one notification listener)."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        settings = {**_DEFAULTS, **{k: v for k, v in query if k in _OPTIONS}, **self.options}
        settings = {key: _option(key, value) for key, value in settings.items()}
        rest = urlencode([(k, v) for k, v in query if k not in _OPTIONS])
        clean = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
        self.prefix: str = settings.pop("global_keyprefix")
        self.retry_timeout: float = settings.pop("retry_timeout")
        host = (
            f"unix:{parts.path}" if parts.scheme == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        )
        self.where = f"{host}/{parts.path.strip('/') or '0'}" if parts.scheme != "unix" else host
        try:
            self._client: Any = redis.Redis.from_url(clean, retry=Retry(NoBackoff(), 0), protocol=2, **settings)
        except ValueError as exc:
            raise celeriac.ConfigError(f"result_store: {exc}") from None
        self._lean = _Lean(self._client)
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}celery-task-meta-{task_id}"

    def _retrying(self, action: str, call: Callable[[], T], *, retry: bool = True) -> T:
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.05
        while True:
            try:
                return call()
            except _ERRORS as exc:
                if not retry or time.monotonic() + delay >= deadline:
                    raise celeriac.TransportError(
                        f"cannot {action} the result store at {self.where}: {exc}; is redis-server running "
                        f"there and result_store right?"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except redis.exceptions.ResponseError as exc:
                raise celeriac.TransportError(f"the result store at {self.where} refused to {action}: {exc}") from None

    def _set_commands(self, record: celeriac.ResultRecord, expires: float | None) -> list[list[Any]]:
        key, value = self._key(record.task_id), encode_record(record)
        if expires is None:
            return [["SET", key, value], ["PUBLISH", key, value]]
        return [["SET", key, value, "PX", max(int(expires * 1000), 1)], ["PUBLISH", key, value]]

    def set(self, record: celeriac.ResultRecord, *, expires: float | None = None) -> None:
        """Store ``record`` (``SET`` with ``PX``) and publish it to waiters, in one round trip."""
        self.set_many([record], expires=expires)

    def set_many(self, records: Sequence[celeriac.ResultRecord], *, expires: float | None = None) -> None:
        """Store several records in one pipeline."""
        commands = [command for record in records for command in self._set_commands(record, expires)]
        if not commands:
            return

        def send() -> None:
            for reply in self._lean.pipeline(commands):
                if isinstance(reply, redis.exceptions.ResponseError):
                    raise reply

        self._retrying("write to", send)

    def get(self, task_id: str) -> celeriac.ResultRecord | None:
        """The record of ``task_id``, or ``None``."""
        value = self._retrying("read from", lambda: self._lean.call("GET", self._key(task_id)))
        return None if value is None else decode_record(task_id, value)

    def get_many(self, task_ids: Iterable[str]) -> dict[str, celeriac.ResultRecord]:
        """Records of several ids with one ``MGET``."""
        ids = list(task_ids)
        if not ids:
            return {}
        keys = [self._key(task_id) for task_id in ids]
        values = self._retrying("read from", lambda: self._lean.call("MGET", *keys))
        found = {}
        for task_id, value in zip(ids, values, strict=True):
            record = None if value is None else decode_record(task_id, value)
            if record is not None:
                found[task_id] = record
        return found

    def _the_listener(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self._client, self.where)
            return self._listener

    def wait(
        self, task_id: str, *, states: frozenset[str], timeout: float | None = None
    ) -> celeriac.ResultRecord | None:
        """Block until ``task_id`` is in one of ``states``, woken by the record's PUBLISH.

        Reads the record first; otherwise subscribes, reads again once the subscription is
        confirmed (a write in between would be missed otherwise), then waits for
        notifications. Returns the latest record seen (or ``None``) when ``timeout`` passes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        record = self.get(task_id)
        if record is not None and record.state in states:
            return record
        listener = self._the_listener()
        seen_version, checked_generation = 0, 0
        with listener.watching(self._key(task_id).encode()) as watch:
            while True:
                with listener.changed:
                    news = functools.partial(_news, watch, seen_version, checked_generation)
                    remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                    if not listener.changed.wait_for(news, timeout=remaining):
                        return record
                    refresh = watch.version == seen_version
                    seen_version, checked_generation, value = watch.version, watch.generation, watch.value
                if refresh:
                    record = self.get(task_id)
                elif value is not None:
                    record = decode_record(task_id, value)
                if record is not None and record.state in states:
                    return record

    def forget(self, task_id: str) -> None:
        """Delete the record of ``task_id``."""
        self._retrying("delete from", lambda: self._client.execute_command("DEL", self._key(task_id)))

    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """``INCRBY`` (and ``PEXPIRE`` when ``expires``) in one ``MULTI``; never retried."""
        name = f"{self.prefix}celeriac-counter-{key}"

        def send() -> int:
            pipeline = self._client.pipeline(transaction=True)
            pipeline.execute_command("INCRBY", name, amount)
            if expires is not None:
                pipeline.execute_command("PEXPIRE", name, max(int(expires * 1000), 1))
            return int(pipeline.execute()[0])

        return self._retrying("count in", send, retry=False)

    def close(self) -> None:
        """Stop the notification listener and disconnect."""
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._lean.close()
        self._client.close()

    def info(self) -> dict[str, Any]:
        """The store class, address (no credentials) and key prefix."""
        return {**super().info(), "result_store": type(self).__name__, "where": self.where, "prefix": self.prefix}
