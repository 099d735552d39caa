"""Exceptions to and from stored results, in Celery's layout.

A failure is stored as ``{"exc_type", "exc_message", "exc_module"}``. Reading
it back never imports anything: the class is used only when its module is
already in ``sys.modules`` (the caller imported it) and the name resolves to
an exception class there; otherwise the caller gets a :class:`TaskError`.

celeriac's errors that stand for Celery's (:data:`AS_CELERY`: a revoke, a time
limit, a chord's failure, ...) are stored under Celery's module for them, so a
Celery client reading the result raises Celery's own class, and read back
as celeriac's, whoever stored them: ``except TaskRevokedError`` (from
``celeriac.exceptions``) catches a revoke a Celery worker stored too.
"""

from __future__ import annotations

import sys
from typing import Any

from . import errors
from .errors import TaskError

__all__ = ["decode_exception", "encode_exception"]


AS_CELERY: dict[str, str] = {
    "ChordError": "celery.exceptions",
    "Ignore": "celery.exceptions",
    "MaxRetriesExceededError": "celery.exceptions",
    "NotRegistered": "celery.exceptions",
    "Reject": "celery.exceptions",
    "Retry": "celery.exceptions",
    "TaskRevokedError": "celery.exceptions",
    "SoftTimeLimitExceeded": "billiard.exceptions",
    "TimeLimitExceeded": "billiard.exceptions",
    "WorkerLostError": "billiard.exceptions",
}
"""celeriac's errors that are Celery's, with the module Celery's class lives in (the time
limits and a lost worker are billiard's, re-exported by ``celery.exceptions``)."""


def encode_exception(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    args = [
        a if isinstance(a, str | int | float | bool | type(None)) else repr(a) for a in exc.args
    ]
    module = cls.__module__
    if module == errors.__name__ and cls.__qualname__ in AS_CELERY:
        module = AS_CELERY[cls.__qualname__]
    return {"exc_type": cls.__qualname__, "exc_message": args, "exc_module": module}


def decode_exception(data: Any, traceback: str | None = None) -> BaseException:
    """The exception a stored failure stands for (see module docstring)."""
    if not isinstance(data, dict) or "exc_type" not in data:
        return TaskError("UnknownError", repr(data), traceback)
    type_name = str(data.get("exc_type"))
    module_name = str(data.get("exc_module") or "builtins")
    message = data.get("exc_message")
    args = tuple(message) if isinstance(message, list | tuple) else (message,)
    if AS_CELERY.get(type_name) == module_name:
        module_name = errors.__name__
    cls = _resolve_loaded(module_name, type_name)
    if cls is not None:
        try:
            exc = cls(*args)
        except Exception:
            exc = None
        if exc is not None:
            return exc
    text = ", ".join(str(a) for a in args) if args else ""
    qualified = type_name if module_name == "builtins" else f"{module_name}.{type_name}"
    return TaskError(qualified, text, traceback)


def _resolve_loaded(module_name: str, type_name: str) -> type[BaseException] | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    obj: Any = module
    for part in type_name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None
