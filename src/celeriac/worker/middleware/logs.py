"""One log line per task at INFO: name, id, outcome, runtime.

Arguments appear only as the message's ``argsrepr``/``kwargsrepr``, which
the sender controls (and redacts), never as the raw values.
"""

from __future__ import annotations

import logging

from ... import states
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from .base import Middleware

logger = logging.getLogger("celeriac.task")


class TaskLog(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if outcome.state == states.FAILURE:
            logger.error(
                "%s[%s] FAILURE in %.4fs: %r args=%s kwargs=%s",
                job.name,
                job.id,
                outcome.runtime,
                outcome.exc,
                job.message.headers.get("argsrepr"),
                job.message.headers.get("kwargsrepr"),
                extra={"traceback": outcome.traceback},
            )
        elif logger.isEnabledFor(logging.INFO):
            detail = f": {outcome.exc}" if outcome.exc is not None else ""
            logger.info(
                "%s[%s] %s in %.4fs%s", job.name, job.id, outcome.state, outcome.runtime, detail
            )
        return outcome
