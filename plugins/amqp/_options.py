"""``broker_transport_options`` (and ``result_store_options`` for ``rpc://``) of the AMQP plugin.

Options are checked once, when a transport or store is created, so a typo fails at start with
the option's name and what was expected rather than being ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import celeriac

__all__ = ["RPC_OPTION_NAMES", "TRANSPORT_OPTION_NAMES", "AMQPOptions", "parse_options"]

#: Options every AMQP connection understands, with their defaults.
_DEFAULTS: dict[str, Any] = {
    "heartbeat": 60.0,
    "connect_timeout": 4.0,
    "confirm_timeout": 10.0,
    "queue_type": "classic",
    "max_priority": 9,
    "durable": True,
    "persistent": True,
    "ssl": None,
    "login_method": None,
    "reply_queue_expires": 3600.0,
    "max_unread_results": 100_000,
}
#: Accepted and ignored: RabbitMQ redelivers by itself when a consumer dies, so there are no
#: leases to time out (the conformance suite and Redis-minded configs pass it).
_IGNORED = frozenset({"visibility_timeout"})

TRANSPORT_OPTION_NAMES = frozenset(_DEFAULTS) - {"reply_queue_expires", "max_unread_results"}
RPC_OPTION_NAMES = frozenset(_DEFAULTS)


@dataclass(frozen=True, slots=True)
class AMQPOptions:
    """Validated options; see the plugin's module docstring for what each one does."""

    heartbeat: float = 60.0
    connect_timeout: float = 4.0
    confirm_timeout: float = 10.0
    queue_type: str = "classic"
    max_priority: int = 9
    durable: bool = True
    persistent: bool = True
    ssl: bool | dict[str, Any] | None = None
    login_method: str | None = None
    reply_queue_expires: float = 3600.0
    max_unread_results: int = 100_000
    #: Options given explicitly (to warn about ones that have no effect).
    given: frozenset[str] = field(default=frozenset())

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    @property
    def priority_levels(self) -> int:
        """``x-max-priority`` for work queues; 0 when priorities are off (quorum queues)."""
        return 0 if self.quorum else self.max_priority


def _number(name: str, value: Any, *, minimum: float, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise celeriac.ConfigError(f"amqp option {name}: expected a number of seconds, got {value!r}")
    if value < minimum or (value == 0 and not allow_zero):
        bound = f">= {minimum}" if allow_zero else "> 0"
        raise celeriac.ConfigError(f"amqp option {name}: expected a number {bound}, got {value!r}")
    return float(value)


def parse_options(options: Mapping[str, Any], *, allowed: frozenset[str] = TRANSPORT_OPTION_NAMES) -> AMQPOptions:
    """Check ``options`` and fill in defaults; raises :class:`~celeriac.ConfigError` on a bad one."""
    unknown = sorted(set(options) - allowed - _IGNORED)
    if unknown:
        raise celeriac.ConfigError(
            f"unknown amqp option(s) {', '.join(unknown)}; expected one of {', '.join(sorted(allowed))}"
        )
    values = {**_DEFAULTS, **{key: value for key, value in options.items() if key in allowed}}
    queue_type = values["queue_type"]
    if queue_type not in ("classic", "quorum"):
        raise celeriac.ConfigError(f"amqp option queue_type: expected 'classic' or 'quorum', got {queue_type!r}")
    max_priority = values["max_priority"]
    if max_priority is None:
        max_priority = 0
    if isinstance(max_priority, bool) or not isinstance(max_priority, int) or not 0 <= max_priority <= 255:
        raise celeriac.ConfigError(f"amqp option max_priority: expected an integer 0-255, got {max_priority!r}")
    for flag in ("durable", "persistent"):
        if not isinstance(values[flag], bool):
            raise celeriac.ConfigError(f"amqp option {flag}: expected true or false, got {values[flag]!r}")
    ssl = values["ssl"]
    if ssl is not None and not isinstance(ssl, bool | dict):
        raise celeriac.ConfigError(f"amqp option ssl: expected true/false or a table of ssl options, got {ssl!r}")
    max_unread = values["max_unread_results"]
    if isinstance(max_unread, bool) or not isinstance(max_unread, int) or max_unread < 1:
        raise celeriac.ConfigError(f"amqp option max_unread_results: expected a positive integer, got {max_unread!r}")
    login_method = values["login_method"]
    if login_method is not None and not isinstance(login_method, str):
        raise celeriac.ConfigError(f"amqp option login_method: expected a string, got {login_method!r}")
    return AMQPOptions(
        heartbeat=_number("heartbeat", values["heartbeat"], minimum=0, allow_zero=True),
        connect_timeout=_number("connect_timeout", values["connect_timeout"], minimum=0, allow_zero=False),
        confirm_timeout=_number("confirm_timeout", values["confirm_timeout"], minimum=0, allow_zero=False),
        queue_type=queue_type,
        max_priority=max_priority,
        durable=values["durable"],
        persistent=values["persistent"],
        ssl=ssl,
        login_method=login_method,
        reply_queue_expires=_number("reply_queue_expires", values["reply_queue_expires"], minimum=1, allow_zero=False),
        max_unread_results=max_unread,
        given=frozenset(options),
    )
