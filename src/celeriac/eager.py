"""Running a task here and now (``Task.apply``, ``task_always_eager``): retries at
once, handlers called in the caller, nothing sent or stored."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import states
from ._sync import run_sync
from .backends.base import ResultMeta, utcnow_iso
from .errors import Retry
from .execution import Outcome, autoretry_countdown, call_async, call_sync, handler_calls
from .request import Request, current_request
from .result import EagerResult

if TYPE_CHECKING:
    from .task import Task

__all__ = ["apply_eagerly"]


def apply_eagerly(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: Mapping[str, Any]
) -> EagerResult[Any]:
    """``task`` run in this thread until it neither retries nor fails to be retried;
    a failure raises with ``task_eager_propagates`` or ``throw=True``."""
    task_id = options.get("task_id") or str(uuid.uuid4())
    retries = int(options.get("retries", 0))
    while True:
        request = Request(
            id=task_id,
            task=task.name,
            args=args,
            kwargs=kwargs,
            retries=retries,
            is_eager=True,
            called_directly=False,
            root_id=task_id,
            hostname="eager",
        )
        outcome = _run(task, request)
        again = _retries(task, outcome, retries)
        if not again or outcome.state == states.RETRY:
            _call_handlers(task, request, outcome)
        if not again:
            break
        retries += 1
        if isinstance(outcome.exc, Retry):
            args = outcome.exc.new_args if outcome.exc.new_args is not None else args
            kwargs = outcome.exc.new_kwargs if outcome.exc.new_kwargs is not None else kwargs
    if outcome.state == states.FAILURE and outcome.exc is not None:
        if task.app.conf.task_eager_propagates or options.get("throw"):
            raise outcome.exc
        meta = ResultMeta.of_error(task_id, states.FAILURE, outcome.exc, outcome.traceback)
    else:
        meta = ResultMeta(task_id, outcome.state, outcome.value, date_done=utcnow_iso())
    return EagerResult(task_id, task.app, meta, task.name)


def _run(task: Task[Any, Any], request: Request) -> Outcome:
    if task.is_async:
        return run_sync(lambda: call_async(task, request))
    return call_sync(task, request)


def _retries(task: Task[Any, Any], outcome: Outcome, retries: int) -> bool:
    """Eager mode retries at once: on ``self.retry()``, or an ``autoretry_for`` error."""
    if outcome.state == states.RETRY:
        return True
    return (
        outcome.state == states.FAILURE
        and outcome.exc is not None
        and autoretry_countdown(task, outcome.exc, retries) is not None
    )


def _call_handlers(task: Task[Any, Any], request: Request, outcome: Outcome) -> None:
    """The handlers for ``outcome``, here; what one raises propagates (Celery's eager
    mode does the same)."""
    token = current_request.set(request)
    try:
        for _, handler, args in handler_calls(task, request, outcome):
            handler(*args)
    finally:
        current_request.reset(token)
