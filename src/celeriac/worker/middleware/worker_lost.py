"""A task delivered again after its worker died, for tasks that refuse a second run.

A delivery count above 1 means an earlier delivery was never settled: its
worker died or lost its lease. Tasks with ``acks_late=False`` (at most once)
or ``reject_on_worker_lost=False`` are failed with :class:`WorkerLostError`
instead of running twice. With the defaults, the task runs again.
"""

from __future__ import annotations

from ... import states
from ...errors import WorkerLostError
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from .base import Defer, Middleware, Skip


class WorkerLost(Middleware):
    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        task = job.task
        if job.delivery.delivery_count > 1 and not (task.acks_late and task.reject_on_worker_lost):
            exc = WorkerLostError(
                f"worker lost while running {job.name}[{job.id}] "
                f"(delivery {job.delivery.delivery_count}); not run again"
            )
            return Skip(Outcome(states.FAILURE, exc=exc))
        return None
