"""A copy of a relayed message whose task already finished is acknowledged, not run.

The outbox relay publishes at least once: a relay killed between the broker's
confirm and its delete publishes the same message (the same task id) again
(``celeriac.transactions.relay``). Such a copy carries ``RELAYED_HEADER``; for a
task that stores its result, a ready state already stored under its id means
the first copy ran to its end, so this one is skipped with a log line.

What this cannot catch: a copy that arrives while the first still runs (nothing
is stored yet), and tasks that ignore their results (nothing is ever stored).
Messages without the header cost nothing; the store is read only for relayed ones.
First of the defaults (on every worker: the worker's app need not know the relay's
``outbox_url``), so no other feature acts on, or stores over, a copy that will not run.
"""

from __future__ import annotations

import logging

from ... import states
from ...execution import Outcome
from ...transactions.relay import RELAYED_HEADER
from ..context import WorkerContext
from ..job import Job
from .base import Defer, Middleware, Skip

logger = logging.getLogger("celeriac.worker")


class RelayedDuplicates(Middleware):
    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        if not job.message.headers.get(RELAYED_HEADER) or job.request.ignore_result:
            return None
        stored = await (await ctx.connections.abackend()).get(job.id)
        if stored is None or stored.status not in states.READY_STATES:
            return None
        logger.info("duplicate of relayed task %s skipped: already %s", job.id, stored.status)
        return Skip(Outcome(states.IGNORED))
