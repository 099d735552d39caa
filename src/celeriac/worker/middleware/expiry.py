"""Tasks past their ``expires`` time are not run; they are recorded as REVOKED."""

from __future__ import annotations

from ... import states
from ...errors import TaskRevokedError
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from .base import Defer, Middleware, Skip


class Expiry(Middleware):
    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        if job.expired():
            exc = TaskRevokedError(f"task {job.id} expired at {job.request.expires}")
            return Skip(Outcome(states.REVOKED, exc=exc))
        return None
