"""The task signals of ``celeriac.signals``, sent from the worker's hooks as Celery sends them.

``task_received`` (``before_task``: after the expiry, revoke and rate-limit
checks, so only for a task the worker will run, as in Celery),
``task_prerun`` (``task_started``), then by the outcome ``task_success``,
``task_failure``, ``task_retry`` or ``task_revoked``, and ``task_postrun``
for every task that ran (``after_task``); ``task_unknown`` and
``task_rejected`` for dead-lettered messages (``dead_lettered``).
``worker_ready`` when the node's voice process starts consuming.

The hooks run on the worker process's event loop, so receivers do too, not
in the thread that runs a sync task as Celery's prerun and postrun do: a
thread-local set in ``task_prerun`` is not seen by the task (a
``contextvars`` variable is not either: the task runs in a copy of the
loop's context). Each hook tests ``receivers`` first and builds nothing when
no one listens.
"""

from __future__ import annotations

from ... import states
from ...brokers.base import Delivery
from ...errors import NotRegistered, Reject
from ...execution import ExceptionInfo, Outcome
from ...signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    task_unknown,
    worker_ready,
)
from ..context import WorkerContext
from ..job import Job
from .base import Defer, Middleware, Skip

__all__ = ["Signals"]

_RAN = "signals.ran"
"""``Job.extras`` key: the task was started (it gets a ``task_postrun``)."""


class Signals(Middleware):
    async def startup(self, ctx: WorkerContext) -> None:
        if ctx.is_voice and worker_ready.receivers:
            await worker_ready.asend(sender=ctx)

    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        if task_received.receivers:
            await task_received.asend(sender=ctx, request=job.request)
        return None

    async def task_started(self, ctx: WorkerContext, job: Job) -> None:
        job.extras[_RAN] = True
        if task_prerun.receivers:
            request = job.request
            await task_prerun.asend(
                sender=job.task,
                task_id=job.id,
                task=job.task,
                args=request.args,
                kwargs=request.kwargs,
            )

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        state, exc, task, request = outcome.state, outcome.exc, job.task, job.request
        if state == states.SUCCESS:
            if task_success.receivers:
                await task_success.asend(sender=task, result=outcome.value, runtime=outcome.runtime)
        elif state == states.FAILURE and exc is not None:
            if task_failure.receivers:
                await task_failure.asend(
                    sender=task,
                    task_id=job.id,
                    exception=exc,
                    args=request.args,
                    kwargs=request.kwargs,
                    traceback=exc.__traceback__,
                    einfo=ExceptionInfo.of(exc, outcome.traceback),
                )
        elif state == states.RETRY and exc is not None:
            if task_retry.receivers:
                await task_retry.asend(
                    sender=task, request=request, reason=exc, einfo=ExceptionInfo.of(exc)
                )
        elif state == states.REVOKED and task_revoked.receivers:
            await task_revoked.asend(
                sender=task,
                request=request,
                terminated=bool(job.extras.get(_RAN)),
                signum=None,
                expired=job.expired(),
            )
        if job.extras.get(_RAN) and task_postrun.receivers:
            await task_postrun.asend(
                sender=task,
                task_id=job.id,
                task=task,
                args=request.args,
                kwargs=request.kwargs,
                retval=outcome.value if state == states.SUCCESS else exc,
                state=state,
            )
        return outcome

    async def dead_lettered(
        self, ctx: WorkerContext, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        message = delivery.message
        if isinstance(cause, NotRegistered):
            if task_unknown.receivers:
                headers = message.headers
                await task_unknown.asend(
                    sender=ctx,
                    message=message,
                    exc=cause,
                    name=headers.get("task"),
                    id=headers.get("id"),
                )
        elif not isinstance(cause, Reject) and task_rejected.receivers:
            # a task's own Reject is its outcome (task_postrun says REJECTED), as in Celery
            await task_rejected.asend(sender=ctx, message=message, exc=cause)
