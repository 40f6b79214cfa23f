"""The ``rpc://`` result store: results travel back to the caller over AMQP, as Celery's rpc backend.

A client's store declares one **reply queue**, ``celeriac.reply.<uuid4>`` (non-durable,
``x-expires`` = ``reply_queue_expires``, deleted when the store closes), the first time it is
asked for its ``reply_to``; ``send_task`` puts that name in every task message and the worker
hands it back in :attr:`~celeriac.ResultRecord.reply_to`. The worker's store publishes each
result to the default exchange with the reply queue as routing key (``correlation_id`` = task
id, header ``celeriac-state``, ``expiration`` = the result's expiry), waiting for confirms like
any publish. The client consumes its reply queue (no-ack) into a local table, from which
``get`` and ``wait`` answer; ``wait`` is woken by arriving messages, never polls.

Limits (Celery's too):

* a result is readable only by the process that sent the task, once it arrived there -- not by
  another client, not after the caller restarted (``celeriac result ID`` in another process
  sees ``PENDING``);
* results published while the caller is gone (or before a restarted broker saw the caller
  again) are dropped, with a warning in the worker's log; results are transient by default
  (``persistent = true`` in ``result_store_options`` changes that);
* a record without ``reply_to`` (the caller is unknown) is kept in this process only;
* there is no shared counter: :meth:`RPCResultStore.incr` raises ``NotImplementedError``, so
  chords need a shared store (``redis://``, ``sqlite://``);
* the local table honours expiry and keeps at most ``max_unread_results`` (default 100,000)
  results, dropping the least recently used with a warning -- a client that sends far more
  tasks than it reads results of should use a shared store or ``ignore_result``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import amqp
import celeriac

from ._consumer import Consumer, ConsumerSpec
from ._link import IO_ERRORS, Declarer, Keeper
from ._options import RPC_OPTION_NAMES, parse_options
from ._publisher import Outgoing, Publisher

__all__ = ["RPCResultStore"]

logger = logging.getLogger("celeriac.amqp")

STATE_HEADER = "celeriac-state"
EXPIRES_HEADER = "celeriac-expires"
REPLY_QUEUE_PREFIX = "celeriac.reply."
#: broker_transport_options the store's connections share with the transport.
_CONNECTION_OPTIONS = ("heartbeat", "connect_timeout", "confirm_timeout", "ssl", "login_method")


class RPCResultStore(celeriac.ResultStore):
    """Results sent back to the caller's reply queue; see the module docstring for the limits."""

    schemes: ClassVar[tuple[str, ...]] = ("rpc",)
    shared_between_processes: ClassVar[bool] = False

    def __init__(
        self,
        url: str = "rpc://",
        options: Mapping[str, Any] | None = None,
        *,
        broker_url: str,
        broker_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, options)
        shared = {key: value for key, value in (broker_options or {}).items() if key in _CONNECTION_OPTIONS}
        self.settings = parse_options({**shared, **self.options}, allowed=RPC_OPTION_NAMES)
        self._persistent = self.settings.persistent if "persistent" in self.options else False
        self._publisher = Publisher(broker_url, self.settings)
        self._consumer = Consumer(broker_url, self.settings)
        self._queue: str | None = None
        # guarded by self._consumer.cond: task id -> (record, expires at (unix time) or None)
        self._records: OrderedDict[str, tuple[celeriac.ResultRecord, float | None]] = OrderedDict()
        self._dropped = 0
        self._closed = False
        self._keeper = (
            Keeper([self._consumer, self._publisher], self._consumer.tick, "celeriac-rpc-heartbeat")
            if self.settings.heartbeat
            else None
        )

    def _check_open(self) -> None:
        if self._closed:
            raise celeriac.TransportError("the rpc:// result store is closed")

    # -- the reply queue ---------------------------------------------------------------------

    @property
    def reply_to(self) -> str:
        """This client's reply queue, declared and consumed on first use."""
        if self._queue is not None:
            return self._queue
        self._check_open()
        link = self._consumer
        with link.cond:
            if self._queue is None:
                name = f"{REPLY_QUEUE_PREFIX}{uuid.uuid4()}"
                spec = ConsumerSpec(
                    setup=lambda declarer, channel: self._declare_reply_queue(declarer, name),
                    on_message=self._on_message,
                    acks=False,
                )
                link.connect_before_locked(time.monotonic() + self.settings.confirm_timeout)
                link.add_locked(spec)
                if spec.tag is None:
                    link.remove_locked(spec)
                    raise celeriac.TransportError(f"cannot declare a reply queue at {link.address}: {link.last_error}")
                self._queue = name
            return self._queue

    def _declare_reply_queue(self, declarer: Declarer, name: str) -> str:
        expires = int(self.settings.reply_queue_expires * 1000)
        return declarer.queue(name, durable=False, arguments={"x-expires": expires})

    def _on_message(self, message: amqp.Message) -> None:
        """A result arrived (consumer lock held)."""
        properties = message.properties
        headers = properties.get("application_headers") or {}
        task_id, state = properties.get("correlation_id"), headers.get(STATE_HEADER)
        if not isinstance(task_id, str) or not isinstance(state, str):
            logger.debug("ignored a message without task id or state in reply queue %s", self._queue)
            return
        expires_at = headers.get(EXPIRES_HEADER)
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        record = celeriac.ResultRecord(
            task_id,
            state,
            body,
            properties.get("content_type") or "application/json",
            properties.get("content_encoding") or "utf-8",
        )
        self._remember_locked(record, expires_at if isinstance(expires_at, int | float) else None)

    def _remember_locked(self, record: celeriac.ResultRecord, expires_at: float | None) -> None:
        self._records[record.task_id] = (record, expires_at)
        self._records.move_to_end(record.task_id)
        if len(self._records) > self.settings.max_unread_results:
            self._records.popitem(last=False)
            self._dropped += 1
            if self._dropped in (1, 10) or self._dropped % 1000 == 0:
                logger.warning(
                    "rpc:// dropped %d result(s) nobody read (more than max_unread_results = %d arrived)",
                    self._dropped,
                    self.settings.max_unread_results,
                )
        # Another thread may wait on the condition (not reading the socket) for exactly this
        # record: wake it now, not at the link's next tick (a quarter of the heartbeat).
        self._consumer.cond.notify_all()

    def _lookup_locked(self, task_id: str) -> celeriac.ResultRecord | None:
        found = self._records.get(task_id)
        if found is None:
            return None
        record, expires_at = found
        if expires_at is not None and expires_at <= time.time():
            del self._records[task_id]
            return None
        self._records.move_to_end(task_id)  # least recently used go first
        return record

    def _catch_up_locked(self) -> None:
        """Make every result already in the reply queue arrive here: a ``basic.get`` round trip
        (deliveries RabbitMQ pushed before answering arrive before its answer)."""
        link = self._consumer
        if self._queue is None or link.closed:
            return
        link.pump_locked()
        if link.declarer is None:
            return
        try:
            while (message := link.declarer.channel.basic_get(self._queue, no_ack=True)) is not None:
                self._on_message(message)
        except IO_ERRORS as exc:
            link.lost_locked(exc)

    # -- ResultStore ---------------------------------------------------------------------------

    def set(self, record: celeriac.ResultRecord, *, expires: float | None = None) -> None:
        """Send ``record`` to its caller's reply queue (kept here when it has no ``reply_to``)."""
        self.set_many([record], expires=expires)

    def set_many(self, records: Sequence[celeriac.ResultRecord], *, expires: float | None = None) -> None:
        """Send several results in one confirmed batch."""
        self._check_open()
        expires_at = time.time() + expires if expires is not None else None
        local = [record for record in records if not record.reply_to]
        if local:
            with self._consumer.cond:
                for record in local:
                    self._remember_locked(record, expires_at)
                self._consumer.cond.notify_all()
            self._consumer.poke()
        batch = [self._outgoing(record, expires, expires_at) for record in records if record.reply_to]
        for returned in self._publisher.publish(batch):
            logger.warning(
                "dropped the result of task %s: reply queue %r does not exist (its client is gone)",
                returned.message.properties.get("correlation_id"),
                returned.routing_key,
            )

    def _outgoing(self, record: celeriac.ResultRecord, expires: float | None, expires_at: float | None) -> Outgoing:
        headers: dict[str, Any] = {STATE_HEADER: record.state}
        properties: dict[str, Any] = {"delivery_mode": 2 if self._persistent else 1}
        if expires is not None and expires_at is not None:
            headers[EXPIRES_HEADER] = expires_at
            properties["expiration"] = str(max(int(expires * 1000), 0))
        message = amqp.Message(
            record.payload,
            content_type=record.content_type,
            content_encoding=record.content_encoding,
            correlation_id=record.task_id,
            application_headers=headers,
            **properties,
        )
        assert record.reply_to is not None
        return Outgoing("", record.reply_to, message)

    def get(self, task_id: str) -> celeriac.ResultRecord | None:
        """The result of ``task_id`` if it reached this client."""
        with self._consumer.cond:
            record = self._lookup_locked(task_id)
            if record is None and self._queue is not None:
                self._catch_up_locked()
                record = self._lookup_locked(task_id)
            return record

    def get_many(self, task_ids: Any) -> dict[str, celeriac.ResultRecord]:
        """Results of several ids that reached this client (one catch-up round trip)."""
        ids = list(task_ids)
        with self._consumer.cond:
            if self._queue is not None and any(self._lookup_locked(task_id) is None for task_id in ids):
                self._catch_up_locked()
            found = {task_id: self._lookup_locked(task_id) for task_id in ids}
        return {task_id: record for task_id, record in found.items() if record is not None}

    def wait(
        self, task_id: str, *, states: frozenset[str], timeout: float | None = None
    ) -> celeriac.ResultRecord | None:
        """Block until the result of ``task_id`` arrives in one of ``states`` (woken by its
        message); the latest record (or None) after ``timeout``."""
        link = self._consumer
        deadline = None if timeout is None else time.monotonic() + timeout

        def ready() -> bool:
            record = self._lookup_locked(task_id)
            return record is not None and record.state in states

        with link.cond:
            while not ready():
                remaining = 3600.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                if self._queue is None:  # no reply queue: only records set in this process
                    link.cond.wait(remaining)
                elif not link.wait_for_locked(ready, remaining) and deadline is not None:
                    self._catch_up_locked()
                    break
            return self._lookup_locked(task_id)

    def forget(self, task_id: str) -> None:
        """Drop the result of ``task_id`` from this client."""
        with self._consumer.cond:
            self._records.pop(task_id, None)

    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """Not available: rpc:// keeps no state shared between processes."""
        raise NotImplementedError(
            "the rpc:// result store has no counter shared between processes; "
            "use a shared store (redis://, sqlite://) for chords"
        )

    def cleanup(self) -> int:
        """Drop expired results from the local table; returns how many."""
        now = time.time()
        with self._consumer.cond:
            expired = [key for key, (_, at) in self._records.items() if at is not None and at <= now]
            for key in expired:
                del self._records[key]
        return len(expired)

    def close(self) -> None:
        """Delete the reply queue and close both connections."""
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.stop()
        link = self._consumer
        with link.cond:
            link.cond.notify_all()
            if self._queue is not None and link.declarer is not None:
                with contextlib.suppress(*IO_ERRORS):
                    link.declarer.channel.queue_delete(self._queue)
        link.close()
        self._publisher.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "broker": self._publisher.address, "reply_to": self._queue}
