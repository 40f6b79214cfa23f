"""Every exception celeriac raises, in one place.

::

    CeleriacError                    base of everything below
    ├── HandledError                 a user mistake; printed as one line, no traceback
    │   ├── ConfigError              bad config file, key, type or value (CLI exit code 2)
    │   └── PluginError              unknown/missing plugin, scheme, pool or serializer
    ├── SerializationError
    │   ├── ContentDisallowed        content type not in accept_content
    │   └── DecodeError              bytes that do not decode, or a malformed message
    ├── TransportError               the broker could not be reached / did not answer in time
    ├── TimeoutError                 AsyncResult.get() gave up waiting
    ├── NotRegistered                no task of that name in the app
    ├── TaskRevokedError             the task was revoked (or expired) instead of run
    ├── MaxRetriesExceededError      task.retry() called more than max_retries times
    ├── ChordError                   a chord's header failed (or timed out), so its body cannot run
    ├── RemoteTaskError              a task failed with an exception type the client cannot import
    ├── WorkerLostError              the process running the task died
    ├── TimeLimitExceeded            the hard time limit killed the task
    └── SoftTimeLimitExceeded        raised inside a task when its soft time limit passes

    TaskControl                      control flow raised *by* tasks (not errors)
    ├── Retry                        re-run the task later
    ├── Ignore                       finish without storing a state
    └── Reject                       reject the message (requeue or dead-letter)
"""

from __future__ import annotations

__all__ = [
    "CeleriacError",
    "ChordError",
    "ConfigError",
    "ContentDisallowed",
    "DecodeError",
    "HandledError",
    "Ignore",
    "MaxRetriesExceededError",
    "NotRegistered",
    "PluginError",
    "Reject",
    "RemoteTaskError",
    "Retry",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "Terminated",
    "TaskControl",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "TransportError",
    "WorkerLostError",
]

import builtins


class CeleriacError(Exception):
    """Base class of every error celeriac raises."""


class HandledError(CeleriacError):
    """A mistake the user can fix; the CLI prints ``celeriac: <message>`` and exits."""

    exit_code = 1


class ConfigError(HandledError):
    """The configuration is wrong: names the file, the key and what was expected."""

    exit_code = 2


class PluginError(HandledError):
    """A plugin, transport scheme, result store, pool or serializer is unknown or broken."""

    exit_code = 2


class SerializationError(CeleriacError):
    """Data could not be encoded or decoded."""


class ContentDisallowed(SerializationError):
    """The content type of a message or result is not on the accept list."""


class DecodeError(SerializationError):
    """The bytes could not be decoded, or the decoded message is malformed."""


class TransportError(CeleriacError):
    """The broker could not be reached or did not answer within the allowed time."""


class TimeoutError(CeleriacError, builtins.TimeoutError):  # noqa: A001 - Celery's name
    """Waiting for a result took longer than the timeout."""


class NotRegistered(CeleriacError, KeyError):
    """No task with that name is registered in the app."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class TaskRevokedError(CeleriacError):
    """The task was revoked (or had expired) and did not run."""


class RemoteTaskError(CeleriacError):
    """A task failed with an exception the client cannot rebuild.

    ``exc_type`` and ``exc_module`` name the original type; ``remote_traceback`` is its
    traceback text as the worker saw it.
    """

    def __init__(
        self,
        message: str,
        exc_type: str = "Exception",
        exc_module: str = "builtins",
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.exc_module}.{self.exc_type}: {self.args[0]}"


class WorkerLostError(CeleriacError):
    """The worker process running the task exited before the task finished."""


class Terminated(CeleriacError):
    """The task was stopped while running (``revoke(terminate=True)``)."""


class TimeLimitExceeded(CeleriacError):
    """The task ran past its hard time limit and was killed."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a task when its soft time limit passes, so it can clean up."""


class TaskControl(Exception):
    """Base of exceptions a task raises to steer the worker."""


class Retry(TaskControl):
    """Raised by ``task.retry()``: the task will run again later."""

    def __init__(self, message: str | None = None, exc: BaseException | None = None, when: float | None = None) -> None:
        super().__init__(message or (repr(exc) if exc is not None else "retry"))
        self.exc = exc
        self.when = when
        #: Set by ``task.retry()`` once it stored the RETRY state (before publishing the new
        #: message, so a fast retry can never be overwritten by the old attempt's state).
        self.stored = False


class Ignore(TaskControl):
    """Finish the task without storing any state."""


class Reject(TaskControl):
    """Reject the message: put it back on the queue (``requeue=True``) or dead-letter it."""

    def __init__(self, reason: str = "rejected by task", requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


class MaxRetriesExceededError(CeleriacError):
    """``task.retry()`` was called more often than the task's ``max_retries``."""


class ChordError(CeleriacError):
    """A chord's body cannot run: a header task failed, was revoked or dead-lettered, or the
    chord timed out. The message names the task (or the chord) that caused it."""
