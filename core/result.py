"""Results: :class:`AsyncResult` (a handle on a task's state in the result store),
:class:`EagerResult` (a task run locally) and :class:`GroupResult` (the results of a group).

Results of workflows link to what ran before them: a chain's result is its last task's, and
``.parent`` leads back through the chain (a chord's result is its body's; its parent is the
header's :class:`GroupResult`). ``get()`` on a failed result raises the **first** error of that
lineage with its original type, so a chain that failed in its second task raises that task's
exception whichever result you wait on.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import states
from ._exceptions_data import exception_from_data
from .exceptions import TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from .app import Celeriac
    from .resultstore import ResultRecord

__all__ = ["AsyncResult", "EagerResult", "GroupResult", "attach_parent", "result_from_tuple"]

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and result of a task, read from the app's result store.

    Mirrors Celery's ``AsyncResult``: ``state``, ``result``/``info``, ``traceback``,
    ``date_done``, ``ready()``, ``successful()``, ``failed()``, ``get()``, ``forget()``.
    """

    def __init__(
        self,
        id: str,  # noqa: A002
        app: Celeriac,
        name: str | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        self.id = id
        self.app = app
        self.name = name
        #: The result of what ran before this one in a workflow (``None`` outside one).
        self.parent = parent

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

    def get(self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True) -> R:
        """Wait for the task to finish and return its result.

        With ``propagate`` (the default) a failed task re-raises its exception (the original
        type when importable, else :class:`~celeriac.RemoteTaskError`) and a revoked one raises
        :class:`~celeriac.TaskRevokedError`; with ``follow_parents`` (the default) the first
        error among the results this one descends from is raised instead (in a chain that
        failed early, the error of the task that failed). Raises
        :class:`~celeriac.TimeoutError` after ``timeout`` seconds.
        """
        record = self.app.result_store.wait(self.id, states=states.READY_STATES, timeout=timeout)
        return self._settle(record, timeout, propagate, follow_parents)

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True) -> R:
        """:meth:`get` for ``async`` code (``await result.aget(timeout=10)``): the event loop
        keeps running while it waits, and cancelling the ``await`` stops the wait at once.

        It polls the result store with a backoff (1 ms to 100 ms); each read runs in a small
        executor of its own (``celeriac-aget`` threads), never the loop's default executor,
        and no thread is held between reads, so any number of waits can run at once."""
        import asyncio

        loop = asyncio.get_running_loop()
        store = self.app.result_store
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _AGET_FIRST_DELAY
        while True:
            record = await loop.run_in_executor(_aget_executor(), store.get, self.id)
            if record is not None and record.state in states.READY_STATES:
                break
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                delay = min(delay, remaining)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _AGET_MAX_DELAY)
        if record is not None and record.state in states.READY_STATES:
            # decoding and parents' reads are quick, but may touch the store: not on the loop
            settle = self._settle
            return await loop.run_in_executor(_aget_executor(), settle, record, timeout, propagate, follow_parents)
        return self._settle(record, timeout, propagate, follow_parents)

    def _settle(self, record: ResultRecord | None, timeout: float | None, propagate: bool, follow_parents: bool) -> R:
        """The value of a finished ``record`` (or the error :meth:`get` raises)."""
        if record is None or record.state not in states.READY_STATES:
            current = states.PENDING if record is None else record.state
            raise TimeoutError(f"task {self.name or ''}[{self.id}] did not finish within {timeout}s (state {current})")
        meta = self.app.decode_result(record)
        value = _value(meta)
        if propagate and record.state in states.PROPAGATE_STATES:
            earlier = first_failure(self.parent) if follow_parents else None
            if earlier is not None:
                raise earlier
            raise _as_exception(value)
        return value  # type: ignore[no-any-return]

    def forget(self) -> None:
        """Delete the stored result."""
        self.app.result_store.forget(self.id)

    def revoke(
        self,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        *,
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Tell the workers not to run this task; with ``terminate`` also stop it where it
        runs (``processes`` pool) with ``signal``. See :meth:`celeriac.control.Control.revoke`."""
        return self.app.control.revoke(
            self.id, terminate=terminate, signal=signal, destination=destination, reply=reply, timeout=timeout
        )

    def _failure(self) -> BaseException | None:
        """This result's own error if it failed or was revoked (no waiting)."""
        meta = self._meta()
        if meta is None or meta.get("status") not in states.PROPAGATE_STATES:
            return None
        return _as_exception(_value(meta))

    def as_tuple(self) -> tuple[Any, ...]:
        """A plain form (with parents) for :func:`result_from_tuple`: ``[[id, parent], None]``."""
        return [self.id, self.parent.as_tuple() if self.parent is not None else None], None


_AGET_FIRST_DELAY = 0.001
_AGET_MAX_DELAY = 0.1
_AGET_THREADS = 4
_aget_pool: concurrent.futures.ThreadPoolExecutor | None = None
_aget_lock = threading.Lock()


def _aget_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The threads :meth:`AsyncResult.aget` reads the store in (shared by every loop)."""
    global _aget_pool
    pool = _aget_pool
    if pool is None:
        with _aget_lock:
            if _aget_pool is None:
                _aget_pool = concurrent.futures.ThreadPoolExecutor(_AGET_THREADS, thread_name_prefix="celeriac-aget")
            pool = _aget_pool
    return pool


def _forget_aget_executor() -> None:
    global _aget_pool, _aget_lock
    _aget_pool, _aget_lock = None, threading.Lock()  # a forked child has none of its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_aget_executor)


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

    def get(self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True) -> R:
        if propagate and self._state in states.PROPAGATE_STATES:
            earlier = first_failure(self.parent) if follow_parents else None
            if earlier is not None:
                raise earlier
            raise _as_exception(self._value)
        return self._value  # type: ignore[no-any-return]

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True) -> R:
        """:meth:`get`: the result is here already."""
        return self.get(timeout, propagate, follow_parents)

    def forget(self) -> None:
        """Nothing is stored for eager results."""

    def _failure(self) -> BaseException | None:
        return _as_exception(self._value) if self._state in states.PROPAGATE_STATES else None


class GroupResult(AsyncResult[list[Any]]):
    """The results of a group's members, in member order (Celery's ``GroupResult``).

    ``get()`` waits for all of them (``timeout`` is for the whole group) and returns the list
    of results; with ``propagate`` the first failed member's error is raised.
    ``completed_count()`` counts members that succeeded. ``save()`` stores the member ids so
    ``GroupResult.restore(group_id)`` can rebuild the handle elsewhere.
    """

    def __init__(
        self,
        id: str,  # noqa: A002
        results: Sequence[AsyncResult[Any]],
        app: Celeriac | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        if app is None:
            if results:
                app = results[0].app
            else:
                from .app import current_app

                app = current_app()
        super().__init__(id, app, None, parent)
        self.results: list[AsyncResult[Any]] = list(results)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    @property
    def children(self) -> list[AsyncResult[Any]]:
        return self.results

    @property
    def state(self) -> str:
        """``FAILURE`` once a member failed (or was revoked), ``SUCCESS`` once all succeeded,
        ``PENDING`` before."""
        member_states = [result.state for result in self.results]
        if any(state in states.PROPAGATE_STATES for state in member_states):
            return states.FAILURE
        if all(state == states.SUCCESS for state in member_states):
            return states.SUCCESS
        return states.PENDING

    status = state

    @property
    def info(self) -> list[Any]:
        """The members' results (or errors) so far."""
        return [result.info for result in self.results]

    result = info

    @property
    def traceback(self) -> str | None:
        return None

    @property
    def date_done(self) -> datetime | None:
        return None

    def ready(self) -> bool:
        return all(result.ready() for result in self.results)

    def successful(self) -> bool:
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        return any(result.failed() for result in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(1 for result in self.results if result.successful())

    def get(self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(result.get(timeout=remaining, propagate=propagate, follow_parents=follow_parents))
            except TimeoutError:
                raise
            except Exception:
                earlier = first_failure(self.parent) if follow_parents else None
                if earlier is not None:
                    raise earlier from None
                raise
        return values

    join = get
    wait = get

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True
    ) -> list[Any]:
        """:meth:`get` for ``async`` code: awaits each member's :meth:`AsyncResult.aget`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(await result.aget(timeout=remaining, propagate=propagate, follow_parents=follow_parents))
            except TimeoutError:
                raise
            except Exception:
                earlier = first_failure(self.parent) if follow_parents else None
                if earlier is not None:
                    raise earlier from None
                raise
        return values

    def forget(self) -> None:
        """Delete the members' results and the saved group."""
        for result in self.results:
            result.forget()
        self.app.result_store.forget(group_key(self.id))

    def _failure(self) -> BaseException | None:
        for result in self.results:
            found = first_failure(result)
            if found is not None:
                return found
        return None

    def as_tuple(self) -> tuple[Any, ...]:
        return [self.id, self.parent.as_tuple() if self.parent is not None else None], [
            list(result.as_tuple()) for result in self.results
        ]

    def save(self) -> None:
        """Store the member ids (for ``result_expires``) so :meth:`restore` can find them."""
        self.app.store_result(group_key(self.id), states.SUCCESS, list(self.as_tuple()))

    def delete(self) -> None:
        """Delete the saved group (not the members' results)."""
        self.app.result_store.forget(group_key(self.id))

    @classmethod
    def restore(cls, group_id: str, app: Celeriac | None = None) -> GroupResult | None:
        """The group saved with :meth:`save`, or ``None``."""
        if app is None:
            from .app import current_app

            app = current_app()
        record = app.result_store.get(group_key(group_id))
        if record is None:
            return None
        restored = result_from_tuple(app.decode_result(record).get("result"), app)
        return restored if isinstance(restored, GroupResult) else None


def group_key(group_id: str) -> str:
    """The result-store key of a saved group."""
    return f"celeriac-group-{group_id}"


def result_from_tuple(value: Any, app: Celeriac) -> AsyncResult[Any]:
    """The result handle :meth:`AsyncResult.as_tuple` describes (parents and members too)."""
    (task_id, parent), members = value
    parent_result = result_from_tuple(parent, app) if parent else None
    if members is not None:
        return GroupResult(task_id, [result_from_tuple(member, app) for member in members], app, parent_result)
    return AsyncResult(task_id, app, parent=parent_result)


def attach_parent(result: AsyncResult[Any], parent: AsyncResult[Any]) -> None:
    """Make ``parent`` the parent of the earliest result in ``result``'s lineage."""
    node = result
    while node.parent is not None:
        node = node.parent
    node.parent = parent


def first_failure(result: AsyncResult[Any] | None) -> BaseException | None:
    """The first error in ``result``'s lineage, earliest first (no waiting)."""
    lineage: list[AsyncResult[Any]] = []
    node = result
    while node is not None:
        lineage.append(node)
        node = node.parent
    for ancestor in reversed(lineage):
        found: BaseException | None = ancestor._failure()
        if found is not None:
            return found
    return None


def _as_exception(value: Any) -> BaseException:
    return value if isinstance(value, BaseException) else TaskRevokedError(str(value))


def _value(meta: dict[str, Any]) -> Any:
    status = meta.get("status")
    result = meta.get("result")
    if status in states.EXCEPTION_STATES and isinstance(result, dict) and "exc_type" in result:
        return exception_from_data(result, meta.get("traceback"))
    return result
