"""Exceptions as data: ``{exc_type, exc_module, exc_message}`` (Celery's format), never pickles."""

from __future__ import annotations

import builtins
import sys
from typing import Any

from .exceptions import RemoteTaskError

__all__ = ["exception_from_data", "exception_to_data"]


def exception_to_data(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` with plain data the result serializer can carry."""
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_module": cls.__module__,
        "exc_message": [_plain(arg) for arg in exc.args],
    }


def exception_from_data(data: Any, traceback: str | None = None) -> BaseException:
    """Rebuild an exception described by :func:`exception_to_data`.

    The original type is used when its module is **already imported** in this process and it
    is an ``Exception`` subclass whose constructor accepts the stored arguments; otherwise a
    :class:`~celeriac.RemoteTaskError` carries the type name, message and remote traceback.
    Modules are never imported on behalf of data read from a result store.
    """
    if not isinstance(data, dict):
        return RemoteTaskError(repr(data), remote_traceback=traceback)
    type_name = str(data.get("exc_type") or "Exception")
    module_name = str(data.get("exc_module") or "builtins")
    message = data.get("exc_message")
    args = tuple(message) if isinstance(message, list | tuple) else (message,)
    cls = _lookup(module_name, type_name)
    if cls is not None:
        try:
            exc = cls(*args)
        except Exception:
            pass
        else:
            if traceback:
                exc.__notes__ = [f"remote traceback:\n{traceback}"]
            return exc
    text = ", ".join(str(arg) for arg in args) if args else ""
    return RemoteTaskError(text, exc_type=type_name, exc_module=module_name, remote_traceback=traceback)


def _lookup(module_name: str, type_name: str) -> type[Exception] | None:
    module = builtins if module_name == "builtins" else sys.modules.get(module_name)
    if module is None:
        return None
    target: Any = module
    for part in type_name.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    if isinstance(target, type) and issubclass(target, Exception):
        return target
    return None


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return repr(value)
