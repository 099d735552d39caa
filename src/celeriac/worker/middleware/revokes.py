"""A revoked task is not run: it is recorded as REVOKED and its message acknowledged.

First in the default list, so no other feature acts on a task that will not
run; the ``after_task`` hooks still see the REVOKED outcome (the result store,
chords, events, signals), as Celery's worker request records it. Which
tasks are revoked is ``ctx.revokes`` (``celeriac.worker.revokes``).
"""

from __future__ import annotations

import logging

from ..context import WorkerContext
from ..job import Job
from .base import Defer, Middleware, Skip

logger = logging.getLogger("celeriac.worker")


class Revoked(Middleware):
    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        outcome = ctx.revokes.refused(job)
        return None if outcome is None else Skip(outcome)
