"""The scheduler: one leader among any number of beats sends each due run once."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError, TransportError
from ._clock import Clock, SystemClock
from ._entries import Entry, load_entries

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..result import AsyncResult

__all__ = ["Beat", "SentRun"]

logger = logging.getLogger("celeriac.beat")

#: Task ids of runs are uuid5(this, "<lease>/<entry>/<due time>"): the same run has the same id.
RUN_NAMESPACE = uuid.UUID("5b7c3f4e-1d2a-4c59-9a0e-6b1f0c2d8e71")
#: Shortest sleep of the loop (seconds), so a schedule due "now" cannot spin.
MIN_WAIT = 0.01


@dataclass(frozen=True)
class SentRun:
    """One run beat sent: the entry, the due time it stands for, and the task's result handle."""

    entry: str
    due: datetime
    result: AsyncResult[Any]


class Beat:
    """Sends periodic tasks; safe to run in several processes at once.

    Every beat tries to hold a *lease* (``lease``, default ``"celeriac-beat"``) in the app's
    result store for ``beat_lease_timeout`` seconds, renewing it several times within that
    time. Only the holder sends. Before each run it records the run's due time with a write
    that succeeds only while it still holds the lease, then sends the task (whose id is
    derived from entry and due time). A beat that loses the lease stops sending at once; when
    the leader dies, another beat takes over once the lease runs out, reads the recorded
    times and carries on without sending a run twice. (A send that fails after its due time
    was recorded is logged and not retried: at most once per due time.)

    Runs missed while no beat ran (older than ``beat_lease_timeout + beat_max_loop_interval``)
    follow ``beat_catch_up``: ``once`` sends one run for all of them, ``skip`` none.

    ``clock`` (default: the system clock) is what schedules are read against; tests pass a
    :class:`celeriac.testing.VirtualClock` and call :meth:`tick` after moving it.
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        clock: Clock | None = None,
        lease: str | None = None,
        owner: str | None = None,
    ) -> None:
        self.app = app
        self.clock: Clock = clock or SystemClock()
        self.lease: str = lease or app.conf.beat_lease_name
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        conf = app.conf
        self.lease_timeout: float = conf.beat_lease_timeout
        self.max_loop_interval: float = conf.beat_max_loop_interval
        self.catch_up: str = conf.beat_catch_up
        if not self.lease_timeout > 0:
            raise ConfigError(f"{conf.origin('beat_lease_timeout')}: [celeriac.beat] lease_timeout: expected > 0")
        if not self.max_loop_interval > 0:
            raise ConfigError(
                f"{conf.origin('beat_max_loop_interval')}: [celeriac.beat] max_loop_interval: expected > 0"
            )
        #: A due time older than this (seconds) when sent counts as missed (catch-up applies).
        self.grace = self.lease_timeout + self.max_loop_interval
        #: The leader renews this often; followers try to take over this often.
        self.renew_interval: float = self.lease_timeout / 4
        self.entries: dict[str, Entry] = load_entries(app)
        self.is_leader = False
        self.sent_count = 0
        self._last: dict[str, datetime] = {}
        self._renewed_at = float("-inf")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        self._release_on_exit = True

    def __repr__(self) -> str:
        role = "leader" if self.is_leader else "follower"
        return f"<Beat {self.owner} {role} entries={len(self.entries)}>"

    def _meta_key(self, entry: str) -> str:
        return f"beat:{self.lease}:last:{entry}"

    def _index_key(self) -> str:
        return f"beat:{self.lease}:entries"

    # -- one pass ---------------------------------------------------------------------------

    def tick(self) -> list[SentRun]:
        """Take or renew the lease, then (as leader) send every run that is due; returns them."""
        with self._tick_lock:
            if not self._hold_lease():
                return []
            now = self.clock.now()
            sent: list[SentRun] = []
            for entry in self.entries.values():
                if self._stopping.is_set() or not self._due(entry, now, sent):
                    break
            return sent

    def _hold_lease(self) -> bool:
        if self.is_leader and time.monotonic() - self._renewed_at < self.renew_interval:
            return True
        store = self.app.result_store
        started = time.monotonic()
        try:
            held = store.acquire_lease(self.lease, self.owner, self.lease_timeout)
        except NotImplementedError:
            raise ConfigError(
                f"result_store {self.app.conf.masked()['result_store']}: beat keeps its leader lease and last-run "
                f"times in the result store, and {type(store).__name__} cannot hold them; set result_store to "
                "redis://... or sqlite:///... (the broker may stay what it is)"
            ) from None
        except TransportError as exc:
            self._lose(f"cannot reach the result store ({exc})")
            return False
        if held:
            became = not self.is_leader
            if became:
                logger.info("beat %s: leader now (lease %r)", self.owner, self.lease)
                self._last.clear()  # another leader may have sent since we last looked
            self.is_leader, self._renewed_at = True, started
            if became:
                self._forget_removed_entries()
        elif self.is_leader:
            self._lose("another beat holds the lease")
        return held

    def _forget_removed_entries(self) -> None:
        """Delete the last-run times of entries no longer configured; record the ones that are.

        The names live in one small index value (``beat:<lease>:entries``, a JSON list) that
        each new leader reads and rewrites, so removed entries leave no keys behind.
        """
        store = self.app.result_store
        try:
            text = store.get_meta(self._index_key())
            known = json.loads(text) if text else []
            removed = sorted({str(name) for name in known} - set(self.entries)) if isinstance(known, list) else []
            for name in removed:
                store.delete_meta(self._meta_key(name))
            if removed:
                logger.info("beat: forgot the last-run times of removed entries: %s", ", ".join(removed))
            store.set_meta(self._index_key(), json.dumps(sorted(self.entries)), lease=self.lease, owner=self.owner)
        except NotImplementedError:  # a store without delete_meta: the keys stay, beat works
            pass
        except (TransportError, ValueError) as exc:
            logger.warning("beat: could not clean up the last-run times of removed entries: %s", exc)

    def _lose(self, why: str) -> None:
        if self.is_leader:
            logger.warning("beat %s: no longer leader, stopped sending: %s", self.owner, why)
        self.is_leader = False
        self._last.clear()

    def _due(self, entry: Entry, now: datetime, sent: list[SentRun]) -> bool:
        """Handle one entry; False when leadership was lost (stop the pass)."""
        store = self.app.result_store
        key = self._meta_key(entry.name)
        try:
            last = self._last.get(entry.name)
            if last is None:
                text = store.get_meta(key)
                if text is None:  # first sight: runs start one period from now
                    if not store.set_meta(key, now.isoformat(), lease=self.lease, owner=self.owner):
                        self._lose("the lease ran out")
                        return False
                    self._last[entry.name] = now
                    return True
                last = self._last[entry.name] = datetime.fromisoformat(text)
            due = entry.schedule.latest_due(last, now)
            if due is None:
                return True
            missed = (now - due).total_seconds() > self.grace
            send = entry.enabled and (not missed or self.catch_up == "once")
            if not store.set_meta(key, due.isoformat(), lease=self.lease, owner=self.owner):
                self._lose("the lease ran out")
                return False
        except TransportError as exc:
            self._lose(f"cannot reach the result store ({exc})")
            return False
        self._last[entry.name] = due
        if not send:
            if entry.enabled:
                logger.warning("beat: %s: skipped runs missed up to %s (beat_catch_up = skip)", entry.name, due)
            return True
        run = self._send(entry, due)
        if run is not None:
            sent.append(run)
        return True

    def _send(self, entry: Entry, due: datetime) -> SentRun | None:
        task_id = str(uuid.uuid5(RUN_NAMESPACE, f"{self.lease}/{entry.name}/{due.isoformat()}"))
        try:
            result = self.app.send_task(entry.task, entry.args, entry.kwargs, task_id=task_id, **entry.options)
        except Exception as exc:
            logger.error("beat: %s: sending %s (due %s) failed, run dropped: %s", entry.name, entry.task, due, exc)
            return None
        self.sent_count += 1
        logger.info("beat: %s: sent %s[%s] (due %s)", entry.name, entry.task, task_id, due.isoformat())
        return SentRun(entry.name, due, result)

    def seconds_until_due(self) -> float:
        """How long the loop may sleep: until the next known due time, renewal, or the loop bound."""
        wait: float = min(self.max_loop_interval, self.renew_interval)
        if self.is_leader:
            now = self.clock.now()
            for entry in self.entries.values():
                last = self._last.get(entry.name)
                if last is not None:
                    wait = min(wait, (entry.schedule.next_after(last) - now).total_seconds())
        return max(wait, MIN_WAIT)

    # -- running ----------------------------------------------------------------------------

    def check(self) -> None:
        """Fail now (one-line :class:`ConfigError`) if the result store cannot hold the lease."""
        self._hold_lease()

    def run(self) -> None:
        """Tick until :meth:`stop`; a failing pass is logged and retried, never ends the loop."""
        logger.info("beat %s: %d entries: %s", self.owner, len(self.entries), ", ".join(self.entries) or "none")
        while not self._stopping.is_set():
            try:
                self.tick()
            except ConfigError:
                raise
            except Exception:
                logger.exception("beat %s: a pass failed; trying again", self.owner)
                self._lose("a pass failed")
            if self._stopping.is_set():
                break
            self.clock.wait(self.seconds_until_due())
        self._release()

    def start(self) -> None:
        """Check the store, then run in a daemon thread (``celeriac-beat``)."""
        self.check()
        self._thread = threading.Thread(target=self.run, name="celeriac-beat", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout: float | None = 10.0) -> None:
        """Stop the loop; with ``release`` give up the lease so another beat takes over at once.

        ``release=False`` leaves the lease to run out, as if this beat had died.
        """
        if not release:
            self._release_on_exit = False
        self._stopping.set()
        self.clock.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            self._release()

    def _release(self) -> None:
        if not self._release_on_exit:
            self.is_leader = False
            return
        with self._tick_lock:
            if self.is_leader:
                try:
                    self.app.result_store.release_lease(self.lease, self.owner)
                except Exception as exc:
                    logger.warning("beat %s: could not release the lease: %s", self.owner, exc)
                logger.info("beat %s: released the lease", self.owner)
            self.is_leader = False
