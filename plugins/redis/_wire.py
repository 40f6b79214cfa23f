"""A lean command path for the hot commands (fetch and settle scripts, publishes).

redis-py spends more time per command than the round trip itself on loopback (connection-pool
bookkeeping, observability hooks, a general parser); on the hot path that is most of the cost
of a task. :class:`Wire` lets redis-py open each connection (TLS, unix sockets, AUTH, SELECT)
and then talks RESP2 on its socket directly: one connection per thread (no pool), a packer for
bytes/str/int arguments and a small reply parser. Errors are redis-py's exception classes, so
callers handle both paths alike. Anything unusual stays on the redis-py client.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import redis

__all__ = ["Connection", "Script", "Wire"]

_CRLF = b"\r\n"


def _pack(args: Sequence[Any], out: list[bytes]) -> None:
    out.append(b"*%d\r\n" % len(args))
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif isinstance(arg, bytes | bytearray | memoryview):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise redis.exceptions.DataError(f"cannot send {type(arg).__name__} to redis")
        if len(data) < 4096:
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
        else:  # no copy of a large body into a new string
            out += (b"$%d\r\n" % len(data), data, _CRLF)


class Connection:
    """One socket opened by redis-py, read with a buffer of our own."""

    __slots__ = ("__weakref__", "buffer", "connection", "pid", "position", "sock")

    def __init__(self, connection: Any) -> None:
        connection.connect()
        self.connection = connection  # keeps redis-py's connection (and its socket) alive
        self.sock: socket.socket = connection._sock  # redis-py opened and authenticated it
        self.buffer = b""
        self.position = 0
        self.pid = os.getpid()  # a forked child opens its own

    def close(self) -> None:
        self.connection.disconnect()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise redis.exceptions.TimeoutError("timeout writing to redis") from None
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"error writing to redis: {exc}") from None

    def _fill(self) -> None:
        try:
            data = self.sock.recv(262144)
        except TimeoutError:
            raise redis.exceptions.TimeoutError("timeout reading from redis") from None
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"error reading from redis: {exc}") from None
        if not data:
            raise redis.exceptions.ConnectionError("redis closed the connection")
        if self.position:
            self.buffer = self.buffer[self.position :] + data
            self.position = 0
        else:
            self.buffer += data

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(_CRLF, self.position)
            if end >= 0:
                line = self.buffer[self.position : end]
                self.position = end + 2
                return line
            self._fill()

    def send_command(self, command: Sequence[Any]) -> None:
        """Send one command (its reply is read with :meth:`read`)."""
        out: list[bytes] = []
        _pack(command, out)
        self.send(b"".join(out))

    def request(self, command: Sequence[Any]) -> Any:
        """Send one command and read its reply (an error reply is returned, not raised); the
        caller drops the connection when this raises (a reply may be half read)."""
        self.send_command(command)
        return self.read()

    def wait_readable(self, seconds: float) -> bool:
        """True once a reply is buffered or arriving, False after ``seconds`` without one."""
        if self.position < len(self.buffer):
            return True
        pending = getattr(self.sock, "pending", None)  # TLS: bytes decrypted but not read yet
        if pending is not None and pending():
            return True
        try:
            if hasattr(select, "poll"):  # no limit on descriptor numbers, unlike select()
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(max(seconds, 0.0) * 1000))
            readable, _, _ = select.select([self.sock], [], [], max(seconds, 0.0))
        except (OSError, ValueError) as exc:
            raise redis.exceptions.ConnectionError(f"error waiting for redis: {exc}") from None
        return bool(readable)

    def read(self) -> Any:
        """One reply; an error reply is returned (not raised) as a ``ResponseError``."""
        line = self._line()
        kind = line[:1]
        if kind == b"$":
            size = int(line[1:])
            if size < 0:
                return None
            while len(self.buffer) - self.position < size + 2:
                self._fill()
            start = self.position
            self.position = start + size + 2
            return self.buffer[start : start + size]
        if kind == b"*":
            count = int(line[1:])
            return None if count < 0 else [self.read() for _ in range(count)]
        if kind == b":":
            return int(line[1:])
        if kind == b"+":
            return line[1:]
        if kind == b"-":
            message = line[1:].decode(errors="replace")
            if message.startswith("NOSCRIPT"):
                return redis.exceptions.NoScriptError(message)
            return redis.exceptions.ResponseError(message)
        raise redis.exceptions.InvalidResponse(f"unexpected reply from redis: {line[:40]!r}")


class Wire:
    """Per-thread connections made by ``client``'s pool; thread-safe."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()
        self._all: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.pid != os.getpid():
            if self._closed:
                raise redis.exceptions.ConnectionError("the connection was closed")
            connection = Connection(self._pool.make_connection())
            with self._lock:
                self._all.add(connection)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write, read every reply; error replies are returned."""
        out: list[bytes] = []
        for command in commands:
            _pack(command, out)
        connection = self._connection()
        try:
            connection.send(b"".join(out))
            return [connection.read() for _ in commands]
        except BaseException:
            self._drop()  # a half-read reply would poison the next command
            raise

    def call(self, *args: Any) -> Any:
        """One command; an error reply is raised."""
        [reply] = self.pipeline([args])
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._all)
        for connection in connections:
            connection.close()


class Script:
    """A Lua script called by its SHA1, loaded on ``NOSCRIPT`` (after a restart, say)."""

    def __init__(self, wire: Wire, source: str) -> None:
        self.wire = wire
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self.wire.call(*self.command(keys, args))
        except redis.exceptions.NoScriptError:
            self.wire.call("SCRIPT", "LOAD", self.source)
            return self.wire.call(*self.command(keys, args))
