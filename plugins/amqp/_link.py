"""One AMQP connection shared by the threads of a transport or result store.

py-amqp connections are not thread-safe, so every use of one holds the link's lock
(``Link.cond``). Nobody holds it while *waiting*: a thread that needs something to arrive
(a fetch, a subscription, a result) becomes the link's **reader** -- it waits in
``select()`` on the socket and a wake-up pipe with the lock released, then takes the lock to
read whatever arrived without blocking. Other waiting threads sleep on the condition variable
and are notified after every read, so one socket read serves them all and an ack from another
thread never waits behind a blocked read.

A link reconnects by itself: when the connection breaks, it is dropped at once (RabbitMQ
returns its unacked messages to their queues), and the next use connects again, with an
exponential backoff between failed attempts (0.1 s doubling to 5 s). Subclasses re-create
their channels, declarations and consumers in ``on_connected_locked``.

A :class:`Keeper` thread services idle links: it reads what arrived and sends heartbeats, so a
worker whose pool is busy for longer than the heartbeat interval keeps its connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import amqp
import celeriac
from kombu.connection import Connection as KombuConnection

from ._framing import frame_handler
from ._options import AMQPOptions

__all__ = ["IO_ERRORS", "Declarer", "Keeper", "Link", "describe"]

logger = logging.getLogger("celeriac.amqp")

#: What py-amqp raises when a connection or channel is unusable. AttributeError: py-amqp
#: sometimes trips over its own torn-down objects after the socket died.
IO_ERRORS: tuple[type[BaseException], ...] = (amqp.exceptions.AMQPError, OSError, AttributeError)

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def describe(exc: BaseException) -> str:
    """A one-line description of a py-amqp or socket error."""
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, OSError | amqp.exceptions.AMQPError) else f"{type(exc).__name__}: {text}"


def open_channel(connection: amqp.Connection) -> amqp.Channel:
    """A new channel that leaves message bodies as bytes (py-amqp decodes them by default)."""
    channel = amqp.Channel(connection, auto_decode=False)
    channel.open()
    return channel


class Declarer:
    """Declares queues, exchanges and bindings once per connection, on a channel of its own.

    A queue or exchange that already exists with other settings (made by hand, by Celery or by
    an older configuration) is used as it is: RabbitMQ refuses the declaration with 406
    PRECONDITION_FAILED and closes the channel (py-amqp re-opens it), so the declarer checks
    that the entity exists with a passive declaration and logs one warning.
    """

    def __init__(self, connection: amqp.Connection) -> None:
        self._connection = connection
        self._channel: amqp.Channel | None = None
        self.done: set[tuple[str, ...]] = set()

    @property
    def channel(self) -> amqp.Channel:
        if self._channel is None or not self._channel.is_open:
            self._channel = open_channel(self._connection)
        return self._channel

    def queue(self, name: str, *, durable: bool, arguments: dict[str, Any], exclusive: bool = False) -> str:
        """Declare queue ``name`` (``""``: a server-named one); returns its name."""
        if name and ("queue", name) in self.done:
            return name
        try:
            declared = self.channel.queue_declare(
                name, durable=durable, exclusive=exclusive, auto_delete=exclusive, arguments=arguments
            )
        except amqp.exceptions.PreconditionFailed as exc:
            declared = self.channel.queue_declare(name, passive=True)
            logger.warning("queue %r exists with other settings (%s); using it as it is", name, exc.reply_text)
        self.done.add(("queue", declared.queue))
        return str(declared.queue)

    def exchange(self, name: str, kind: str, *, durable: bool, arguments: dict[str, Any] | None = None) -> None:
        """Declare exchange ``name`` of type ``kind`` (never auto-deleted)."""
        if ("exchange", name) in self.done:
            return
        try:
            self.channel.exchange_declare(name, kind, durable=durable, auto_delete=False, arguments=arguments or {})
        except amqp.exceptions.PreconditionFailed as exc:
            self.channel.exchange_declare(name, kind, passive=True)
            logger.warning("exchange %r exists with other settings (%s); using it as it is", name, exc.reply_text)
        self.done.add(("exchange", name))

    def bind(self, queue: str, exchange: str, routing_key: str, arguments: dict[str, Any] | None = None) -> None:
        """Bind ``queue`` to ``exchange``."""
        key = ("binding", queue, exchange, routing_key)
        if key not in self.done:
            self.channel.queue_bind(queue, exchange, routing_key, arguments=arguments or {})
            self.done.add(key)

    def message_count(self, queue: str) -> int:
        """Ready messages on ``queue`` (0 when it does not exist)."""
        try:
            return int(self.channel.queue_declare(queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return 0

    def purge(self, queue: str) -> int:
        """Delete the ready messages of ``queue``; returns how many (0 when it does not exist)."""
        try:
            self.channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            return 0
        return int(self.channel.queue_purge(queue) or 0)


class Link:
    """One connection to RabbitMQ, its lock, and how it reconnects (see the module docstring)."""

    #: Used in log lines and thread names.
    role = "connection"

    def __init__(self, url: str, options: AMQPOptions) -> None:
        self.options = options
        #: Every use of ``connection`` (and of the subclass's state) holds this lock.
        self.cond = threading.Condition(threading.Lock())
        self.connection: amqp.Connection | None = None
        #: Bumped at every new connection: settling a delivery of an older one does nothing.
        self.generation = 0
        #: Bumped by :meth:`wake`: readers return early.
        self.wake_generation = 0
        self.closed = False
        self.declarer: Declarer | None = None
        kwargs: dict[str, Any] = {
            "heartbeat": options.heartbeat,
            "connect_timeout": options.connect_timeout,
            "transport_options": {
                # Bound every blocking socket operation (a half-open connection fails instead
                # of hanging); waits for messages use select() and are not affected.
                "read_timeout": options.confirm_timeout,
                "write_timeout": options.confirm_timeout,
                "frame_handler": frame_handler,  # reads message headers faster than py-amqp's
                "on_blocked": self._on_blocked,
                "on_unblocked": self._on_unblocked,
            },
        }
        if options.ssl is not None:
            kwargs["ssl"] = options.ssl
        if options.login_method is not None:
            kwargs["login_method"] = options.login_method
        self._kombu = KombuConnection(url, **kwargs)  # type: ignore[no-untyped-call]
        #: The broker URL with the password masked, for messages.
        self.address: str = self._kombu.as_uri()
        self.blocked_reason: str | None = None
        self.last_error = "not connected yet"
        self._failures = 0
        self._lost = False
        self._next_attempt = 0.0
        self._reading = False
        self._next_heartbeat = 0.0
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._finalizer = weakref.finalize(self, _close_fds, self._wake_read, self._wake_write)

    # -- hooks for subclasses (lock held) ------------------------------------------------------

    def on_connected_locked(self) -> None:
        """Open channels, declare, start consumers on the new ``self.connection``."""

    def on_lost_locked(self) -> None:
        """Forget state that belonged to the connection that just broke."""

    # -- connecting (lock held) ----------------------------------------------------------------

    @property
    def tick(self) -> float:
        """How often an idle connection is serviced: a quarter of the heartbeat interval."""
        heartbeat = self.connection.heartbeat if self.connection is not None else self.options.heartbeat
        return max(heartbeat / 4, 0.5) if heartbeat else 30.0

    def check_open(self) -> None:
        if self.closed:
            raise celeriac.TransportError(f"the AMQP {self.role} to {self.address} is closed")

    def try_connect_locked(self) -> bool:
        """Connect unless connected or waiting out the backoff; True when connected."""
        if self.connection is not None:
            return True
        self.check_open()
        if time.monotonic() < self._next_attempt:
            return False
        try:
            connection = self._kombu.transport.establish_connection()
        except Exception as exc:
            self._failed(exc)
            return False
        _buffer_reads(connection)
        self.connection = connection
        self.generation += 1
        self.declarer = Declarer(connection)
        self._next_heartbeat = time.monotonic() + self.tick
        try:
            self.on_connected_locked()
        except IO_ERRORS as exc:
            self.lost_locked(exc, quiet=True)
            self._failed(exc)
            return False
        if self._failures or self._lost:
            logger.warning("reconnected to %s (%s)", self.address, self.role)
        self._failures = 0
        self._lost = False
        self.cond.notify_all()
        return True

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self.last_error = describe(exc)
        delay = min(_BACKOFF_FIRST * 2 ** (self._failures - 1), _BACKOFF_MAX)
        self._next_attempt = time.monotonic() + delay
        level = logging.WARNING if self._failures == 1 or self._failures % 20 == 0 else logging.DEBUG
        logger.log(
            level, "cannot connect to %s (%s): %s; retrying in %.1fs", self.address, self.role, self.last_error, delay
        )
        with contextlib.suppress(Exception):
            self._kombu.maybe_switch_next()  # type: ignore[no-untyped-call]  # failover URLs ("amqp://a;amqp://b")

    def connect_before_locked(self, deadline: float) -> amqp.Connection:
        """The connection, connecting (with backoff) until ``deadline``; then TransportError."""
        while not self.try_connect_locked():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise celeriac.TransportError(f"cannot reach RabbitMQ at {self.address}: {self.last_error}")
            self.cond.wait(min(remaining, max(self._next_attempt - time.monotonic(), 0.0)))
        assert self.connection is not None
        return self.connection

    def lost_locked(self, exc: BaseException, *, quiet: bool = False) -> None:
        """The connection broke: drop it (RabbitMQ requeues its unacked messages); the next use
        reconnects."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        self.declarer = None
        self.last_error = describe(exc)
        if not quiet and not self.closed:
            self._lost = True
            logger.warning("lost the connection to %s (%s): %s; reconnecting", self.address, self.role, self.last_error)
        self.on_lost_locked()
        with contextlib.suppress(Exception):
            connection.collect()
        self._next_attempt = time.monotonic()
        self.cond.notify_all()

    # -- reading (lock held) -------------------------------------------------------------------

    def read_available_locked(self) -> None:
        """Dispatch every complete frame already received, without blocking; send a heartbeat
        when one is due. A broken connection is dropped."""
        connection = self.connection
        if connection is None:
            return
        try:
            # Read every complete frame without blocking, then dispatch them with the socket
            # blocking again (a dispatch may wait for a reply, e.g. py-amqp re-opening a
            # channel the server closed): py-amqp's drain_events(timeout=0), in fewer steps.
            for frame in _read_frames(connection.transport):
                connection.on_inbound_frame(frame)
        except IO_ERRORS as exc:
            self.lost_locked(exc)
            return
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.tick
            try:
                connection.heartbeat_tick(rate=2)
            except IO_ERRORS as exc:
                self.lost_locked(exc)

    def wait_locked(self, timeout: float) -> None:
        """Wait up to ``timeout`` for something to arrive, :meth:`wake`, or a notification.

        The first waiting thread becomes the reader: it releases the lock and waits in
        ``select()`` on the socket; the others wait on the condition variable. Call
        :meth:`read_available_locked` afterwards.
        """
        timeout = max(min(timeout, self.tick), 0.0)
        connection = self.connection
        if connection is None or self._reading:
            self.cond.wait(timeout if connection is not None else min(timeout, self._backoff_left()))
            return
        sock = socket_of(connection)
        if sock is None:
            self.cond.wait(timeout)
            return
        # bytes already read: decrypted by TLS, or in py-amqp's read buffer
        buffered = bool(getattr(sock, "pending", lambda: 0)()) or has_buffered_frame(connection)
        self._reading = True
        self.cond.release()
        try:
            if not buffered:
                with contextlib.suppress(OSError, ValueError):  # the socket closed under us
                    select.select([sock.fileno(), self._wake_read], [], [], timeout)
            with contextlib.suppress(OSError):
                os.read(self._wake_read, 4096)
        finally:
            self.cond.acquire()
            self._reading = False
            self.cond.notify_all()

    def _backoff_left(self) -> float:
        return max(self._next_attempt - time.monotonic(), 0.0)

    # -- any thread ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Make waiting readers return (they see ``wake_generation`` changed)."""
        with self.cond:
            self.wake_generation += 1
            self.cond.notify_all()
        self.poke()

    def poke(self) -> None:
        """Interrupt the reader's ``select()`` so it re-checks what it waits for."""
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def service(self) -> None:
        """Called by the keeper: read what arrived and heartbeat, unless someone is busy."""
        if not self.cond.acquire(blocking=False):
            return
        try:
            if self.connection is not None and not self._reading:
                self.read_available_locked()
                self.cond.notify_all()
        finally:
            self.cond.release()

    def close(self) -> None:
        """Close the connection (unacked messages go back to their queues); idempotent."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.wake_generation += 1
            connection, self.connection = self.connection, None
            self.declarer = None
            self.on_lost_locked()
            self.cond.notify_all()
            self.poke()
            if connection is not None:
                try:
                    connection.close()
                except Exception:
                    with contextlib.suppress(Exception):
                        connection.collect()
        with contextlib.suppress(Exception):
            self._kombu.release()  # type: ignore[no-untyped-call]
        self._finalizer()

    def _on_blocked(self, reason: str) -> None:
        self.blocked_reason = reason
        logger.warning("RabbitMQ at %s blocks publishing: %s", self.address, reason)

    def _on_unblocked(self) -> None:
        self.blocked_reason = None
        logger.warning("RabbitMQ at %s accepts publishing again", self.address)


#: How much one socket read may take (py-amqp asks for exactly one frame part at a time).
_READ_CHUNK = 8192


def _buffer_reads(connection: amqp.Connection) -> None:
    """Let py-amqp's TCP transport read up to ``_READ_CHUNK`` bytes per ``recv`` when it reads
    by itself (waiting for a reply or a confirm) instead of one frame part (7 bytes, the
    payload, 1 byte) at a time. Its ``_read`` keeps what it did not need in its read buffer,
    which :func:`_read_frames` continues from and a reader checks before waiting on the socket
    (:func:`has_buffered_frame`)."""
    transport: Any = getattr(connection, "transport", None)
    sock = getattr(transport, "sock", None)
    if type(transport).__name__ != "TCPTransport" or sock is None or not hasattr(transport, "_quick_recv"):
        return
    recv = sock.recv
    transport._quick_recv = lambda size: recv(max(size, _READ_CHUNK))


_FRAME_HEADER = struct.Struct(">BHI").unpack_from
_FRAME_END = 206


def _read_frames(transport: Any) -> list[tuple[int, int, bytes]]:
    """Every complete frame received so far, without blocking.

    On plain TCP this reads the socket in large chunks and splits the frames in one loop (a
    partial frame stays in py-amqp's read buffer, where its own reader continues); on TLS it
    lets py-amqp read frame by frame. Raises ``OSError`` when the connection is gone.
    """
    sock = transport.sock
    previous = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        if type(transport).__name__ != "TCPTransport" or not isinstance(transport._read_buffer, bytes):
            frames = []
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(transport.read_frame())
            return frames
        chunks = [transport._read_buffer]
        while True:
            try:
                data = sock.recv(_READ_CHUNK * 8)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise OSError("Server unexpectedly closed connection")
            chunks.append(data)
            if len(data) < _READ_CHUNK * 8:
                break
    finally:
        if transport.sock is sock:
            sock.settimeout(previous)
    buffer = b"".join(chunks)
    frames, position, end = [], 0, len(buffer)
    while end - position >= 8:
        frame_type, channel, size = _FRAME_HEADER(buffer, position)
        stop = position + 7 + size
        if stop >= end:
            break
        if buffer[stop] != _FRAME_END:
            raise amqp.exceptions.UnexpectedFrame(f"Received frame_end {buffer[stop]:#04x} while expecting 0xce")
        frames.append((frame_type, channel, buffer[position + 7 : stop]))
        position = stop + 1
    transport._read_buffer = buffer[position:]
    return frames


def has_buffered_frame(connection: amqp.Connection) -> bool:
    """True when py-amqp's read buffer holds a whole frame (so the socket may stay quiet)."""
    buffered = getattr(getattr(connection, "transport", None), "_read_buffer", b"")
    return len(buffered) >= 8 and len(buffered) >= 8 + int.from_bytes(buffered[3:7], "big")


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Keeper:
    """A daemon thread that services idle links every ``interval`` seconds (heartbeats, and
    reading what arrived so RabbitMQ's heartbeats are seen)."""

    def __init__(self, links: Sequence[Link], interval: float, name: str) -> None:
        # weak references: a transport that is dropped without close() does not live on here
        self._links = [weakref.ref(link) for link in links]
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            links = [link for ref in self._links if (link := ref()) is not None and not link.closed]
            if not links:
                return
            for link in links:
                link.service()
            del links

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)


def socket_of(connection: amqp.Connection) -> socket.socket | None:
    """The socket under ``connection`` (None when it is torn down)."""
    transport = getattr(connection, "transport", None)
    return getattr(transport, "sock", None)
