"""Stores each task's state and outcome in the result store, before the ack."""

from __future__ import annotations

import os

from ... import states
from ...backends.base import ResultMeta, utcnow_iso
from ...errors import SerializationError
from ...exception_codec import encode_exception
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from .base import Middleware


class Results(Middleware):
    async def task_started(self, ctx: WorkerContext, job: Job) -> None:
        if job.task.track_started and not job.request.ignore_result:
            backend = await ctx.app.abackend()
            meta = ResultMeta(
                job.id, states.STARTED, {"pid": os.getpid(), "hostname": ctx.hostname}
            )
            await backend.store(meta)

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if job.request.ignore_result or outcome.state == states.IGNORED:
            return outcome
        backend = await ctx.app.abackend()
        meta = self._meta(ctx, job, outcome)
        try:
            await backend.store(meta)
        except SerializationError as exc:
            outcome = Outcome(states.FAILURE, exc=exc, runtime=outcome.runtime)
            await backend.store(self._meta(ctx, job, outcome))
        return outcome

    def _meta(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> ResultMeta:
        if outcome.state == states.SUCCESS:
            result = outcome.value
        elif outcome.exc is not None:
            result = encode_exception(outcome.exc)
        else:
            result = None
        extra = {}
        if ctx.app.conf.result_extended:
            extra = {
                "name": job.name,
                "args": list(job.request.args),
                "kwargs": job.request.kwargs,
                "worker": ctx.hostname,
                "retries": job.request.retries,
                "queue": job.delivery.queue,
            }
        return ResultMeta(
            job.id,
            outcome.state,
            result,
            outcome.traceback,
            children=[[[child, None], None] for child in job.request.children],
            date_done=utcnow_iso() if outcome.state in states.READY_STATES else None,
            extra=extra,
        )
