"""Task messages in Celery's protocol v2: build an :class:`Envelope`, and decode one strictly.

Headers: ``lang task id shadow eta expires group group_index retries timelimit root_id
parent_id argsrepr kwargsrepr origin ignore_result replaced_task_nesting stamped_headers
stamps`` plus user headers; body ``[args, kwargs, {callbacks, errbacks, chain, chord}]``;
content type and encoding as envelope properties; ``correlation_id`` is the task id. Times on
the wire are ISO-8601 in UTC (a naive time means UTC, as in Celery's v2).
"""

from __future__ import annotations

import os
import reprlib
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._envelope import Envelope
from .exceptions import DecodeError, SerializationError
from .serialization import SerializerRegistry

__all__ = ["TaskMessage", "decode_task_message", "encode_task_message", "parse_time", "format_time"]

_EMPTY_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_repr = reprlib.Repr()
_repr.maxstring = 256
_repr.maxother = 256
_repr.maxlevel = 3
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


@dataclass(slots=True)
class TaskMessage:
    """A decoded task message: everything a worker needs to run one task."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=lambda: dict(_EMPTY_EMBED))
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    #: ``(hard, soft)`` seconds, Celery's order on the wire.
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool | None = None
    origin: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    #: Headers that are not protocol fields (user headers from ``apply_async(headers=...)``).
    extra_headers: dict[str, Any] = field(default_factory=dict)

    @property
    def argsrepr(self) -> str:
        return _repr.repr(tuple(self.args))

    @property
    def kwargsrepr(self) -> str:
        return _repr.repr(self.kwargs)


_PROTOCOL_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    }
)


def format_time(value: datetime | None) -> str | None:
    """ISO-8601 in UTC; naive datetimes are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def parse_time(value: Any, header: str) -> datetime | None:
    """Parse an ISO-8601 header into an aware UTC datetime (naive means UTC)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DecodeError(f"header {header!r} must be an ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise DecodeError(f"header {header!r} is not a valid ISO-8601 time: {value!r}") from None


def encode_task_message(
    message: TaskMessage, registry: SerializerRegistry, serializer: str
) -> tuple[Envelope, tuple[Any, ...]]:
    """Build the protocol-v2 envelope of ``message``; also returns the body tuple for signals."""
    body = (list(message.args), dict(message.kwargs), message.embed)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": message.task,
        "id": message.id,
        "shadow": message.shadow,
        "eta": format_time(message.eta),
        "expires": format_time(message.expires),
        "group": message.group,
        "group_index": message.group_index,
        "retries": message.retries,
        "timelimit": [message.timelimit[0], message.timelimit[1]],
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "argsrepr": message.argsrepr,
        "kwargsrepr": message.kwargsrepr,
        "origin": message.origin or _ORIGIN,
        "ignore_result": bool(message.ignore_result),
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    for key, value in message.extra_headers.items():
        headers.setdefault(key, value)
    try:
        data, content_type, content_encoding = registry.dumps([body[0], body[1], body[2]], serializer)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot serialize the arguments of {message.task} with {serializer}: {exc}") from exc
    properties: dict[str, Any] = {
        "correlation_id": message.id,
        "reply_to": message.reply_to or "",
        "delivery_mode": 2,
    }
    if message.priority is not None:
        properties["priority"] = message.priority
    return Envelope(data, content_type, content_encoding, headers, properties), body


def decode_task_message(envelope: Envelope, registry: SerializerRegistry, accept: frozenset[str]) -> TaskMessage:
    """Decode and validate a protocol-v2 envelope.

    Raises :class:`~celeriac.ContentDisallowed` for a content type not in ``accept`` and
    :class:`~celeriac.DecodeError` for anything malformed, with a one-line reason.
    """
    headers = envelope.headers
    if not isinstance(headers, dict):
        raise DecodeError("message headers are not a mapping")
    task = headers.get("task")
    task_id = headers.get("id")
    if not isinstance(task, str) or not task:
        raise DecodeError("message has no 'task' header (not a protocol-v2 task message)")
    if not isinstance(task_id, str) or not task_id:
        raise DecodeError(f"message for {task} has no 'id' header")
    body = registry.loads(envelope.body, envelope.content_type, accept)
    if not isinstance(body, list | tuple) or len(body) != 3:
        raise DecodeError(f"body of {task}[{task_id}] must be [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        raise DecodeError(f"args of {task}[{task_id}] must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise DecodeError(f"kwargs of {task}[{task_id}] must be a mapping with string keys")
    if embed is None:
        embed = dict(_EMPTY_EMBED)
    if not isinstance(embed, dict):
        raise DecodeError(f"embed of {task}[{task_id}] must be a mapping")
    retries = headers.get("retries") or 0
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise DecodeError(f"header 'retries' of {task}[{task_id}] must be a non-negative integer")
    timelimit = headers.get("timelimit") or (None, None)
    if (
        not isinstance(timelimit, list | tuple)
        or len(timelimit) != 2
        or not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in timelimit)
    ):
        raise DecodeError(f"header 'timelimit' of {task}[{task_id}] must be [hard, soft]")
    group_index = headers.get("group_index")
    if group_index is not None and (not isinstance(group_index, int) or isinstance(group_index, bool)):
        raise DecodeError(f"header 'group_index' of {task}[{task_id}] must be an integer")
    ignore_result = headers.get("ignore_result")
    priority = envelope.properties.get("priority")
    return TaskMessage(
        id=task_id,
        task=task,
        args=list(args),
        kwargs=kwargs,
        embed=embed,
        retries=retries,
        eta=parse_time(headers.get("eta"), "eta"),
        expires=parse_time(headers.get("expires"), "expires"),
        root_id=_optional_str(headers, "root_id") or task_id,
        parent_id=_optional_str(headers, "parent_id"),
        group=_optional_str(headers, "group"),
        group_index=group_index,
        shadow=_optional_str(headers, "shadow"),
        timelimit=(timelimit[0], timelimit[1]),
        ignore_result=ignore_result if isinstance(ignore_result, bool) else None,
        origin=_optional_str(headers, "origin"),
        reply_to=envelope.properties.get("reply_to") or None,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
        extra_headers={k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS},
    )


def _optional_str(headers: dict[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is None or isinstance(value, str):
        return value
    raise DecodeError(f"header {key!r} must be a string or null, got {type(value).__name__}")
