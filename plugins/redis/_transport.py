"""The ``redis://`` transport: Redis Streams with one consumer group per stream.

See the package docstring (:mod:`celeriac.plugins.redis`) for the key layout and the
delivery guarantees. Everything that must be atomic runs as a Lua script (:mod:`._scripts`):
the fetch script (due delayed messages, lease sweep, new priority levels and reads together)
and one settle call per batch of acks. A fetch that finds nothing blocks in ``XREADGROUP
BLOCK`` on separate connections whose socket timeout exceeds the longest block; a fetch soon
after the script ran (nothing due, no wake-up since) goes straight to that ``XREADGROUP``,
which returns at once when entries are ready — one command per fetch on the hot path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import celeriac
import redis
from celeriac.plugins.redis import _scripts
from celeriac.plugins.redis._blocking import BlockingReader, Stream
from celeriac.plugins.redis._broadcast import RedisSubscription
from celeriac.plugins.redis._codec import decode, delayed_member, encode, extra_headers, frame
from celeriac.plugins.redis._connection import command_errors, connection_errors, describe, make_client, parse_options
from celeriac.plugins.redis._wire import Script, Wire

__all__ = ["RedisTransport"]

logger = logging.getLogger("celeriac.redis")
T = TypeVar("T")

GROUP = "celeriac"
#: Longest single ``XREADGROUP BLOCK``; longer fetches block several times.
MAX_BLOCK = 2.0
#: How long a fetch may skip the fetch script after it last ran (see ``_fetch``): bounds how
#: late this consumer notices a new priority level whose wake-up entry another consumer read.
SHORTCUT_LIFETIME = 0.1
_LEVELS = range(_scripts.LEVELS - 1, -1, -1)  # 9 .. 0, the order of keys in a queue's block


def _no_script(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def _undecodable(body: bytes, error: Exception) -> celeriac.Envelope:
    """An envelope the worker will dead-letter (its content type is not accepted anywhere)."""
    return celeriac.Envelope(body, "application/x-celeriac-undecodable", "binary", {"x-decode-error": str(error)}, {})


class RedisTransport(celeriac.Transport):
    """Queues as Redis streams (one per priority level), consumed through a consumer group.

    Thread-safe: one instance serves every thread of an app (each call takes a pooled
    connection). Settling a delivery this consumer no longer holds (settled already, or claimed
    by another consumer after its lease ran out) does nothing.
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")

    def __init__(
        self, url: str, options: Mapping[str, Any] | None = None, *, publish_timeout: float | None = None
    ) -> None:
        super().__init__(url, options)
        clean_url, self.settings = parse_options(url, self.options, publish_timeout=publish_timeout)
        self.visibility_timeout = self.settings.visibility_timeout
        self.options["visibility_timeout"] = self.visibility_timeout  # what the worker's lease keeper reads
        self.where = describe(url)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._client = make_client(clean_url, self.settings)
        self._prefix = self.settings.global_keyprefix + "celeriac:"
        self._database = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._wire = Wire(self._client)
        sources = {name: getattr(_scripts, name) for name in _scripts.__all__}
        self._scripts = {
            name: Script(self._wire, source) for name, source in sources.items() if isinstance(source, str)
        }
        self._reader = BlockingReader(
            make_client(clean_url, self.settings, socket_timeout=MAX_BLOCK + self.settings.socket_timeout),
            self._client,
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._overflow: deque[celeriac.Delivery] = deque()
        self._declared: set[str] = set()
        self._consumed: set[str] = set()
        self._keys: dict[tuple[str, ...], list[str]] = {}
        self._shortcuts: dict[tuple[str, ...], tuple[list[int], float, float]] = {}  # masks, due, expiry
        self._rotation = 0
        self._generation = 0
        self._fetching = 0
        self._closed = False
        self._sweep_period = min(max(self.visibility_timeout / 4, 0.05), 5.0)
        self._next_sweep = 0.0
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._subscriptions: weakref.WeakSet[RedisSubscription] = weakref.WeakSet()

    @property
    def needs_lease_extension(self) -> bool:
        """Always: an entry idle longer than ``visibility_timeout`` is claimed by others."""
        return True

    # -- keys --------------------------------------------------------------------------------

    def stream_key(self, queue: str, level: int = 0) -> str:
        """The stream holding ``queue``'s messages of priority ``level``."""
        return f"{self._prefix}q{level}:{queue}"

    def _delayed_key(self, queue: str) -> str:
        return f"{self._prefix}eta:{queue}"

    def _wake_key(self, queue: str) -> str:
        return f"{self._prefix}wake:{queue}"

    def _queue_keys(self, queue: str) -> list[str]:
        """The keys the fetch script takes for one queue."""
        return [
            self._delayed_key(queue),
            f"{self._prefix}sweep:{queue}",
            *(self.stream_key(queue, level) for level in _LEVELS),
        ]

    def _channel_key(self, channel: str) -> str:
        return f"{self._prefix}broadcast:{self._database}:{channel}"

    # -- plumbing ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise celeriac.TransportError(f"the redis transport for {self.where} is closed")

    def _retrying(self, action: str, call: Callable[[], T]) -> T:
        """Run ``call``, retrying while Redis is unreachable for up to ``publish_timeout``."""
        deadline = time.monotonic() + self.settings.publish_timeout
        delay = 0.05
        while True:
            try:
                return call()
            except redis.exceptions.AuthenticationError as exc:
                raise celeriac.TransportError(f"redis at {self.where} refused the credentials: {exc}") from None
            except connection_errors as exc:
                if self._closed or time.monotonic() + delay >= deadline:
                    raise celeriac.TransportError(
                        f"cannot {action} redis at {self.where}: {exc}; is redis-server running there and "
                        f"broker_url right? (gave up after {self.settings.publish_timeout:g}s)"
                    ) from None
                self._pause(delay)
                delay = min(delay * 2, 1.0)
            except redis.exceptions.ResponseError as exc:
                raise celeriac.TransportError(f"redis at {self.where} refused to {action}: {exc}") from None

    def _pause(self, seconds: float) -> None:
        """Sleep, but return early on :meth:`wake` or :meth:`close`."""
        with self._changed:
            generation = self._generation
            self._changed.wait_for(lambda: self._generation != generation, timeout=seconds)

    def _lost(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = self._outage_logged = now
            elif now - self._outage_logged >= 30:
                self._outage_logged = now
            else:
                return
            since = self._outage_since or now
        if first:
            logger.warning("lost the connection to redis at %s (%s); reconnecting", self.where, exc)
        else:
            logger.warning("redis at %s still unreachable after %.0fs (%s)", self.where, now - since, exc)

    def _recovered(self) -> None:
        with self._lock:
            since, self._outage_since = self._outage_since, None
            if since is not None:
                self._declared.clear()  # a restarted server may have lost the groups
        if since is not None:
            logger.warning("reconnected to redis at %s after %.1fs", self.where, time.monotonic() - since)

    # -- publishing --------------------------------------------------------------------------

    def _publish_command(self, envelope: celeriac.Envelope, queue: str, eta: float | None) -> list[Any]:
        """The command that publishes ``envelope``: XADD, or a script for delayed messages and
        priority levels above 0."""
        head, body = encode(envelope)
        level = envelope.priority
        if eta is not None and eta > time.time():
            return self._scripts["PUBLISH_DELAYED"].command(
                [self._delayed_key(queue), self._wake_key(queue)], [int(eta * 1000), delayed_member(level, head, body)]
            )
        if level == 0:
            return ["XADD", self.stream_key(queue), "*", "h", head, "b", body]
        keys = [self.stream_key(queue, level), self._wake_key(queue)]
        return self._scripts["PUBLISH_LEVEL"].command(keys, [head, body])

    def _send(self, commands: list[list[Any]]) -> None:
        """Run ``commands`` in one round trip; those whose script was not loaded (a restarted
        server) run again once it is, the others are never sent twice."""
        replies = self._wire.pipeline(commands)
        unloaded = [command for command, reply in zip(commands, replies, strict=True) if _no_script(reply)]
        if unloaded:
            for script in self._scripts.values():
                self._wire.call("SCRIPT", "LOAD", script.source)
            replies = self._wire.pipeline(unloaded)
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply

    def publish(self, envelope: celeriac.Envelope, queue: str, *, eta: float | None = None) -> None:
        """Add ``envelope`` to ``queue`` (to its delayed set when ``eta`` is ahead)."""
        self._check_open()
        command = self._publish_command(envelope, queue, eta)
        self._retrying("publish to", lambda: self._send([command]))

    def publish_many(self, items: Iterable[tuple[celeriac.Envelope, str]]) -> None:
        """Publish several envelopes in one pipeline (one round trip)."""
        self._check_open()
        commands = [self._publish_command(envelope, queue, None) for envelope, queue in items]
        if commands:
            self._retrying("publish to", lambda: self._send(commands))

    # -- consuming ---------------------------------------------------------------------------

    def declare_queue(self, queue: str) -> None:
        """Create the consumer group of ``queue``'s level-0 stream and wake stream."""
        self._check_open()
        self._retrying("declare a queue on", lambda: self._declare([queue]))

    def _declare(self, queues: Iterable[str]) -> None:
        missing = [queue for queue in queues if queue not in self._declared]
        if not missing:
            return
        pipeline = self._client.pipeline(transaction=False)
        for queue in missing:
            pipeline.execute_command("XGROUP", "CREATE", self.stream_key(queue), GROUP, "0", "MKSTREAM")
            pipeline.execute_command("XGROUP", "CREATE", self._wake_key(queue), GROUP, "$", "MKSTREAM")
        for result in pipeline.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
        with self._lock:
            self._declared.update(missing)

    def fetch(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[celeriac.Delivery]:
        """Take up to ``limit`` deliveries, blocking up to ``timeout`` seconds.

        While Redis is unreachable this keeps reconnecting (with backoff) until ``timeout``
        passes and then returns ``[]``; the log says when the connection was lost and when it
        came back.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._check_open()
            if self._overflow:
                return [self._overflow.popleft() for _ in range(min(limit, len(self._overflow)))]
            if not queues:
                return []
            generation = self._generation
            self._rotation += 1
            start = self._rotation % len(queues)
            self._fetching += 1
        try:
            ordered = (*queues[start:], *queues[:start])
            self._consumed.update(ordered)
            return self._fetch(ordered, limit, deadline, generation)
        finally:
            with self._changed:
                self._fetching -= 1
                self._changed.notify_all()

    def _fetch(self, queues: tuple[str, ...], limit: int, deadline: float, generation: int) -> list[celeriac.Delivery]:
        keys = self._keys.get(queues)
        if keys is None:
            keys = self._keys[queues] = [key for queue in queues for key in self._queue_keys(queue)]
        backoff = 0.05
        shortcut = self._shortcuts.pop(queues, None)
        early: list[celeriac.Delivery] = []  # read alongside a wake-up entry
        while True:
            if self._closed or self._generation != generation:
                if early:  # ours already: kept for the next fetch (close() hands them back)
                    with self._lock:
                        self._overflow.extend(early)
                return []
            now = time.monotonic()
            try:
                if shortcut is not None:
                    # The last fetch script ran less than SHORTCUT_LIFETIME ago, found nothing
                    # due before now and no sweep is due: read the streams it saw directly
                    # (XREADGROUP returns at once when entries are there), one command instead
                    # of the script. Anything else — nothing read, a wake-up entry (a new
                    # level or an earlier ETA: what was read is merged with what the script
                    # finds, by priority), an error — goes through the script.
                    masks, due, expiry = shortcut
                    shortcut = None
                    until = min(deadline, due, expiry, self._next_sweep)
                    if until - now >= 0.001:
                        deliveries, woken = self._block(queues, masks, limit, until - now, generation, due <= until)
                        if deliveries and not woken:
                            self._shortcuts[queues] = (masks, due, expiry)
                            return self._keep_overflow(deliveries, limit)
                        early = deliveries
                    now = time.monotonic()
                sweep = 0
                if now >= self._next_sweep:
                    sweep = max(int(self._sweep_period * 1000), 1)
                    self._next_sweep = now + self._sweep_period
                self._declare(queues)
                reply = self._scripts["FETCH"](
                    keys=keys,
                    args=[
                        GROUP,
                        self.consumer,
                        limit,
                        int(time.time() * 1000),
                        int(self.visibility_timeout * 1000),
                        sweep,
                        len(queues),
                    ],
                )
                self._recovered()
                masks = reply[1 : 1 + len(queues)]
                due, expiry = self._due(reply[0]), now + SHORTCUT_LIFETIME
                deliveries = self._deliveries(queues, keys, reply)
                if deliveries or early:
                    self._shortcuts[queues] = (masks, due, expiry)
                    return self._keep_overflow([*early, *deliveries], limit)
                until = min(deadline, self._next_sweep, due)
                block = until - time.monotonic()
                if block >= 0.001:
                    deliveries, woken = self._block(queues, masks, limit, block, generation, due <= until)
                    if deliveries:
                        if not woken:
                            self._shortcuts[queues] = (masks, due, expiry)
                        return self._keep_overflow(deliveries, limit)
                backoff = 0.05
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise celeriac.TransportError(f"redis at {self.where} refused to fetch: {exc}") from None
                with self._lock:
                    self._declared.difference_update(queues)
            except connection_errors as exc:
                self._lost(exc)
                self._pause(min(backoff, max(deadline - time.monotonic(), 0.0)))
                backoff = min(backoff * 2, 1.0)
            if time.monotonic() >= deadline:
                return []

    def _block(
        self,
        queues: tuple[str, ...],
        masks: list[int],
        limit: int,
        seconds: float,
        generation: int,
        precise: bool = False,
    ) -> tuple[list[celeriac.Delivery], bool]:
        """Block on every stream of ``queues`` that exists (``masks``: one bit per level) and
        on their wake streams; the deliveries, and whether a wake-up entry was read.
        ``precise``: the block ends at a delayed message's due time, which must not be late
        (see :meth:`BlockingReader.read`)."""
        streams = [
            Stream(queue, level, self.stream_key(queue, level))
            for queue, mask in zip(queues, masks, strict=True)
            for level in _LEVELS
            if mask >> level & 1
        ]
        streams += [Stream(queue, -1, self._wake_key(queue)) for queue in queues]
        entries, woken = self._reader.read(
            streams,
            GROUP,
            self.consumer,
            limit,
            min(seconds, MAX_BLOCK),
            lambda: self._closed or self._generation != generation,
            precise=precise and seconds <= MAX_BLOCK,
        )
        return [
            self.delivery(
                entry.stream.queue,
                entry.stream.key,
                entry.stream.level,
                entry.id,
                entry.head,
                entry.body,
                entry.extra,
                entry.earlier_deliveries + 1,
            )
            for entry in entries
        ], woken

    @staticmethod
    def _due(next_due_ms: int) -> float:
        """``time.monotonic()`` value of a unix-ms due time (``inf`` for ``-1``)."""
        if next_due_ms < 0:
            return float("inf")
        return time.monotonic() + next_due_ms / 1000 - time.time()

    def _deliveries(self, queues: tuple[str, ...], keys: list[str], reply: list[Any]) -> list[celeriac.Delivery]:
        found: list[celeriac.Delivery] = []
        items = reply[1 + len(queues) :]
        per_queue = _scripts.KEYS_PER_QUEUE
        for index in range(0, len(items), 7):
            number, level, entry, head, body, extra, count = items[index : index + 7]
            key = keys[(number - 1) * per_queue + 2 + 9 - level]
            found.append(self.delivery(queues[number - 1], key, level, entry, head, body, extra, count))
        return found

    @staticmethod
    def delivery(
        queue: str, key: str, level: int, entry: bytes, head: bytes, body: bytes, extra: bytes | None, count: int
    ) -> celeriac.Delivery:
        """A delivery of stream entry ``entry`` of ``key``; its tag is ``(key, entry, level)``."""
        try:
            envelope = decode(head, body, extra)
        except (ValueError, TypeError) as exc:
            envelope = _undecodable(body, exc)
        return celeriac.Delivery(envelope, queue, (key, entry, level), count > 1, count)

    def _keep_overflow(self, deliveries: list[celeriac.Delivery], limit: int) -> list[celeriac.Delivery]:
        """A blocking read of several streams can return more than ``limit``: keep the rest
        (already in our pending list) for the next fetch, highest priority first."""
        if len(deliveries) <= limit:
            return deliveries
        deliveries.sort(key=lambda delivery: -delivery.tag[2])
        with self._lock:
            self._overflow.extend(deliveries[limit:])
        return deliveries[:limit]

    # -- settling ----------------------------------------------------------------------------

    def _settle(self, mode: str, deliveries: Iterable[celeriac.Delivery], reason: str = "") -> None:
        keys: list[str] = []
        numbers: dict[str, int] = {}
        args: list[Any] = [GROUP, self.consumer, mode]
        for delivery in deliveries:
            tag = delivery.tag
            if not (isinstance(tag, tuple) and len(tag) == 3):
                continue  # not one of ours: nothing to settle
            key, entry, level = tag
            if key not in numbers:
                keys.append(key)
                numbers[key] = len(keys)
            args += [numbers[key], entry]
            if mode == "dead":
                target = self.stream_key(self.dead_letter_queue(delivery.queue), level)
                if target not in numbers:
                    keys.append(target)
                    numbers[target] = len(keys)
                headers = {"x-death-reason": reason, "x-death-queue": delivery.queue, "x-death-time": time.time()}
                args += [numbers[target], extra_headers(headers)]
        if len(args) > 3:
            script = self._scripts["SETTLE"]
            self._retrying("settle messages on", lambda: script(keys, args))

    def ack(self, delivery: celeriac.Delivery) -> None:
        """Acknowledge ``delivery``: XACK and XDEL (acked entries are trimmed at once)."""
        self._settle("ack", [delivery])

    def ack_many(self, deliveries: Iterable[celeriac.Delivery]) -> None:
        """Acknowledge several deliveries in one script call."""
        self._settle("ack", deliveries)

    def reject(self, delivery: celeriac.Delivery, *, requeue: bool) -> None:
        """Drop ``delivery``, or (``requeue``) add it again at the end of its stream."""
        self._settle("requeue" if requeue else "ack", [delivery])

    def dead_letter(self, delivery: celeriac.Delivery, reason: str) -> None:
        """Atomically move ``delivery`` to its queue's dead-letter stream (same priority level)."""
        self._settle("dead", [delivery], reason)

    def extend_lease(self, deliveries: Sequence[celeriac.Delivery], seconds: float) -> None:
        """Renew the lease of ``deliveries`` (and of any kept for the next fetch): their idle
        time restarts, so nobody claims them for another ``visibility_timeout``."""
        with self._lock:
            overflow = list(self._overflow)
        self._settle("extend", [*deliveries, *overflow])

    # -- queues ------------------------------------------------------------------------------

    def queue_length(self, queue: str) -> int:
        """Entries of ``queue`` not yet delivered, over every priority level."""
        keys = [self.stream_key(queue, level) for level in _LEVELS]
        script = self._scripts["QUEUE_LENGTH"]
        return int(self._retrying("read a queue length from", lambda: script(keys, [GROUP])))

    def scheduled(self, queue: str, limit: int = 100) -> list[tuple[float, celeriac.Envelope]]:
        """Delayed messages of ``queue`` (its sorted set), soonest first."""
        key = self._delayed_key(queue)
        reply = self._retrying(
            "list delayed messages on", lambda: self._wire.call("ZRANGE", key, 0, max(0, limit - 1), "WITHSCORES")
        )
        if reply and isinstance(reply[0], list):  # RESP3 answers [member, score] pairs
            pairs = [(member, score) for member, score in reply]
        else:
            pairs = list(zip(reply[::2], reply[1::2], strict=True))
        found = []
        for member, score in pairs:
            size = int(member[17:25], 16)  # level digit, 16 random hex chars, head length
            found.append((float(score) / 1000, decode(member[25 : 25 + size], member[25 + size :])))
        return found

    def oldest_message_age(self, queue: str) -> float:
        """Seconds the oldest ready message of ``queue`` has waited (0.0 when none is ready),
        by the Redis server's clock: entries not yet delivered to the consumer group, and
        delayed messages already due (counted from their due time); delayed messages still
        ahead and delivered (unsettled) ones are not ready."""
        keys = [*(self.stream_key(queue, level) for level in _LEVELS), self._delayed_key(queue)]
        script = self._scripts["OLDEST_MESSAGE_AGE"]
        age_ms = int(self._retrying("read the oldest message of", lambda: script(keys, [GROUP])))
        return max(age_ms, 0) / 1000

    def purge(self, queue: str) -> int:
        """Delete the ready entries of ``queue``; delayed and delivered ones stay."""
        keys = [self.stream_key(queue, level) for level in _LEVELS]
        script = self._scripts["PURGE"]
        return int(self._retrying("purge a queue on", lambda: script(keys, [GROUP])))

    # -- broadcast ---------------------------------------------------------------------------

    def broadcast(self, channel: str, envelope: celeriac.Envelope) -> None:
        """PUBLISH ``envelope`` to every current subscriber of ``channel``."""
        self._check_open()
        data = frame(*encode(envelope))
        key = self._channel_key(channel)
        self._retrying("broadcast on", lambda: self._wire.call("PUBLISH", key, data))

    def subscribe(self, channel: str) -> celeriac.Subscription:
        """SUBSCRIBE to ``channel``; returns once Redis confirmed the subscription."""
        self._check_open()
        subscription = RedisSubscription(
            self._client, self._channel_key(channel), timeout=self.settings.publish_timeout, where=self.where
        )
        self._subscriptions.add(subscription)
        return subscription

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Make fetches blocked right now return ``[]`` (CLIENT UNBLOCK on their connections)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
        self._reader.unblock_all()

    def close(self) -> None:
        """Wake blocked fetches, hand this consumer's unsettled entries back (re-added at the
        end of their streams, so another consumer gets them at once), end subscriptions."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._generation += 1
            self._overflow.clear()
            self._changed.notify_all()
        self._reader.unblock_all()
        with self._changed:
            self._changed.wait_for(lambda: self._fetching == 0, timeout=MAX_BLOCK + 1)
        if self._consumed:
            keys = [
                key
                for queue in sorted(self._consumed)
                for key in (*(self.stream_key(queue, level) for level in _LEVELS), self._wake_key(queue))
            ]
            try:
                self._scripts["RETURN_PENDING"](keys, [GROUP, self.consumer])
            except command_errors as exc:
                logger.warning(
                    "could not hand unsettled messages back to redis at %s (%s); they are redelivered "
                    "after the visibility timeout (%gs)",
                    self.where,
                    exc,
                    self.visibility_timeout,
                )
        for subscription in list(self._subscriptions):
            subscription.close()
        self._reader.close()
        self._wire.close()
        self._client.close()

    def info(self) -> dict[str, Any]:
        """Broker address (no credentials), consumer name and the main options."""
        return {
            **super().info(),
            "broker": self.where,
            "consumer": self.consumer,
            "visibility_timeout": self.visibility_timeout,
            "global_keyprefix": self.settings.global_keyprefix,
        }
