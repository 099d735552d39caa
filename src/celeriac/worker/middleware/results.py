"""Stores each task's state and outcome in the result store, before (or with) the ack."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from ... import states
from ...backends.base import ResultBackend, ResultMeta, utcnow_iso
from ...brokers.base import Delivery
from ...errors import DeadLettered, Retry, SerializationError, TaskControl
from ...exception_codec import encode_exception
from ...execution import Outcome
from ...request import result_fence
from ..context import WorkerContext
from ..job import Job
from .base import Middleware

logger = logging.getLogger("celeriac.worker")


class Results(Middleware):
    """Stores each task's state and outcome, fenced by its delivery (``fence``).

    When the broker keeps its messages in the result store's database (one
    SQLite file, one Redis database), a plain task's outcome goes with its
    ack instead: one transaction or round trip for both, and the next fetch
    usually carries them. Not for tasks that a chord counts or that have
    callbacks or a chain: those expect the result stored before they go on.

    A dead-lettered task is stored as REJECTED with the reason, so a caller
    waiting in ``get()`` learns it will never run.
    """

    async def task_started(self, ctx: WorkerContext, job: Job) -> None:
        if job.task.track_started and not job.request.ignore_result:
            backend = await ctx.connections.abackend()
            meta = ResultMeta(
                job.id,
                states.STARTED,
                {"pid": os.getpid(), "hostname": ctx.hostname},
                extra=job.request.result_fields(ctx.app.conf.result_extended),
            )
            await backend.store(meta, reply_to=job.request.reply_to, fence=fence(job.delivery))

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if job.request.ignore_result or outcome.state == states.IGNORED:
            return outcome
        if outcome.state == states.REJECTED:
            # Requeued: it runs again, so nothing is stored (as in Celery);
            # dead-lettered: stored as REJECTED by `dead_lettered`.
            return outcome
        backend = await ctx.connections.abackend()
        with_ack = ctx.connections.shared and job.task.acks_late and not _goes_on(job)
        try:
            return await self._store(ctx, backend, job, outcome, with_ack)
        except SerializationError as exc:
            failed = Outcome(states.FAILURE, exc=exc, runtime=outcome.runtime)
            return await self._store(ctx, backend, job, failed, with_ack)

    async def dead_lettered(
        self, ctx: WorkerContext, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        task_id = delivery.message.headers.get("id")
        if not isinstance(task_id, str) or not task_id:
            return
        error = (
            cause
            if isinstance(cause, Exception) and not isinstance(cause, TaskControl)
            else DeadLettered(reason)
        )
        meta = ResultMeta.of_error(task_id, states.REJECTED, error)
        try:
            backend = await ctx.connections.abackend()
            reply_to = delivery.message.properties.get("reply_to") or None
            await backend.store(meta, reply_to=reply_to, fence=fence(delivery))
        except Exception as exc:
            logger.warning("could not record the rejection of %s: %s", task_id, exc)

    async def _store(
        self, ctx: WorkerContext, backend: ResultBackend, job: Job, outcome: Outcome, with_ack: bool
    ) -> Outcome:
        """Store the outcome now, or hand its writes to the ack (``Outcome.ack_writes``)."""
        meta, token = self._meta(ctx, job, outcome), fence(job.delivery)
        if with_ack and meta.status in _WITH_ACK:
            return replace(outcome, ack_writes=backend.store_writes(meta, fence=token))
        await backend.store(meta, reply_to=job.request.reply_to, fence=token)
        return outcome

    def _meta(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> ResultMeta:
        exc = outcome.exc
        if isinstance(exc, Retry):  # Celery stores the reason of a retry, not the Retry
            exc = exc.exc
        result = outcome.value if outcome.state == states.SUCCESS else None
        if exc is not None and outcome.state != states.SUCCESS:
            result = encode_exception(exc)
        return ResultMeta(
            job.id,
            outcome.state,
            result,
            outcome.traceback,
            children=[[[child, None], None] for child in job.request.children],
            date_done=utcnow_iso() if outcome.state in states.READY_STATES else None,
            extra=job.request.result_fields(ctx.app.conf.result_extended),
        )


_WITH_ACK = frozenset({states.SUCCESS, states.FAILURE})


def fence(delivery: Delivery) -> int:
    """The fence of the result writes made for ``delivery`` (see ``result_fence``)."""
    retries = delivery.message.headers.get("retries")
    return result_fence(retries if isinstance(retries, int) else 0, delivery.delivery_count)


def _goes_on(job: Job) -> bool:
    """Whether something runs after this task that may read its stored result."""
    body = job.body
    return bool(body.chord or body.callbacks or body.errbacks or body.chain)
