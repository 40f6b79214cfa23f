"""Remote control: ask running workers what they do (inspect) and change it (control).

Requests go to every worker on the broker's broadcast channel ``control_channel`` (default
``celeriac.control``); a worker answers when ``destination`` is empty or names it. Replies
come back on ``<control_channel>.reply`` and are collected until ``timeout`` seconds pass or
``limit`` replies arrived (by default as many as there are destinations). Shapes are Celery's::

    app.control.ping()                      # [{"w1@host": {"ok": "pong"}}, ...]
    app.control.inspect().active()          # {"w1@host": [{"id": ..., "name": ...}], ...} or None
    app.control.revoke(task_id, terminate=True)
    app.control.pool_grow(2, destination=["w1@host"], reply=True)

Control replies are ``{"ok": "..."}`` on success and ``{"error": "..."}`` on failure.
Plugins add commands with the ``celeriac_control_commands`` hook.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import HandledError
from ._wire import REPLY_TYPE, REQUEST_TYPE, decode, encode

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..transport import Transport

__all__ = ["INSPECT_COMMANDS", "Control", "Inspect", "reply_channel"]

#: Inspect commands (read-only) every worker answers.
INSPECT_COMMANDS = (
    "ping",
    "stats",
    "active",
    "reserved",
    "scheduled",
    "revoked",
    "registered",
    "active_queues",
    "query_task",
    "conf",
)
_SLICE = 0.1


def reply_channel(control_channel: str) -> str:
    """The channel replies to requests on ``control_channel`` come back on."""
    return f"{control_channel}.reply"


def _destination(destination: str | Iterable[str] | None) -> list[str] | None:
    if destination is None:
        return None
    if isinstance(destination, str):
        destination = destination.split(",")
    names = [name.strip() for name in destination if name and name.strip()]
    return names or None


class Control:
    """``app.control``: broadcast commands to workers and collect their replies."""

    def __init__(self, app: Celeriac, *, transport: Transport | None = None, channel: str | None = None) -> None:
        self.app = app
        self._transport = transport
        self.channel: str = channel or app.conf.control_channel

    @property
    def transport(self) -> Transport:
        return self._transport if self._transport is not None else self.app.transport

    def inspect(self, destination: str | Sequence[str] | None = None, timeout: float = 1.0) -> Inspect:
        """An :class:`Inspect` for ``destination`` (default: every worker)."""
        return Inspect(self, destination=destination, timeout=timeout)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to the workers in ``destination`` (default: all).

        With ``reply`` wait up to ``timeout`` seconds (or until ``limit`` replies, by default
        one per destination) and return ``[{hostname: reply}, ...]``; otherwise return ``[]``.
        """
        targets = _destination(destination)
        ticket = uuid.uuid4().hex
        request = {
            "method": command,
            "arguments": dict(arguments or {}),
            "destination": targets,
            "reply_to": reply_channel(self.channel) if reply else None,
            "ticket": ticket,
        }
        transport = self.transport
        if not reply:
            transport.broadcast(self.channel, encode(REQUEST_TYPE, request))
            return []
        if limit is None and targets is not None:
            limit = len(targets)
        replies: list[dict[str, Any]] = []
        with transport.subscribe(reply_channel(self.channel)) as subscription:
            transport.broadcast(self.channel, encode(REQUEST_TYPE, request))
            deadline = time.monotonic() + timeout
            while limit is None or len(replies) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                envelope = subscription.get(min(remaining, _SLICE))
                if envelope is None:
                    continue
                payload = decode(envelope, REPLY_TYPE)
                if payload is None or payload["ticket"] != ticket or not isinstance(payload.get("hostname"), str):
                    continue
                replies.append({payload["hostname"]: payload.get("reply")})
        return replies

    def _control(
        self,
        command: str,
        arguments: dict[str, Any],
        destination: str | Sequence[str] | None,
        reply: bool,
        timeout: float,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        return self.broadcast(command, arguments, destination=destination, reply=reply, timeout=timeout, limit=limit)

    # -- commands -------------------------------------------------------------------------

    def ping(self, destination: str | Sequence[str] | None = None, timeout: float = 1.0) -> list[dict[str, Any]]:
        """``[{hostname: {"ok": "pong"}}, ...]`` from every worker that answered."""
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout)

    def revoke(
        self,
        task_id: str | Iterable[str],
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Do not run ``task_id`` (one id or several); with ``terminate`` also stop it where it
        runs (``processes`` pool) by sending it ``signal``."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        arguments = {"task_id": ids, "terminate": terminate, "signal": signal}
        return self._control("revoke", arguments, destination, reply, timeout)

    def terminate(
        self, task_id: str | Iterable[str], signal: str | int = "SIGTERM", **options: Any
    ) -> list[dict[str, Any]]:
        """``revoke(task_id, terminate=True, signal=signal)``."""
        return self.revoke(task_id, terminate=True, signal=signal, **options)

    def shutdown(
        self, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        """Warm shutdown of the workers."""
        return self._control("shutdown", {}, destination, reply, timeout)

    def pool_grow(
        self, n: int = 1, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        return self._control("pool_grow", {"n": n}, destination, reply, timeout)

    def pool_shrink(
        self, n: int = 1, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        return self._control("pool_shrink", {"n": n}, destination, reply, timeout)

    def autoscale(
        self,
        max: int,  # noqa: A002 - Celery's name
        min: int,  # noqa: A002 - Celery's name
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        return self._control("autoscale", {"max": max, "min": min}, destination, reply, timeout)

    def add_consumer(
        self, queue: str, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        """Start consuming ``queue`` (declared first)."""
        return self._control("add_consumer", {"queue": queue}, destination, reply, timeout)

    def cancel_consumer(
        self, queue: str, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        """Stop consuming ``queue``."""
        return self._control("cancel_consumer", {"queue": queue}, destination, reply, timeout)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Set ``task_name``'s rate limit (``"10/m"``, ``"2/s"``; ``None`` or ``0``: none) in the workers."""
        return self._control(
            "rate_limit", {"task_name": task_name, "rate_limit": rate_limit}, destination, reply, timeout
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Set ``task_name``'s soft and hard time limits (seconds) in the workers."""
        return self._control(
            "time_limit", {"task_name": task_name, "soft": soft, "hard": hard}, destination, reply, timeout
        )

    def enable_events(
        self, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        """Make the workers send task events."""
        return self._control("enable_events", {}, destination, reply, timeout)

    def disable_events(
        self, destination: str | Sequence[str] | None = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        """Make the workers stop sending task events (worker heartbeats continue)."""
        return self._control("disable_events", {}, destination, reply, timeout)


class Inspect:
    """Read-only questions to workers; each returns ``{hostname: reply}`` or ``None`` when no
    worker answered within the timeout (Celery's shape)."""

    def __init__(self, control: Control, destination: str | Sequence[str] | None = None, timeout: float = 1.0) -> None:
        self.control = control
        self.destination = _destination(destination)
        self.timeout = timeout

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(
            command, arguments, destination=self.destination, reply=True, timeout=self.timeout
        )
        merged: dict[str, Any] = {}
        for item in replies:
            merged.update(item)
        return merged or None

    def ping(self) -> dict[str, Any] | None:
        return self._request("ping")

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def active(self) -> dict[str, Any] | None:
        return self._request("active")

    def reserved(self) -> dict[str, Any] | None:
        return self._request("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        return self._request("scheduled")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def registered(self) -> dict[str, Any] | None:
        return self._request("registered")

    registered_tasks = registered

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def query_task(self, *ids: str | Iterable[str]) -> dict[str, Any] | None:
        flat: list[str] = []
        for item in ids:
            flat.extend([item] if isinstance(item, str) else item)
        return self._request("query_task", ids=flat)

    def conf(self) -> dict[str, Any] | None:
        return self._request("conf")

    def call(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        """Any command (a plugin's, say) with this inspector's destination and timeout."""
        if not command:
            raise HandledError("inspect: give a command name")
        return self._request(command, **arguments)
