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

The query string may also hold ``db``, ``client_name``, ``health_check_interval`` (and
``ssl_*`` for ``rediss://``); any other key, or a port or database that is not a number,
raises ``ConfigError`` with one line naming ``result_store``.

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
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

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


#: Query keys passed on to redis-py besides ours; ``rediss://`` takes the ``ssl_*`` ones too.
_URL_KEYS = frozenset({"db", "client_name", "health_check_interval"})
_SSL_URL_KEYS = frozenset(
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


def _check_url(parts: SplitResult, rest: list[tuple[str, str]]) -> None:
    """Raise ``ConfigError`` for a bad port, a database that is not a number, or a query key
    (``rest``: those left after ours) that redis-py does not take."""
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            port = parts.netloc.rpartition(":")[2]
            raise celeriac.ConfigError(
                f"result_store: port {port!r} is not a number from 0 to 65535 (e.g. redis://127.0.0.1:6379/1)"
            ) from None
        database = parts.path.strip("/")
        if database and not (database.isdigit() and database.isascii()):
            raise celeriac.ConfigError(
                f"result_store: database {database!r} in the path is not a number (e.g. redis://127.0.0.1:6379/1)"
            )
    elif not parts.path:
        raise celeriac.ConfigError("result_store: no socket path (e.g. unix:///run/redis/redis.sock?db=1)")
    accepted = _URL_KEYS | set(_OPTIONS) | (_SSL_URL_KEYS if parts.scheme == "rediss" else frozenset())
    for key, value in rest:
        if key not in accepted:
            raise celeriac.ConfigError(
                f"result_store: unknown query option {key!r}; accepted: {', '.join(sorted(accepted))}"
            )
        if key == "db" and not (value.isdigit() and value.isascii()):
            raise celeriac.ConfigError(f"result_store: db={value!r} is not a number (e.g. ?db=1)")


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


class _Push(list[Any]):
    """A RESP3 push frame (pub/sub messages and (un)subscribe confirmations)."""


class _NoResp3(Exception):
    """The server does not speak RESP3 (Redis before 6): waits go through the listener."""


class _Waiter:
    """One thread's subscriber connection, switched to RESP3 with ``HELLO 3``.

    In RESP3 a subscribed connection still runs ordinary commands, so a wait is one write —
    ``SUBSCRIBE channel`` then ``GET key`` (Redis runs them in that order, so no write can fall
    in between unseen) — and the published record wakes the waiting thread itself: no listener
    thread and no hand-off between threads. The channel stays subscribed after the wait and
    the next wait's write unsubscribes it first (one write per wait; a late message on it is
    skipped by its channel name). While nothing arrives, a ``GET`` every ``period`` seconds
    checks the connection (a missing answer means it is dead).
    """

    def __init__(self, pool: Any, period: float) -> None:
        self.period = period
        self.broken = False
        self.connection = pool.make_connection()
        self.connection.connect()
        self.sock: Any = self.connection._sock  # redis-py opened it (TLS, AUTH, SELECT)
        self.buffer = b""
        self.position = 0
        self.timeout: float | None = self.sock.gettimeout()
        self.subscribed: bytes | None = None
        self.owed = 0  # replies to GETs not read yet
        self.pid = os.getpid()  # a forked child opens its own
        weakref.finalize(self, self.connection.disconnect)  # a thread that ended takes its waiter
        try:
            self._send([["HELLO", "3"]])
            reply = self._read(time.monotonic() + period)
        except BaseException:
            self.close()
            raise
        if isinstance(reply, redis.exceptions.ResponseError) or reply is _TIMED_OUT:
            self.close()
            raise _NoResp3(str(reply))

    def close(self) -> None:
        self.broken = True
        self.connection.disconnect()

    def _send(self, commands: Sequence[Sequence[Any]]) -> None:
        out: list[bytes] = []
        for command in commands:
            out.append(b"*%d\r\n" % len(command))
            for arg in command:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out += (b"$%d\r\n" % len(data), data, b"\r\n")
        self.sock.sendall(b"".join(out))

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False if ``deadline`` (monotonic) passed first."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        timeout = self.period if remaining >= self.period else remaining
        if timeout != self.timeout:  # a syscall: only when a deadline is close
            self.sock.settimeout(timeout)
            self.timeout = timeout
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise redis.exceptions.ConnectionError("redis closed the connection")
        self.buffer, self.position = self.buffer[self.position :] + data, 0
        return True

    def _line(self, deadline: float) -> bytes | None:
        while (end := self.buffer.find(b"\r\n", self.position)) < 0:
            if not self._fill(deadline):
                return None
        line, self.position = self.buffer[self.position : end], end + 2
        return line

    def _read(self, deadline: float) -> Any:
        """One RESP3 frame, or ``_TIMED_OUT`` if none started before ``deadline``. Once a frame
        started it is read to its end (a half-read frame would poison the connection)."""
        line = self._line(deadline)
        if line is None:
            return _TIMED_OUT
        return self._frame(line)

    def _next(self) -> Any:
        """The next frame inside one that started (its bytes are on their way)."""
        line = self._line(time.monotonic() + self.period)
        if line is None:
            raise redis.exceptions.TimeoutError("timeout reading from redis")
        return self._frame(line)

    def _frame(self, line: bytes) -> Any:
        kind, rest = line[:1], line[1:]
        if not kind:
            raise redis.exceptions.InvalidResponse("empty line from redis")
        if kind in b"$=!":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buffer) - self.position < size + 2:
                if not self._fill(time.monotonic() + self.period):
                    raise redis.exceptions.TimeoutError("timeout reading from redis")
            data = self.buffer[self.position : self.position + size]
            self.position += size + 2
            if kind == b"!":
                return redis.exceptions.ResponseError(data.decode(errors="replace"))
            return data[4:] if kind == b"=" else data
        if kind in b"*~>%|":
            count = int(rest)
            if count < 0:
                return None
            items = [self._next() for _ in range(count * 2 if kind in b"%|" else count)]
            if kind == b"|":  # attributes precede the frame they describe
                return self._next()
            return _Push(items) if kind == b">" else items
        if kind in b":(":
            return int(rest)
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"_":
            return None
        if kind == b"-":
            return redis.exceptions.ResponseError(rest.decode(errors="replace"))
        return rest

    def wait(
        self, key: bytes, task_id: str, states: frozenset[str], deadline: float | None
    ) -> celeriac.ResultRecord | None:
        """Wait on ``key``'s channel until the record is in ``states`` or ``deadline`` passes
        (the record is read once even when it passed already); returns the latest record seen.

        Replies come in the order of the commands; those still owed to an earlier wait (it
        timed out before its ``GET`` was answered) are skipped.
        """
        record: celeriac.ResultRecord | None = None
        try:
            commands: list[list[Any]] = [["SUBSCRIBE", key], ["GET", key]]
            if self.subscribed is not None and self.subscribed != key:
                commands.insert(0, ["UNSUBSCRIBE", self.subscribed])
            self.subscribed = key
            self._send(commands)
            stale = self.owed
            self.owed += 1
            checked = False  # this wait's first GET was answered
            while True:
                until = time.monotonic() + self.period
                if checked and deadline is not None:
                    until = min(until, deadline)
                reply = self._read(until)
                if reply is _TIMED_OUT:
                    if checked and deadline is not None and time.monotonic() >= deadline:
                        return record
                    if self.owed:  # a whole period without an answer: the connection is dead
                        raise redis.exceptions.TimeoutError("redis did not answer within the socket timeout")
                    self._send([["GET", key]])
                    self.owed += 1
                    continue
                if isinstance(reply, _Push):
                    if len(reply) < 3 or reply[0] != b"message" or reply[1] != key:
                        continue  # a confirmation, or a message for an earlier wait
                    value = reply[2]
                else:
                    self.owed -= 1
                    if stale:
                        stale -= 1
                        continue
                    if isinstance(reply, redis.exceptions.ResponseError):
                        raise reply
                    checked = True
                    value = reply
                if value is not None:
                    record = decode_record(task_id, value) or record
                    if record is not None and record.state in states:
                        return record
                if checked and deadline is not None and time.monotonic() >= deadline:
                    return record
        except BaseException:
            self.close()
            raise


_TIMED_OUT = object()


class RedisResultStore(celeriac.ResultStore):
    """Results in Redis; thread-safe (pooled connections, one notification listener)."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        settings = {**_DEFAULTS, **{k: v for k, v in query if k in _OPTIONS}, **self.options}
        settings = {key: _option(key, value) for key, value in settings.items()}
        rest = [(k, v) for k, v in query if k not in _OPTIONS]
        _check_url(parts, rest)
        clean = f"{parts.scheme}://{parts.netloc}{parts.path}"  # keeps unix:///path's "//"
        clean += f"?{urlencode(rest)}" if rest else ""
        self.prefix: str = settings.pop("global_keyprefix")
        self.retry_timeout: float = settings.pop("retry_timeout")
        host = (
            f"unix:{parts.path}" if parts.scheme == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        )
        self.where = f"{host}/{parts.path.strip('/') or '0'}" if parts.scheme != "unix" else host
        if parts.scheme == "unix":  # TCP keepalive: redis-py's unix socket connection refuses the keyword
            settings.pop("socket_keepalive", None)
        try:
            self._client: Any = redis.Redis.from_url(clean, retry=Retry(NoBackoff(), 0), protocol=2, **settings)
        except ValueError as exc:
            raise celeriac.ConfigError(f"result_store: {exc}") from None
        self._lean = _Lean(self._client)
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._period = float(settings.get("socket_timeout", _DEFAULTS["socket_timeout"]))
        self._waiters = threading.local()
        self._all_waiters: weakref.WeakSet[_Waiter] = weakref.WeakSet()
        self._resp3 = True

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

        Subscribes and reads the record in one round trip on this thread's RESP3 connection
        (:class:`_Waiter`), then reads notifications on it: the thread that waits is the one
        woken. Returns the latest record seen (or ``None``) when ``timeout`` passes; raises
        ``TransportError`` when Redis stays unreachable for ``retry_timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self._key(task_id).encode()
        failing_since: float | None = None
        delay = 0.05
        while self._resp3:
            try:
                waiter = self._waiter()
                return waiter.wait(key, task_id, states, deadline)
            except _NoResp3:
                self._resp3 = False
            except redis.exceptions.ResponseError as exc:
                raise celeriac.TransportError(f"the result store at {self.where} refused to wait: {exc}") from None
            except _ERRORS as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since + delay >= self.retry_timeout:
                    raise celeriac.TransportError(
                        f"cannot wait on the result store at {self.where}: {exc}; is redis-server running "
                        f"there and result_store right?"
                    ) from None
                if deadline is not None and now + delay >= deadline:
                    return None
                time.sleep(delay)  # reconnect backoff
                delay = min(delay * 2, 1.0)
        return self._wait_listening(task_id, states, deadline)

    def _waiter(self) -> _Waiter:
        """This thread's waiter connection (a new one after a failure)."""
        waiter: _Waiter | None = getattr(self._waiters, "waiter", None)
        if waiter is None or waiter.broken or waiter.pid != os.getpid():
            waiter = _Waiter(self._client.connection_pool, self._period)
            with self._listener_lock:
                self._all_waiters.add(waiter)
            self._waiters.waiter = waiter
        return waiter

    def _wait_listening(
        self, task_id: str, states: frozenset[str], deadline: float | None
    ) -> celeriac.ResultRecord | None:
        """``wait`` for servers without RESP3: through the shared pub/sub listener thread.

        Reads the record first; otherwise subscribes, reads again once the subscription is
        confirmed (a write in between would be missed otherwise), then waits for
        notifications.
        """
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
        with self._listener_lock:
            waiters = list(self._all_waiters)
        for waiter in waiters:
            waiter.close()
        self._lean.close()
        self._client.close()

    def info(self) -> dict[str, Any]:
        """The store class, address (no credentials) and key prefix."""
        return {**super().info(), "result_store": type(self).__name__, "where": self.where, "prefix": self.prefix}

    # -- leases and small values (beat) ------------------------------------------------------

    def _lease_key(self, name: str) -> str:
        return f"{self.prefix}celeriac-lease-{name}"

    def _meta_key(self, key: str) -> str:
        return f"{self.prefix}celeriac-meta-{key}"

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """``SET NX PX`` when free, ``PEXPIRE`` when ``owner`` holds it: one Lua script, atomic."""
        key, milliseconds = self._lease_key(name), max(int(ttl * 1000), 1)
        taken = self._retrying(
            "take a lease in", lambda: self._client.eval(_ACQUIRE_LEASE, 1, key, owner, milliseconds)
        )
        return bool(taken)

    def release_lease(self, name: str, owner: str) -> bool:
        """Delete the lease if ``owner`` holds it (compare-and-delete in Lua)."""
        key = self._lease_key(name)
        released = self._retrying("release a lease in", lambda: self._client.eval(_RELEASE_LEASE, 1, key, owner))
        return bool(released)

    def lease_owner(self, name: str) -> str | None:
        """The holder of lease ``name`` (Redis expires it), or ``None``."""
        value = self._retrying("read a lease from", lambda: self._lean.call("GET", self._lease_key(name)))
        return None if value is None else bytes(value).decode()

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        value = self._retrying("read from", lambda: self._lean.call("GET", self._meta_key(key)))
        return None if value is None else bytes(value).decode()

    def set_meta(self, key: str, value: str, *, lease: str | None = None, owner: str | None = None) -> bool:
        """``SET`` the value; fenced by ``lease``/``owner`` in one Lua script when given."""
        meta_key = self._meta_key(key)
        if lease is None:
            self._retrying("write to", lambda: self._lean.call("SET", meta_key, value))
            return True
        lease_key = self._lease_key(lease)
        written = self._retrying(
            "write to", lambda: self._client.eval(_FENCED_SET, 2, lease_key, meta_key, owner or "", value)
        )
        return bool(written)

    def delete_meta(self, key: str) -> bool:
        """``DEL`` the value; returns whether there was one."""
        deleted = self._retrying("delete from", lambda: self._lean.call("DEL", self._meta_key(key)))
        return bool(deleted)


#: KEYS[1] lease, ARGV[1] owner, ARGV[2] milliseconds -> 1 if the owner holds the lease now.
_ACQUIRE_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
#: KEYS[1] lease, ARGV[1] owner -> 1 if it was held by the owner and is now deleted.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: KEYS[1] lease, KEYS[2] value key, ARGV[1] owner, ARGV[2] value -> 1 if written.
_FENCED_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) return 1 end
return 0
"""
