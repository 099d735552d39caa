"""The task's own handlers (Celery's ``on_success``, ``on_failure``, ``on_retry``,
``after_return``), called after the outcome is stored and what follows is sent.

As in Celery: ``on_success(retval, task_id, args, kwargs)`` after a success,
``on_failure(exc, task_id, args, kwargs, einfo)`` after a failure (errbacks
already sent), ``on_retry(exc, task_id, args, kwargs, einfo)`` when a retry
is on its way, then ``after_return(state, retval, task_id, args, kwargs,
None)`` after a success or failure. Only the handlers the task's class
overrides are called, in a thread (they are blocking user code) with the
task's request as ``self.request``. A handler that raises is logged; the
task's outcome, already stored, stands. (``before_start`` runs with the task,
in ``celeriac.execution``.)

:func:`errbacks_to_send` does the same for ``link_error`` errbacks that take
Celery's ``(request, exc, traceback)``: it calls them here, and leaves the
rest to be sent with the task's id.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from ...errors import NotRegistered
from ...execution import HandlerCall, Outcome, handler_calls
from ...request import current_request
from ..context import WorkerContext
from ..job import Job
from .base import Middleware

logger = logging.getLogger("celeriac.worker")

__all__ = ["Handlers", "errbacks_to_send"]


class Handlers(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if not job.task.own_handlers:
            return outcome
        calls = handler_calls(job.task, job.request, outcome)
        if calls:
            await _call_all(job, calls, "handler")
        return outcome


async def _call_all(job: Job, calls: list[HandlerCall], kind: str) -> None:
    """Make ``calls`` in a thread (blocking user code) with ``job``'s request current;
    what one raises is logged, and the others are still made."""
    await asyncio.get_running_loop().run_in_executor(None, _call_each, job, calls, kind)


def _call_each(job: Job, calls: list[HandlerCall], kind: str) -> None:
    token = current_request.set(job.request)
    try:
        for name, handler, args in calls:
            try:
                handler(*args)
            except Exception:
                logger.exception("%s[%s] %s %s raised", job.name, job.id, name, kind)
    finally:
        current_request.reset(token)


async def errbacks_to_send(ctx: WorkerContext, job: Job, outcome: Outcome) -> list[dict[str, Any]]:
    """Call the errbacks of failed ``job`` that take ``(request, exc, traceback)``, here,
    as Celery's worker does; return the others, to be sent with the task's id.

    Celery's rule (_call_task_errbacks in celery.backends.base): an errback is called in the worker
    when it is a plain task registered here, not ``bind=True``, whose function
    takes more than one positional argument (besides those its signature
    already holds) or ``*args``. What such an errback raises is logged.
    """
    to_send: list[dict[str, Any]] = []
    here: list[HandlerCall] = []
    exc, text = outcome.exc, outcome.traceback
    for data in job.request.errbacks or ():
        call = _errback_call(ctx, data, (job.request, exc, text))
        if call is None:
            to_send.append(data)
        else:
            here.append(call)
    if here:
        await _call_all(job, here, "errback")
    return to_send


def _errback_call(
    ctx: WorkerContext, data: dict[str, Any], failure: tuple[Any, ...]
) -> HandlerCall | None:
    """How to call errback ``data`` with ``failure`` in the worker, or None to send it."""
    if data.get("subtask_type"):
        return None
    name = str(data.get("task"))
    try:
        task = ctx.app.get_task(name)
    except NotRegistered:
        return None
    if task.bind or task.is_async:
        return None
    args, kwargs = tuple(data.get("args") or ()), dict(data.get("kwargs") or {})
    immutable = bool(data.get("immutable"))
    header: Callable[..., Any] = task.fn
    if not immutable and (args or kwargs):
        header = functools.partial(task.fn, *args, **kwargs)
    try:
        spec = inspect.getfullargspec(header)
    except TypeError:
        spec = inspect.getfullargspec(task.fn)
    if not (spec.varargs or len(spec.args) > 1):
        return None
    call_args = args if immutable else (*failure, *args)
    return repr(name), functools.partial(task.run, **kwargs), call_args
