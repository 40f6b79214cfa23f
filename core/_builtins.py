"""Built-in tasks every app has (registered like ``shared_task`` declarations).

* ``celery.map`` / ``celery.starmap`` — what ``task.map(items)`` / ``task.starmap(items)`` send;
* ``celery.accumulate`` — returns its arguments (``index=0``: the first), used as the body that
  turns a group into one result where a chord header needs one;
* ``celeriac.chord_timeout`` — the delayed check that fails a chord still waiting after its
  timeout (see :mod:`celeriac._workflow`).

The ``celery.*`` names are Celery's, so messages from and to Celery peers line up.
"""

from __future__ import annotations

from typing import Any

from .task import Task, shared_task

__all__: list[str] = []


@shared_task(name="celery.map", bind=True)
def _map(self: Task[..., Any], task: dict[str, Any], it: list[Any]) -> list[Any]:
    from .canvas import Signature

    call = Signature.from_dict(task, self.app)
    return [call(item) for item in it]


@shared_task(name="celery.starmap", bind=True)
def _starmap(self: Task[..., Any], task: dict[str, Any], it: list[Any]) -> list[Any]:
    from .canvas import Signature

    call = Signature.from_dict(task, self.app)
    return [call(*item) for item in it]


@shared_task(name="celery.accumulate")
def _accumulate(*args: Any, index: int | None = None) -> Any:
    return args[index] if index is not None else list(args)


@shared_task(name="celeriac.chord_timeout", bind=True, ignore_result=True)
def _chord_timeout(self: Task[..., Any], group_id: str, timeout: float) -> str:
    from ._workflow import chord_timed_out

    return chord_timed_out(self.app, group_id, timeout)
