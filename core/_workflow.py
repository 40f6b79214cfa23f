"""How workflows move forward on a worker (Celery's trace and chord logic, made hang-proof).

* **Success** (in the pool, right after the task returned, before its result is stored, as
  Celery does): every ``embed.callbacks`` signature (``link``) is sent with the result
  prepended, then the next step of ``embed.chain`` (its last element) with the rest.
* **Failure** (in the pool): the errbacks (``link_error``) run once. An errback task whose
  function takes ``(request, exc, traceback)`` is called right there, in-process; any other
  is sent as a task with the failed task's id as its argument (the failure is stored first,
  so it can read it).
* **After the result is stored** (the worker's settler thread, before the ack): a chord header
  task counts itself; a task that failed, was revoked, ignored, rejected or dead-lettered marks
  the rest of its chain with its error (``REVOKED`` when it did not run) and fails its chord.

Chord bookkeeping in the result store, for group id ``G`` (no polling task anywhere):

``celeriac-chord-G`` (record)
    ``{"body", "ids", "size", "timeout"}``: the body and the header's result ids in header
    order, written by the client before the first header task is sent.
``celeriac-chord-G.count`` (counter)
    ``incr`` by each header task that succeeded. At ``size`` the task reads the header's
    results with one ``get_many``; when all succeeded it claims the chord and sends the body
    with the results in header order. A redelivered task can make the count overshoot, so the
    check is on the stored states, and every task past ``size`` checks again.
``celeriac-chord-G.done`` (counter)
    The claim: whoever increments it to 1 sends the body or fails it, so the body (or its
    errbacks) runs exactly once.

A delayed ``celeriac.chord_timeout`` message (ETA = ``chord_timeout``, by default
``result_expires``) fails a chord that has not finished by then. Keys expire after
``result_expires`` plus the timeout.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import states
from ._exceptions_data import exception_to_data
from .exceptions import ChordError, TaskRevokedError
from .task import Request

if TYPE_CHECKING:
    from .app import Celeriac
    from .canvas import Signature
    from .task import Task

__all__ = [
    "after_dead_letter",
    "after_settled",
    "call_errbacks",
    "chord_timed_out",
    "describe_exception",
    "dispatch_success",
    "ignores_result",
    "involved",
    "run_errbacks",
    "save_chord",
    "schedule_chord_timeout",
]

logger = logging.getLogger("celeriac.workflow")

#: States after which a task's chain and chord cannot go on.
_IGNORED = "IGNORED"
_REJECTED = "REJECTED"


# -- keys ------------------------------------------------------------------------------------


def chord_key(group_id: str) -> str:
    return f"celeriac-chord-{group_id}"


def _ttl(app: Celeriac, timeout: Any) -> float | None:
    expires = app.conf.result_expires
    if expires is None:
        return None
    return float(expires) + (float(timeout) if isinstance(timeout, int | float) else 0.0)


def save_chord(app: Celeriac, group_id: str, body: dict[str, Any], ids: list[str | None], timeout: Any) -> None:
    """Store the chord's body and header result ids (called before its header is sent)."""
    meta = {"body": body, "ids": ids, "size": len(ids), "timeout": timeout}
    record = app.encode_result(chord_key(group_id), states.SUCCESS, meta)
    app.result_store.set(record, expires=_ttl(app, timeout))


def load_chord(app: Celeriac, group_id: str) -> dict[str, Any] | None:
    record = app.result_store.get(chord_key(group_id))
    if record is None:
        return None
    meta = app.decode_result(record).get("result")
    return meta if isinstance(meta, dict) else None


def schedule_chord_timeout(app: Celeriac, group_id: str, body: Signature, timeout: float) -> None:
    """Send the delayed check that fails the chord if it has not finished after ``timeout``."""
    queue = body.options.get("queue") or _queue_of(app, body)
    app.send_task("celeriac.chord_timeout", [group_id, timeout], countdown=timeout, queue=queue, ignore_result=True)


def _queue_of(app: Celeriac, sig: Signature) -> str | None:
    from .canvas import chain, chord, group

    if isinstance(sig, chain | group) and sig.tasks:
        return _queue_of(app, sig.tasks[0])
    if isinstance(sig, chord):
        return _queue_of(app, sig.tasks[0]) if sig.tasks else None
    queue = app.route(sig.task).get("queue")
    if queue:
        return str(queue)
    task = app.tasks.get(sig.task)
    return task.queue if task is not None else None


# -- in the pool -----------------------------------------------------------------------------


def involved(request: Request) -> bool:
    """Whether the request belongs to a chain or chord the settler must carry on."""
    embed = request.embed
    return bool(embed.get("chain") or embed.get("chord"))


def ignores_result(app: Celeriac, task: Task[..., Any], request: Request) -> bool:
    """Whether the worker skips storing this task's state (never for a chord header task)."""
    if request.embed.get("chord"):
        return False
    if request.ignore_result:
        return True
    if task.ignore_result is not None:
        return task.ignore_result
    return bool(app.conf.task_ignore_result)


def dispatch_success(app: Celeriac, request: Request, retval: Any) -> None:
    """Send the callbacks, then the next step of the chain, with ``retval`` prepended."""
    embed = request.embed
    callbacks = embed.get("callbacks") or ()
    rest = embed.get("chain") or ()
    if not callbacks and not rest:
        return
    from .canvas import Signature, chain

    related: dict[str, Any] = {"parent_id": request.id, "root_id": request.root_id or request.id}
    if request.priority is not None:
        related["priority"] = request.priority
    for item in callbacks:
        callback = Signature.from_dict(item, app)
        if request.is_eager:
            callback.apply((retval,))
        else:
            callback.apply_async((retval,), **related)
    if not rest:
        return
    if request.is_eager:
        chain(*(Signature.from_dict(item, app) for item in reversed(rest)), app=app).apply((retval,))
        return
    following = Signature.from_dict(rest[-1], app)
    following.apply_async((retval,), chain=list(rest[:-1]) or None, **related)


def run_errbacks(app: Celeriac, task: Task[..., Any], request: Request, exc: BaseException, traceback: str) -> None:
    """The errbacks of a failed task, once (the failure is stored first so they can read it)."""
    errbacks = request.embed.get("errbacks")
    if not errbacks:
        return
    if not request.is_eager and not ignores_result(app, task, request):
        try:
            app.store_result(request.id, states.FAILURE, exception_to_data(exc), traceback=traceback, request=request)
        except Exception as error:
            logger.error("could not store the failure of %s[%s] before its errbacks: %s", task.name, request.id, error)
    call_errbacks(app, request, exc, traceback, errbacks)


def call_errbacks(
    app: Celeriac, request: Request, exc: BaseException, traceback: str | None, errbacks: Sequence[Any]
) -> None:
    """Run ``errbacks`` for the failure of ``request``, each once; an errback that fails is
    logged (it never changes the task's outcome)."""
    from .canvas import Signature

    for item in errbacks:
        try:
            errback = item if isinstance(item, Signature) else Signature.from_dict(item, app)
            task = app.tasks.get(errback.task) if errback.subtask_type is None and not errback.immutable else None
            if task is not None and takes_request(task, errback):
                errback(request, exc, traceback)
            elif request.is_eager:
                errback.apply((request.id,))
            else:
                errback.apply_async((request.id,), parent_id=request.id, root_id=request.root_id or request.id)
        except Exception:
            logger.exception("errback %r of %s[%s] failed", item, request.task, request.id)


def takes_request(task: Task[..., Any], errback: Signature) -> bool:
    """Whether an errback task wants ``(request, exc, traceback)`` rather than a task id: its
    function takes ``*args`` or at least three positional arguments beyond the signature's own."""
    try:
        parameters = list(inspect.signature(task.fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if task.bind:
        parameters = parameters[1:]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) - len(errback.args) >= 3


# -- after the result is stored (settler thread) -----------------------------------------------


def after_settled(app: Celeriac, request: Request, state: str, value: Any) -> None:
    """Carry the workflow on once ``request``'s outcome is stored (or, for states that are
    not stored, decided): count a chord part, or fail the rest of the chain and the chord.

    ``value`` is the exception data for ``FAILURE``, and a reason text for ``REVOKED``
    (``"revoked"``/``"expired"``), ``IGNORED`` and ``REJECTED``.
    """
    embed = request.embed
    body = embed.get("chord")
    group_id = request.group
    if state == states.SUCCESS:
        if body and group_id:
            _chord_part_return(app, request, group_id, body)
        return
    if state == states.RETRY:
        return
    if state == states.FAILURE:
        data = value if isinstance(value, dict) and "exc_type" in value else exception_to_data(Exception(str(value)))
        reason = f"Dependency {request.id} raised {describe_exception(data)}"
        remainder_state = states.FAILURE
    else:
        what = {
            states.REVOKED: f"was {value or 'revoked'}",
            _IGNORED: "raised Ignore, so its result will never be stored",
            _REJECTED: f"was rejected: {value}",
        }.get(state, f"did not run ({state}: {value})")
        reason = f"Dependency {request.id} {what}"
        data = exception_to_data(TaskRevokedError(reason))
        remainder_state = states.REVOKED
    rest = embed.get("chain")
    if rest:  # in the order they would have run: the chain's last result is written last
        _abandon(app, list(reversed(rest)), remainder_state, data, reason)
    if body and group_id:
        _fail_chord(app, group_id, body, reason, request)


def after_dead_letter(app: Celeriac, headers: Mapping[str, Any], reason: str) -> None:
    """A message that could not even be decoded was dead-lettered: if its headers name a
    chord header task, fail that chord (its body comes from the stored bookkeeping)."""
    group_id, task_id = headers.get("group"), headers.get("id")
    if not isinstance(group_id, str) or not isinstance(task_id, str):
        return
    meta = load_chord(app, group_id)
    if meta is None or task_id not in (meta.get("ids") or ()):
        return
    _fail_chord(app, group_id, meta.get("body"), f"Dependency {task_id} was dead-lettered: {reason}", None)


def chord_timed_out(app: Celeriac, group_id: str, timeout: float) -> str:
    """The delayed ``celeriac.chord_timeout`` check: fail the chord if it is still waiting."""
    meta = load_chord(app, group_id)
    if meta is None:
        return "unknown"
    body = meta.get("body") or {}
    store = app.result_store
    ttl = _ttl(app, meta.get("timeout"))
    if store.incr(_done_key(group_id), 0, expires=ttl) >= 1:
        return "finished"
    ids: list[str] = list(meta.get("ids") or ())
    records = store.get_many(ids)
    pending = [i for i in ids if i not in records or records[i].state not in states.READY_STATES]
    if pending:
        _fail_chord(
            app,
            group_id,
            body,
            f"chord {group_id} timed out after {timeout:g}s waiting for {len(pending)} of {len(ids)} "
            f"header tasks (first: {pending[0]})",
            None,
        )
        return "timed out"
    failed = [i for i in ids if records[i].state != states.SUCCESS]
    if failed:
        _fail_chord(app, group_id, body, f"Dependency {failed[0]} ended in {records[failed[0]].state}", None)
        return "failed"
    # Every header task succeeded but no body was sent (a count was lost): send it now.
    if store.incr(_done_key(group_id), 1, expires=ttl) == 1:
        _send_body(app, group_id, body, [_result_value(app, records[i]) for i in ids], {})
    return "completed"


def describe_exception(data: Mapping[str, Any]) -> str:
    """``ZeroDivisionError('division by zero')`` from exception data."""
    message = data.get("exc_message")
    arguments = message if isinstance(message, list | tuple) else [message]
    return f"{data.get('exc_type', 'Exception')}({', '.join(repr(a) for a in arguments)})"


def _count_key(group_id: str) -> str:
    return f"celeriac-chord-{group_id}.count"


def _done_key(group_id: str) -> str:
    return f"celeriac-chord-{group_id}.done"


def _result_value(app: Celeriac, record: Any) -> Any:
    return app.decode_result(record).get("result")


def _chord_part_return(app: Celeriac, request: Request, group_id: str, body: Mapping[str, Any]) -> None:
    options = body.get("options") or {}
    ttl = _ttl(app, options.get("chord_timeout"))
    store = app.result_store
    count = store.incr(_count_key(group_id), 1, expires=ttl)
    size = options.get("chord_size")
    if isinstance(size, int) and count < size:
        return
    meta = load_chord(app, group_id)
    if meta is None:
        reason = f"chord {group_id} cannot finish: its bookkeeping record is missing (expired, or not sent by celeriac)"
        _fail_chord(app, group_id, body, reason, request)
        return
    ids: list[str] = list(meta.get("ids") or ())
    if count < len(ids):
        return
    records = store.get_many(ids)
    if len(records) < len(ids) or any(record.state != states.SUCCESS for record in records.values()):
        return  # a task is still running (this count was a redelivery), or one failed and fails the chord
    if store.incr(_done_key(group_id), 1, expires=ttl) != 1:
        return
    values = [_result_value(app, records[i]) for i in ids]
    related: dict[str, Any] = {"parent_id": request.id, "root_id": request.root_id or request.id}
    try:
        _send_body(app, group_id, meta.get("body") or body, values, related)
    except Exception:
        store.incr(_done_key(group_id), -1, expires=ttl)  # release the claim: the redelivery sends it
        raise


def _send_body(
    app: Celeriac, group_id: str, body: Mapping[str, Any], values: list[Any], related: dict[str, Any]
) -> None:
    from .canvas import Signature

    sig = Signature.from_dict(body, app)
    sig.options.pop("chord_size", None)
    sig.options.pop("chord_timeout", None)
    sig.apply_async((values,), **related)
    logger.info("chord %s: all %d header tasks succeeded; body %s sent", group_id, len(values), sig.task)


def _fail_chord(
    app: Celeriac, group_id: str, body: Mapping[str, Any] | None, reason: str, request: Request | None
) -> None:
    """Fail the body of chord ``group_id`` with :class:`ChordError` (once: the claim decides)."""
    from .canvas import Signature, _result_id

    options = (body or {}).get("options") or {}
    if app.result_store.incr(_done_key(group_id), 1, expires=_ttl(app, options.get("chord_timeout"))) != 1:
        return
    if body is None:
        meta = load_chord(app, group_id)
        body = meta.get("body") if meta else None
    if not body:
        logger.error("chord %s failed (%s) but its body is unknown", group_id, reason)
        return
    logger.warning("chord %s failed: %s", group_id, reason)
    error = ChordError(reason)
    _abandon(app, [body], states.FAILURE, exception_to_data(error), reason)
    sig = Signature.from_dict(body, app)
    errbacks = _entry_errbacks(sig)
    if errbacks:
        entry = _entry(sig)
        failed = Request(
            id=_result_id(sig) or "",
            task=entry.task,
            args=list(entry.args),
            kwargs=dict(entry.kwargs),
            root_id=request.root_id if request is not None else None,
            parent_id=request.id if request is not None else None,
            group=group_id,
            embed={"callbacks": None, "errbacks": errbacks, "chain": None, "chord": None},
        )
        call_errbacks(app, failed, error, None, errbacks)


def _abandon(app: Celeriac, items: Sequence[Any], state: str, data: dict[str, Any], reason: str) -> None:
    """Steps that will never run (``items``, in the order they would have run): store
    ``state`` with ``data`` for every task id they hold, in that order (so whoever waits for the
    last result sees all earlier ones, even on a store whose ``set_many`` is not atomic), and
    fail any chord one of them was to report to."""
    from .canvas import Signature, chain, chord, group

    ids: list[str] = []
    memberships: list[tuple[str, Any]] = []

    def collect(sig: Signature) -> None:
        if isinstance(sig, chain | group):
            for task in sig.tasks:
                collect(task)
        elif isinstance(sig, chord):
            for task in sig.tasks:
                collect(task)
            if sig.body is not None:
                collect(sig.body)
        elif sig.subtask_type is None or sig.subtask_type in ("xmap", "xstarmap"):
            if sig.id:
                ids.append(sig.id)
            options = sig.options
            if options.get("chord") and isinstance(options.get("group_id"), str):
                memberships.append((options["group_id"], options["chord"]))

    for item in items:
        collect(Signature.from_dict(item, app))
    if ids:
        records = [app.encode_result(task_id, state, data) for task_id in ids]
        app.result_store.set_many(records, expires=app.conf.result_expires)
    for group_id, body in memberships:
        _fail_chord(app, group_id, body, reason, None)


def _entry(sig: Signature) -> Signature:
    from .canvas import chain, chord, group

    if isinstance(sig, chain | group) and sig.tasks:
        return _entry(sig.tasks[0])
    if isinstance(sig, chord) and sig.tasks:
        return _entry(sig.tasks[0])
    return sig


def _entry_errbacks(sig: Signature) -> list[Any]:
    """The errbacks that run when ``sig`` (a chord body) cannot run: its first task's."""
    from .canvas import _as_list, chain, chord, group

    found: list[Any] = list(_as_list(sig.options.get("link_error")))
    if isinstance(sig, chain) and sig.tasks:
        found += _entry_errbacks(sig.tasks[0])
    elif isinstance(sig, group):
        for task in sig.tasks:
            found += _entry_errbacks(task)
    elif isinstance(sig, chord) and sig.body is not None:
        found += _entry_errbacks(sig.body)
    unique: list[Any] = []
    for errback in found:
        if errback not in unique:
            unique.append(errback)
    return unique
