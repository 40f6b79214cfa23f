"""Results: :class:`AsyncResult` (a handle on a task's state in the result store) and
:class:`EagerResult` (a task run locally)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import states
from ._exceptions_data import exception_from_data
from .exceptions import TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from .app import Celeriac

__all__ = ["AsyncResult", "EagerResult"]

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and result of a task, read from the app's result store.

    Mirrors Celery's ``AsyncResult``: ``state``, ``result``/``info``, ``traceback``,
    ``date_done``, ``ready()``, ``successful()``, ``failed()``, ``get()``, ``forget()``.
    """

    def __init__(self, id: str, app: Celeriac, name: str | None = None) -> None:  # noqa: A002
        self.id = id
        self.app = app
        self.name = name

    @property
    def task_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading ----------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any] | None:
        record = self.app.result_store.get(self.id)
        return None if record is None else self.app.decode_result(record)

    @property
    def state(self) -> str:
        """``PENDING`` until a worker stores something, then the stored state."""
        meta = self._meta()
        return states.PENDING if meta is None else str(meta.get("status", states.PENDING))

    status = state

    @property
    def info(self) -> Any:
        """The return value, the exception (FAILURE/RETRY/REVOKED), or custom-state meta."""
        meta = self._meta()
        return None if meta is None else _value(meta)

    result = info

    @property
    def traceback(self) -> str | None:
        meta = self._meta()
        return None if meta is None else meta.get("traceback")

    @property
    def date_done(self) -> datetime | None:
        meta = self._meta()
        value = None if meta is None else meta.get("date_done")
        if isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task to finish and return its result.

        With ``propagate`` (the default) a failed task re-raises its exception (the original
        type when importable, else :class:`~celeriac.RemoteTaskError`) and a revoked one raises
        :class:`~celeriac.TaskRevokedError`. Raises :class:`~celeriac.TimeoutError` after
        ``timeout`` seconds.
        """
        record = self.app.result_store.wait(self.id, states=states.READY_STATES, timeout=timeout)
        if record is None or record.state not in states.READY_STATES:
            current = states.PENDING if record is None else record.state
            raise TimeoutError(f"task {self.name or ''}[{self.id}] did not finish within {timeout}s (state {current})")
        meta = self.app.decode_result(record)
        value = _value(meta)
        if propagate and record.state in states.PROPAGATE_STATES:
            raise value if isinstance(value, BaseException) else TaskRevokedError(str(value))
        return value  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        """Delete the stored result."""
        self.app.result_store.forget(self.id)


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in this process (``task.apply()`` or always-eager mode)."""

    def __init__(
        self,
        id: str,  # noqa: A002
        app: Celeriac,
        name: str | None,
        state: str,
        value: Any,
        traceback: str | None = None,
    ) -> None:
        super().__init__(id, app, name)
        self._state = state
        self._value = value
        self._traceback = traceback
        self._date_done = datetime.now().astimezone()

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def info(self) -> Any:
        return self._value

    result = info

    @property
    def traceback(self) -> str | None:
        return self._traceback

    @property
    def date_done(self) -> datetime | None:
        return self._date_done

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        if propagate and self._state in states.PROPAGATE_STATES:
            if isinstance(self._value, BaseException):
                raise self._value
            raise TaskRevokedError(str(self._value))
        return self._value  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        """Nothing is stored for eager results."""


def _value(meta: dict[str, Any]) -> Any:
    status = meta.get("status")
    result = meta.get("result")
    if status in states.EXCEPTION_STATES and isinstance(result, dict) and "exc_type" in result:
        return exception_from_data(result, meta.get("traceback"))
    return result
